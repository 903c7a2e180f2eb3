# Sourced by demo.sh and bench-codes.sh: starts release binaries of the services in the
# background, waits until they are ready, and stops them when the script exits.
# The sourcing script sets `logs` (a directory) and API_PORT.

# Bearer tokens on the local stack: a development secret unless JWT_SECRET is set. Anyone who
# knows it can mint tokens, so a real deployment sets its own (at least 32 bytes).
export JWT_SECRET="${JWT_SECRET:-couponrush-local-development-secret}"

pids=()
stop_services() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_services EXIT

# start_service NAME [VAR=value ...]: target/release/NAME with those variables, logging to
# $logs/NAME.log; its pid is appended to `pids`.
start_service() {
  local name=$1
  shift
  env "$@" "target/release/$name" >"$logs/$name.log" 2>&1 &
  pids+=($!)
}

api_ready() { # GET /ready over bash's /dev/tcp: no curl needed
  exec 3<>"/dev/tcp/127.0.0.1/$API_PORT" || return 1
  printf 'GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  local status
  read -r _ status _ <&3 || true
  exec 3<&-
  [ "$status" = 200 ]
}
consumer_running() { grep -q "coupon-consumer running" "$logs/coupon-consumer.log"; }

# wait_ready CHECK...: polls every CHECK (a function) for up to 60 s; fails if a service exits.
wait_ready() {
  local all
  for _ in $(seq 300); do
    all=1
    for check in "$@"; do "$check" 2>/dev/null || all=0; done
    [ "$all" = 1 ] && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a service exited; logs in $logs/" >&2; tail -n 20 "$logs"/*.log >&2; return 1; }
    done
    sleep 0.2
  done
  echo "services not ready after 60 s; logs in $logs/" >&2
  return 1
}
