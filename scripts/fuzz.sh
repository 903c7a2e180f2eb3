#!/usr/bin/env bash
# Fuzzes coupon-api from its own OpenAPI document (`make fuzz`): starts it on free ports against
# a database, Redis prefix and Kafka topics of its own, seeds a few real resources
# (fuzz/seed.py), and runs schemathesis passes until at least FUZZ_REQUESTS requests were sent.
# Fails on any 5xx answer, on any error answer (status >= 400) whose body is not JSON with a
# string "code" (fuzz/hooks.py), and on the other checks that fuzz/schemathesis.toml enables.
# Ends with one line: `fuzz: N requests, N server errors, N error bodies without a code, ...`.
#
# Passes cycle through four callers so every path gets fuzzed: an admin token (most passes;
# admins may call everything), a user token (user 7), the order service's token (role service:
# the order routes, 403 elsewhere) and no token at all (the 401 paths and the public reads).
#
# Settings (env):
#   FUZZ_REQUESTS (100000)   requests to send at least, all passes together
#   FUZZ_JOBS (3)            schemathesis processes at once. Each is CPU-bound Python (about 12 ms
#                            of CPU a request) that also waits for its answers: three keep 2 cores
#                            busy. 100,000 requests took 824 s here (2 cores, debug coupon-api)
#   FUZZ_WORKERS (1)         worker threads in each process. More break under CPython 3.11, whose
#                            compile() is not thread-safe (schemathesis reports "AST constructor
#                            recursion depth mismatch" errors), and gained little: the GIL
#   FUZZ_MAX_EXAMPLES (100)  cases per operation and phase in a pass (`st run -n`); the last passes
#                            get fewer, just enough to reach FUZZ_REQUESTS (fuzz/budget.py)
#   FUZZ_SEED (random)       seed of pass 0; pass k runs with FUZZ_SEED + k
#   COUPON_API_BIN           the binary to fuzz; unset: target/debug/coupon-api, built first
# Everything a run writes (API log, each pass's output, JUnit report and tally, schemathesis's
# crash files for `st replay`) goes to .local/fuzz/run/, which is also where schemathesis runs;
# the database coupon_fuzz stays for a look after the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

FUZZ_REQUESTS="${FUZZ_REQUESTS:-100000}"
FUZZ_JOBS="${FUZZ_JOBS:-3}"
FUZZ_WORKERS="${FUZZ_WORKERS:-1}"
FUZZ_MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-100}"
FUZZ_SEED="${FUZZ_SEED:-$((RANDOM * 32768 + RANDOM))}"
log() { printf '[fuzz] %s\n' "$*" >&2; }

# --- schemathesis, pinned, in its own virtual environment (as load-test/run-locust.sh does) ---
requirements=fuzz/requirements.txt
# A fresh Debian machine may lack Python or its venv module (Debian splits it out).
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  # shellcheck source=scripts/apt.sh
  source scripts/apt.sh
  log "installing python3 and python3-venv (Debian packages)"
  apt_install python3 python3-venv
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "fuzz.sh: schemathesis needs Python 3.11 or newer, python3 is $(python3 --version 2>&1)" >&2
  exit 2
fi
venv=.local/fuzz/venv
# Whether every `name==version` pin of the requirements is installed at that version.
installed() {
  [ -x "$venv/bin/python" ] && [ -x "$venv/bin/st" ] &&
    "$venv/bin/python" - "$requirements" 2>/dev/null <<'PY'
import importlib.metadata as m, re, sys
for line in open(sys.argv[1]):
    pin = re.match(r"\s*([A-Za-z0-9_.-]+)==(\S+)", line)
    if pin and m.version(pin[1]) != pin[2]:
        sys.exit(1)
PY
}
if ! installed; then
  log "installing $(grep -E '^[a-z]' "$requirements" | tr '\n' ' ')into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$requirements"
fi

