#!/usr/bin/env bash
# Idempotent set-up on Debian 12: system packages, the .venv (Python 3.11), pinned requirements,
# and unirg itself (editable). Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

APT_PACKAGES=(
  orthanc orthanc-python orthanc-dicomweb  # the test PACS, its Python plugin (embeds python3.11), DICOMweb
  dcmtk dicom3tools pixelmed-apps          # independent DICOM peers and the SR validators
  python3.11 python3.11-venv libpython3.11 # the venv's interpreter = the one Orthanc's plugin embeds
)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  # Orthanc's post-install tries to start its system service; in containers that is refused, harmlessly.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with /usr/bin/python3.11"
  /usr/bin/python3.11 -m venv .venv
fi

# Reinstall only when the pinned requirements change.
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-nodeps.txt setup.cfg setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python requirements (first run takes a few minutes)"
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi

# The OHIF viewer (pinned @ohif/app dist/ from npm) and Debian chromium for the browser tests.
"$ROOT/scripts/install-viewer.sh"

# The default model: a tiny Qwen3-VL trained on the synthetic testbed (once, when absent; ~7 min).
"$ROOT/scripts/build-demo-model.sh"
