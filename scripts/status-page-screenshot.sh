#!/usr/bin/env bash
# Renders the admin endpoint's HTML page in headless Chromium and saves a PNG.
#   bash scripts/status-page-screenshot.sh [URL] [OUT.png]
# Default: http://127.0.0.1:9901/ -> status-page.png
set -euo pipefail
url=${1:-http://127.0.0.1:9901/}
out=${2:-status-page.png}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium is not installed (apt-get install chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
timeout 60 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size=1280,1600 --screenshot="$out" "$url" >/dev/null 2>&1
[ -s "$out" ] || { echo "no screenshot written" >&2; exit 1; }
echo "$out"
