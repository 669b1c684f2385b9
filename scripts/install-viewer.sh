#!/usr/bin/env bash
# Idempotent set-up for the OHIF viewer path (`unirg viewer`) and its browser tests, on Debian 12:
#   1. Debian's `chromium` (headless browser for tests/test_viewer.py; /usr/bin/chromium).
#   2. The pinned, prebuilt OHIF viewer `@ohif/app@3.13.2` from npm (`npm pack`, integrity-checked),
#      its `dist/` extracted to var/ohif/dist (git-ignored). `unirg viewer` serves that folder.
# Each step is skipped when already done. Called from scripts/bootstrap.sh; safe to run again.
# Needs: apt (root or sudo) for chromium, Node/npm and the npm registry for OHIF (first run only).
# Environment: UNIRG_SKIP_CHROMIUM=1 skips step 1 (a server that only serves the viewer).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

OHIF_PACKAGE="@ohif/app"
OHIF_VERSION="3.13.2"
# npm's registry integrity for @ohif/app@3.13.2 (`npm view @ohif/app@3.13.2 dist.integrity`).
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
OHIF_DIR="$ROOT/var/ohif"
STAMP="$OHIF_DIR/dist/.unirg-ohif-version"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# 1. Chromium (Debian package; Playwright's own browser download is not used).
if [ "${UNIRG_SKIP_CHROMIUM:-0}" != "1" ]; then
  if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
    echo "install-viewer: installing Debian chromium"
    $SUDO apt-get update -qq
    # Recommends stay on: they bring the fonts the screenshots need.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  test -x /usr/bin/chromium || { echo "install-viewer: /usr/bin/chromium missing after install" >&2; exit 1; }
fi

# 2. OHIF prebuilt dist.
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$OHIF_PACKAGE@$OHIF_VERSION" ] && [ -f "$OHIF_DIR/dist/index.html" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "install-viewer: npm not found (install Node.js 18+)" >&2; exit 1; }
echo "install-viewer: fetching $OHIF_PACKAGE@$OHIF_VERSION from npm (~50 MB)"
mkdir -p "$OHIF_DIR"
work=$(mktemp -d "$OHIF_DIR/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
( cd "$work" && npm pack --silent "$OHIF_PACKAGE@$OHIF_VERSION" >/dev/null )
tgz=$(ls "$work"/*.tgz)
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [ "$got" != "$OHIF_INTEGRITY" ]; then
  echo "install-viewer: integrity mismatch for $tgz: $got" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$work" package/dist
test -f "$work/package/dist/index.html" || { echo "install-viewer: no dist/index.html in the package" >&2; exit 1; }
echo "$OHIF_PACKAGE@$OHIF_VERSION" > "$work/package/dist/.unirg-ohif-version"
rm -rf "$OHIF_DIR/dist"
mv "$work/package/dist" "$OHIF_DIR/dist"
echo "install-viewer: OHIF $OHIF_VERSION in $OHIF_DIR/dist"
