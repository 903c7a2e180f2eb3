#!/usr/bin/env bash
# Runs load-test/locust/locustfile.py headless with the pinned Locust of
# load-test/locust/requirements.txt (and PyJWT, which signs the tokens), installed into
# .local/load-test/venv on first use (the same virtual environment run-k6.sh uses). Locust needs
# Python 3.11 or newer.
#
# Defaults match the k6 script: host http://127.0.0.1:8080 (or $BASE_URL), 200 users all started
# at once, 10,000 issue requests (give-up time 5 minutes). Extra arguments go to `locust` after
# the defaults, so they override them, e.g.
#   load-test/run-locust.sh --host http://10.0.0.5:8080 --stock 1000 --max-requests 20000 \
#       --user-id-count 10000 --repeat-share 0.3 -u 400 -r 400
#   load-test/run-locust.sh --max-requests 0 --run-time 30s      # a fixed duration instead
#   load-test/run-locust.sh --processes 2                        # more than one load process
#   load-test/run-locust.sh --help                               # all options, the race's too
# Reports go to load-test/results/: locust_*.csv, locust.html, locust-summary.json.
# The run ends by checking exactness against the API's own stats (test stop in the locustfile);
# the exit code is non-zero when that check or a threshold (--max-error-ratio, --max-p99-ms)
# fails.
# Tokens are signed with $JWT_SECRET, or the local stack's development secret when it is unset
# (as in scripts/services.sh); it must be the secret coupon-api runs with. Run coupon-api with
# RATE_LIMITS=off, or its per-address limit answers most of the race 429 (load-test/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requirements=load-test/locust/requirements.txt
LOCUST_VERSION=$(sed -n 's/^locust==\([^[:space:]]*\).*/\1/p' "$requirements")
if [ -z "$LOCUST_VERSION" ]; then
  echo "run-locust.sh: no 'locust==<version>' pin in $requirements" >&2
  exit 2
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "run-locust.sh: Locust $LOCUST_VERSION needs Python 3.11 or newer, python3 is $(python3 --version 2>&1)" >&2
  exit 2
fi

venv=.local/load-test/venv
# Whether every `name==version` pin of the requirements is installed at that version.
installed() {
  [ -x "$venv/bin/python" ] && [ -x "$venv/bin/locust" ] &&
    "$venv/bin/python" - "$requirements" 2>/dev/null <<'PY'
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
  # Locust prints --help before it imports the locustfile, so its own help lacks the options
  # the locustfile adds; print them along with Locust's.
  exec "$venv/bin/python" -c '
import sys
sys.path.insert(0, "load-test/locust")
import locustfile  # registers the options
from locust.argument_parser import get_parser
get_parser().print_help()'
fi

mkdir -p load-test/results
exec "$venv/bin/locust" -f load-test/locust/locustfile.py \
  --headless \
  --host "${BASE_URL:-http://127.0.0.1:8080}" \
  --users 200 --spawn-rate 200 \
  --max-requests 10000 --run-time 5m \
  --csv load-test/results/locust \
  --html load-test/results/locust.html \
  --summary-json load-test/results/locust-summary.json \
  "$@"
