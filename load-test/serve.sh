#!/usr/bin/env bash
# Starts coupon-api and coupon-consumer for a load test and keeps them running until Ctrl-C:
# builds the release binaries and starts them with `make demo`'s settings (through
# scripts/services.sh: the local stack's JWT_SECRET unless set, readiness wait, stop on exit;
# coupon-api with RATE_LIMITS=off), but leaves them running for load-test/run-k6.sh or
# load-test/run-locust.sh in another terminal. A load generator sends every request from one
# address, so the per-address limit (500 req/s, burst 1000) would answer most of a race 429
# RATE_LIMITED.
# Start the stores first (`make up`).
#
#   load-test/serve.sh                    # coupon-api on 127.0.0.1:8080, RATE_LIMITS=off
#   RATE_LIMITS=on load-test/serve.sh     # keep the limits (expect 429s under load)
#
# Settings (env): API_PORT (8080), RATE_LIMITS (off), JWT_SECRET (scripts/services.sh's
# development secret), RUST_LOG (info). Logs go to .local/load-test/services/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

API_PORT="${API_PORT:-8080}"
RATE_LIMITS="${RATE_LIMITS:-off}"
logs=.local/load-test/services
mkdir -p "$logs"

echo "[serve] building (release)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-demo

# shellcheck source=scripts/services.sh
source scripts/services.sh
# Ctrl-C or a TERM ends the script through its EXIT trap, which stops both services.
trap 'exit 130' INT
trap 'exit 143' TERM
export API_LISTEN="127.0.0.1:$API_PORT" RUST_LOG="${RUST_LOG:-info}"
start_service coupon-api METRICS_LISTEN=127.0.0.1:9464 RATE_LIMITS="$RATE_LIMITS"
start_service coupon-consumer METRICS_LISTEN=127.0.0.1:9465
echo "[serve] waiting for coupon-api (127.0.0.1:$API_PORT/ready) and coupon-consumer"
wait_ready api_ready consumer_running
echo "[serve] ready: coupon-api at http://127.0.0.1:$API_PORT (RATE_LIMITS=$RATE_LIMITS)," \
  "logs in $logs/; Ctrl-C stops both"

# Until Ctrl-C, or until a service exits on its own (then the other is stopped too).
status=0
wait -n || status=$?
echo "[serve] a service exited (status $status); logs in $logs/" >&2
tail -n 20 "$logs"/*.log >&2
exit 1
