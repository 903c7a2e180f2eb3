#!/usr/bin/env bash
# Runs load-test/locust/locustfile.py headless with the Locust and PyJWT pinned in
# load-test/locust/requirements.txt (installed into .local/load-test/venv, the one run-k6.sh
# uses, when missing or at another version; Locust needs Python 3.11 or newer), then verifies
# the raced coupon in MySQL and Redis (load-test/verify.sh: `coupon-demo verify`).
#
# Defaults match the k6 script: host http://127.0.0.1:8080 (or $BASE_URL), 200 users all started
# at once, 10,000 issue requests, give-up time 5 minutes. Extra arguments go to `locust` after
# the defaults, so they override them, e.g.
#   load-test/run-locust.sh --stock 1000 --max-requests 20000 --user-id-count 10000
#   load-test/run-locust.sh --max-requests 0 --run-time 30s      # a fixed duration instead
#   load-test/run-locust.sh --help                               # all options, the race's too
# Reports go to load-test/results/: locust_*.csv, locust.html, and locust-race.json (what
# verify reads). Exit code: the locustfile's when a threshold failed (1), else verify's.
# Tokens are signed with $JWT_SECRET, or the local stack's development secret when it is unset
# (as in scripts/services.sh); it must be the secret coupon-api runs with. Run coupon-api with
# RATE_LIMITS=off, or its per-address limit answers most of the race 429 (load-test/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requirements=load-test/locust/requirements.txt
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "run-locust.sh: Locust needs Python 3.11 or newer, python3 is $(python3 --version 2>&1)" >&2
  exit 2
fi
venv=.local/load-test/venv
# Whether every `name==version` pin of the requirements is installed at that version.
installed() {
  [ -x "$venv/bin/locust" ] && "$venv/bin/python" - "$requirements" 2>/dev/null <<'PY'
import importlib.metadata as m, re, sys
for line in open(sys.argv[1]):
    pin = re.match(r"\s*([A-Za-z0-9_.-]+)==(\S+)", line)
    if pin and m.version(pin[1]) != pin[2]:
        sys.exit(1)
PY
}
if ! installed; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$requirements"
fi

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  # Locust prints --help before it imports the locustfile (locustio/locust#2917), so its own
  # help lacks the race's options; print both.
  exec "$venv/bin/python" -c '
import sys
sys.path.insert(0, "load-test/locust")
import locustfile  # registers the options
from locust.argument_parser import get_parser
get_parser().print_help()'
fi

mkdir -p load-test/results
race=load-test/results/locust-race.json
rm -f "$race"
status=0
"$venv/bin/locust" -f load-test/locust/locustfile.py \
  --headless \
  --host "${BASE_URL:-http://127.0.0.1:8080}" \
  --users 200 --spawn-rate 200 \
  --max-requests 10000 --run-time 5m \
  --csv load-test/results/locust \
  --html load-test/results/locust.html \
  --race-json "$race" \
  "$@" || status=$?
verified=0
load-test/verify.sh "$race" || verified=$?
exit $((status != 0 ? status : verified))
