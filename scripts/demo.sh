#!/usr/bin/env bash
# The main job (`make demo`): builds and starts coupon-api and coupon-consumer against the local
# stack, races 10,000 issue requests from 5,000 users for a 500-unit coupon through real HTTP,
# waits for the consumer to drain, and prints the verification. Exits non-zero on any mismatch.
#
# Settings (env): API_PORT (8080), DEMO_ARGS (extra coupon-demo flags, e.g. "--stock 1000").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

API_PORT="${API_PORT:-8080}"
logs=.local/demo
mkdir -p "$logs"

echo "[demo] building (release)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-demo

pids=()
stop_services() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_services EXIT

export API_LISTEN="127.0.0.1:$API_PORT" RUST_LOG="${RUST_LOG:-info}"
METRICS_LISTEN=127.0.0.1:9464 target/release/coupon-api >"$logs/coupon-api.log" 2>&1 &
pids+=($!)
METRICS_LISTEN=127.0.0.1:9465 target/release/coupon-consumer >"$logs/coupon-consumer.log" 2>&1 &
pids+=($!)

ready() { # GET /ready over bash's /dev/tcp: no curl needed
  exec 3<>"/dev/tcp/127.0.0.1/$API_PORT" || return 1
  printf 'GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  local status
  read -r _ status _ <&3 || true
  exec 3<&-
  [ "$status" = 200 ]
}
consumer_running() { grep -q "coupon-consumer running" "$logs/coupon-consumer.log"; }
echo "[demo] waiting for coupon-api (127.0.0.1:$API_PORT/ready) and coupon-consumer"
for _ in $(seq 300); do
  ready 2>/dev/null && consumer_running && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "[demo] a service exited; logs in $logs/" >&2; tail -20 "$logs"/*.log >&2; exit 1; }
  done
  sleep 0.2
done
{ ready && consumer_running; } || { echo "[demo] services not ready after 60 s; logs in $logs/" >&2; exit 1; }

# shellcheck disable=SC2086 # DEMO_ARGS is a list of flags
target/release/coupon-demo --base-url "http://127.0.0.1:$API_PORT" ${DEMO_ARGS:-}
