# Sourced by load-smoke.sh, bench-codes.sh, fuzz.sh and load-test/serve.sh: starts release
# binaries of the services in the background, waits until they are ready, and stops them when
# the script exits. The sourcing script sets `logs` (a directory) and API_PORT.
# The demo, the benchmark, the fault suite and the tests start their processes in Rust
# instead, through coupon-harness (`make demo`: coupon-demo/src/services.rs); these scripts
# keep this file because each runs shell tools beside the services (k6 and Locust, a fuzzer,
# coupon-bench with the API's pid).

# Bearer tokens on the local stack: a development secret unless JWT_SECRET is set. Anyone who
# knows it can mint tokens, so a real deployment sets its own (at least 32 bytes), and the
# services refuse the published one unless ALLOW_DEVELOPMENT_SECRET is true, as it is here.
export JWT_SECRET="${JWT_SECRET:-couponrush-local-development-secret}"
export ALLOW_DEVELOPMENT_SECRET="${ALLOW_DEVELOPMENT_SECRET:-true}"

pids=()
stop_services() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_services EXIT

# start_service NAME[:TAG] [VAR=value ...]: target/release/NAME with those variables, logging to
# $logs/NAME.log, or $logs/NAME-TAG.log with a tag (several instances of one binary); its pid
# is appended to `pids`, and stop_services stops every one.
start_service() {
  local name=${1%%:*} log=${1/:/-}
  shift
  env "$@" "target/release/$name" >"$logs/$log.log" 2>&1 &
  pids+=($!)
}

# api_ready [PORT...]: GET /ready answers 200 on every PORT (default: API_PORT), over bash's
# /dev/tcp: no curl needed.
api_ready() {
  local port status
  for port in "${@:-$API_PORT}"; do
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    status=
    read -r _ status _ <&3 || true
    exec 3<&-
    [ "$status" = 200 ] || return 1
  done
}
# consumer_running [TAG...]: every coupon-consumer started with one of these tags (default: the
# one started untagged) logged that it runs.
consumer_running() {
  local tag
  if [ $# = 0 ]; then set -- ""; fi
  for tag in "$@"; do
    grep -q "coupon-consumer running" "$logs/coupon-consumer${tag:+-$tag}.log" || return 1
  done
}

# wait_ready CHECK...: polls every CHECK (a function, with its arguments in the same word, e.g.
# "api_ready 8080 8081") for up to 60 s; fails if a service exits.
wait_ready() {
  local all check
  for _ in $(seq 300); do
    all=1
    # shellcheck disable=SC2086 # a CHECK is a function name and its arguments
    for check in "$@"; do $check 2>/dev/null || all=0; done
    [ "$all" = 1 ] && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a service exited; logs in $logs/" >&2; tail -n 20 "$logs"/*.log >&2; return 1; }
    done
    sleep 0.2
  done
  echo "services not ready after 60 s; logs in $logs/" >&2
  return 1
}
