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
# The same package set as scripts/bench.sh, so one release build (one feature resolution)
# serves `make demo` and `make bench` alike.
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-demo -p coupon-bench

# shellcheck source=scripts/services.sh
source scripts/services.sh
export API_LISTEN="127.0.0.1:$API_PORT" RUST_LOG="${RUST_LOG:-info}"
# One load client on one address: the per-address rate limit would refuse most of the race.
start_service coupon-api METRICS_LISTEN=127.0.0.1:9464 RATE_LIMITS=off
start_service coupon-consumer METRICS_LISTEN=127.0.0.1:9465
echo "[demo] waiting for coupon-api (127.0.0.1:$API_PORT/ready) and coupon-consumer"
wait_ready api_ready consumer_running

# shellcheck disable=SC2086 # DEMO_ARGS is a list of flags
target/release/coupon-demo --base-url "http://127.0.0.1:$API_PORT" ${DEMO_ARGS:-}