# --- the binary ---
if [ -z "${COUPON_API_BIN:-}" ]; then
  # A debug build: it compiles in a fraction of the release build's time, and answers fast
  # enough that the fuzzer, not the API, sets the pace.
  log "building coupon-api (debug)"
  cargo build --locked -p coupon-api
  COUPON_API_BIN=target/debug/coupon-api
fi
[ -x "$COUPON_API_BIN" ] || { echo "fuzz.sh: $COUPON_API_BIN is not an executable" >&2; exit 2; }

# --- a clean slate: its own database, Redis keys and Kafka topics ---
run="$PWD/.local/fuzz/run"
rm -rf "$run"
mkdir -p "$run"
db=coupon_fuzz
mariadb -h127.0.0.1 -ucoupon -pcoupon -e "DROP DATABASE IF EXISTS \`$db\`" # coupon-api creates and migrates it
redis_prefix="fuzz:"
redis-cli -h 127.0.0.1 --scan --pattern "$redis_prefix*" | xargs -r -n 500 redis-cli -h 127.0.0.1 DEL >/dev/null
# Topics cannot be emptied here, and an issue message left from an earlier run would name a
# coupon id that the new database gives to another policy: new names each run.
topics="fuzz-$(date +%Y%m%d%H%M%S)-$$"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
METRICS_PORT=$(free_port)
while [ "$METRICS_PORT" = "$API_PORT" ]; do METRICS_PORT=$(free_port); done
# A fresh secret per run: tokens minted for one run are worthless afterwards.
JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export JWT_SECRET

