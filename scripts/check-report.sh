#!/usr/bin/env bash
# Opens a `milan report` page in headless Chromium (Debian's `chromium`) as a person would, and checks it:
# every <img> decoded (the page's own load check writes data-images="ok N" on <body>), no message on the browser
# console; with a second argument, also writes a screenshot of the page there.
#   bash scripts/check-report.sh runs/milan-fashion/report.html [docs/report.png]
set -euo pipefail
page=$(realpath "$1")
shot=${2:-}
command -v chromium >/dev/null || { echo "check-report: chromium is not installed (apt-get install chromium)" >&2; exit 2; }
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --enable-logging=stderr --v=0)
err=$(mktemp)
trap 'rm -f "$err"' EXIT
dom=$(chromium "${flags[@]}" --virtual-time-budget=10000 --dump-dom "file://$page" 2>"$err")
state=$(grep -o 'data-images="[^"]*"' <<<"$dom" || true)
console=$(grep ':CONSOLE' "$err" || true)
status=0
case "$state" in
  'data-images="ok '*) echo "check-report: ${state#data-images=} images decoded" ;;
  *) echo "check-report: images not all decoded (${state:-the load check did not run})" >&2; status=1 ;;
esac
if [ -n "$console" ]; then echo "check-report: console messages:" >&2; echo "$console" >&2; status=1; fi
if [ -n "$shot" ]; then
  height=$(grep -o 'data-height="[0-9]*"' <<<"$dom" | grep -o '[0-9]*' || echo 2600)
  chromium "${flags[@]}" --window-size=1500,"$height" --screenshot="$(realpath -m "$shot")" "file://$page" 2>/dev/null >/dev/null
  [ -s "$shot" ] || { echo "check-report: no screenshot written" >&2; status=1; }
  echo "check-report: screenshot $shot"
fi
exit $status
