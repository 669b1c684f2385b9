#!/usr/bin/env bash
# The main job, in one command: set up (idempotent, scripts/bootstrap.sh), then `unirg demo`:
# Orthanc + unirg plugin + worker + OHIF viewer on loopback, a synthetic patient's prior study loaded,
# the next study sent by C-STORE, the draft printed with its OHIF link. Ctrl-C stops everything.
# Extra arguments go to `unirg demo` (e.g. --exit-after-draft, --model PATH; see --help).
# RESEARCH ONLY - NOT FOR CLINICAL USE.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# `python -m unirg.plugin.demo` is `unirg demo` (the same click command).
exec .venv/bin/python -m unirg.plugin.demo "$@"