# --- start coupon-api (scripts/services.sh: pids, readiness polling, stop on exit) ---
logs=$run
# shellcheck source=scripts/services.sh
source scripts/services.sh
lanes=()
cleanup() {
  for pid in "${lanes[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  stop_services
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# One client address sends everything: the per-address rate limit would answer most of it 429.
env API_LISTEN="127.0.0.1:$API_PORT" METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
  DATABASE_URL="mysql://coupon:coupon@127.0.0.1:3306/$db" REDIS_KEY_PREFIX="$redis_prefix" \
  KAFKA_ISSUE_TOPIC="$topics-issues" KAFKA_DEAD_LETTER_TOPIC="$topics-issues-dlq" \
  KAFKA_PAYMENTS_TOPIC="$topics-payments" KAFKA_EVENTS_TOPIC="$topics-events" \
  KAFKA_CONSUMER_GROUP="$topics-consumer" RATE_LIMITS=off RUST_LOG="${RUST_LOG:-info}" \
  "$COUPON_API_BIN" >"$run/coupon-api.log" 2>&1 &
pids+=($!)
api_pid=$!
log "waiting for coupon-api ($COUPON_API_BIN) on 127.0.0.1:$API_PORT"
wait_ready api_ready
base="http://127.0.0.1:$API_PORT"

admin_token=$("$COUPON_API_BIN" token --sub fuzz --role admin --ttl-secs 86400)
user_token=$("$COUPON_API_BIN" token --sub 7 --ttl-secs 86400)
service_token=$("$COUPON_API_BIN" token --sub checkout --role service --ttl-secs 86400)

log "seeding coupons, a topic with codes, issued coupons and a hold"
"$venv/bin/python" fuzz/seed.py "$base" "$admin_token" >"$run/ids.toml"
cat fuzz/schemathesis.toml "$run/ids.toml" >"$run/schemathesis.toml"

# --- the passes ---
# Requests sent so far by all passes, the running ones included (their tallies are written as
# they go).
sent() {
  "$venv/bin/python" -c 'import glob, json, sys
print(sum(json.load(open(p))["requests"] for p in glob.glob(sys.argv[1] + "/pass-*.json")))' "$run"
}
# Callers by pass number: admin 3 passes in 6, user 1, none 1, service 1; passes 0-3 (one per
# caller) always run (`lane`), so a short run has each caller too.
callers=(admin user none service admin admin)

# run_pass N EXAMPLES: one `st run`, in $run (schemathesis keeps its crash files in the working
# directory); its output, JUnit report, tally and exit code go to $run/pass-N.*
run_pass() {
  local n=$1 examples=$2 name caller phases rc began=$SECONDS
  name=$(printf 'pass-%03d' "$n")
  caller=${callers[n % ${#callers[@]}]}
  local auth=()
  case $caller in
    admin) auth=(-H "Authorization: Bearer $admin_token") ;;
    user) auth=(-H "Authorization: Bearer $user_token") ;;
    service) auth=(-H "Authorization: Bearer $service_token") ;;
  esac
  # The coverage phase is deterministic: the same cases for the same caller every pass, so it
  # runs in each caller's first passes only.
  phases=coverage,fuzzing,stateful
  [ "$n" -ge "${#callers[@]}" ] && phases=fuzzing,stateful
  echo "$examples $phases" >"$run/$name.n"
  rc=0
  (cd "$run" && SCHEMATHESIS_HOOKS=fuzz.hooks PYTHONPATH="$repo" FUZZ_TALLY_FILE="$run/$name.json" \
    "$repo/$venv/bin/st" --config-file "$run/schemathesis.toml" run "$base/openapi.json" \
    "${auth[@]}" --phases "$phases" --max-examples "$examples" \
    --workers "$FUZZ_WORKERS" --seed "$((FUZZ_SEED + n))" \
    --report junit --report-junit-path "$run/$name.xml" --no-color \
    >"$run/$name.log" 2>&1) || rc=$?
  echo "$rc" >"$run/$name.rc"
  local requests=0
  [ -f "$run/$name.json" ] && requests=$("$venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["requests"])' "$run/$name.json")
  log "$name ($caller, seed $((FUZZ_SEED + n)), -n $examples, $phases): $requests requests in $((SECONDS - began)) s, exit $rc; $(sent) sent in all"
  # Exit 1 is "checks failed", which the summary reports; anything else (a crash, a bad flag),
  # or a pass that sent nothing, would repeat forever: stop this lane.
  [ "$rc" -le 1 ] && [ "$requests" -gt 0 ]
}

# lane I: passes I, I + FUZZ_JOBS, I + 2 FUZZ_JOBS, ... until FUZZ_REQUESTS are sent or in
# reach of the passes still running. The first pass of each caller runs whatever the budget
# says (at least 10 examples; its coverage phase reaches every operation): in a short run the
# other lanes' passes could otherwise fill the budget before the service caller's first pass.
lane() {
  local n=$1 examples
  while :; do
    examples=$("$venv/bin/python" fuzz/budget.py "$run" "$FUZZ_REQUESTS" "$FUZZ_JOBS" "$FUZZ_MAX_EXAMPLES")
    if [ "$examples" -le 0 ] && [ "$n" -lt 4 ]; then examples=10; fi
    [ "$examples" -gt 0 ] || return 0
    kill -0 "$api_pid" 2>/dev/null || { log "coupon-api exited; its log: $run/coupon-api.log"; return 1; }
    run_pass "$n" "$examples" || return 1
    n=$((n + FUZZ_JOBS))
  done
}

log "fuzzing $base until $FUZZ_REQUESTS requests: $FUZZ_JOBS processes of $FUZZ_WORKERS workers, $FUZZ_MAX_EXAMPLES examples, seed $FUZZ_SEED"
start=$SECONDS
for ((i = 0; i < FUZZ_JOBS; i++)); do
  set -m # each lane its own process group, so cleanup stops its `st` too
  lane "$i" &
  set +m
  lanes+=($!)
done
lanes_ok=1
for pid in "${lanes[@]}"; do wait "$pid" || lanes_ok=0; done
lanes=()
elapsed=$((SECONDS - start))

rc=0
"$venv/bin/python" fuzz/summary.py "$run" "http://127.0.0.1:$METRICS_PORT/metrics" "$FUZZ_REQUESTS" "$elapsed" || rc=$?
[ "$lanes_ok" = 1 ] || { log "a lane stopped early; see $run/"; rc=1; }
exit "$rc"
