#!/usr/bin/env bash
# Renders a benchmark report in headless Chromium and saves a full-page screenshot, so a person
# (or a reviewer in CI artifacts) can see the tables and charts as a browser shows them.
#   scripts/screenshot_report.sh [SAVE_DIR] [OUT.png]
# Needs Debian's chromium (apt-get install chromium).
set -euo pipefail
dir=${1:-bench-results}
out=${2:-$dir/reports/performance_report.png}
html=$(realpath "$dir/reports/performance_report.html")
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=${WIDTH:-1280},${HEIGHT:-3000} \
  --screenshot="$out" "file://$html" >/dev/null 2>&1
rm -rf "$profile"
echo "screenshot: $out"
