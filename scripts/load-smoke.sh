#!/usr/bin/env bash
# `make load-smoke`: one short run of each load-test script, so the commands load-test/README.md
# promises keep working. Starts coupon-api (RATE_LIMITS=off) and coupon-consumer from release
# binaries as load-test/serve.sh does, then runs load-test/run-k6.sh and load-test/run-locust.sh
# with a small race (stock 50, 600 requests, 300 users); each installs its pinned tool on first
# use and ends with `coupon-demo verify`, so the target fails unless both races verify EXACT.
# Measures nothing worth keeping. Start the stores first (`make up`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

API_PORT="${API_PORT:-8080}"
logs=.local/load-smoke
mkdir -p "$logs"

echo "[load-smoke] building (release)"
# The package set of scripts/demo.sh and scripts/bench.sh (and load-test/verify.sh): one
# feature resolution, so CI's one release build serves all of them.
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-demo -p coupon-bench

# shellcheck source=scripts/services.sh
source scripts/services.sh
export API_LISTEN="127.0.0.1:$API_PORT" BASE_URL="http://127.0.0.1:$API_PORT" RUST_LOG="${RUST_LOG:-info}"
start_service coupon-api METRICS_LISTEN=127.0.0.1:9464 RATE_LIMITS=off
start_service coupon-consumer METRICS_LISTEN=127.0.0.1:9465
wait_ready api_ready consumer_running

echo "[load-smoke] k6: stock 50, 600 requests, 300 users"
load-test/run-k6.sh -e STOCK=50 -e REQUESTS=600 -e USER_ID_COUNT=300 -e VUS=20
echo "[load-smoke] locust: stock 50, 600 requests, 300 users"
# Other user ids than the k6 race's: each race creates its own coupon, but distinct ids keep the
# two runs' users apart in the logs.
load-test/run-locust.sh --stock 50 --max-requests 600 --user-id-count 300 --user-id-start 1001 \
  --users 20 --spawn-rate 20 --run-time 2m
echo "[load-smoke] both load scripts ran and verified EXACT"
