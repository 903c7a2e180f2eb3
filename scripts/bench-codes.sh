#!/usr/bin/env bash
# The code-coupon benchmark (`make bench-codes`): a fresh `coupon_bench` database, a release
# coupon-api on it, then `coupon-bench codes` (see coupon-bench/src/codes/mod.rs for the steps):
# the generation rate of 1,000,000 codes with the API's memory, then redeem-by-code and search
# latency with 10,000,000 codes in the hot table, before and after archiving 9,000,000 of them.
# Results: bench/results/codes.json and codes.md. Takes about half an hour on 2 cores.
#
# Settings (env): API_PORT (8090), BENCH_ARGS (extra flags, e.g. "--hot 2000000").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

API_PORT="${API_PORT:-8090}"
logs=.local/bench
mkdir -p "$logs"
database=coupon_bench

echo "[bench] building (release)"
cargo build --release --locked -p coupon-api -p coupon-bench

echo "[bench] fresh database $database"
mariadb -h127.0.0.1 -ucoupon -pcoupon -e "DROP DATABASE IF EXISTS \`$database\`"

# shellcheck source=scripts/services.sh
source scripts/services.sh
export DATABASE_URL="mysql://coupon:coupon@127.0.0.1:3306/$database" REDIS_KEY_PREFIX="bench:"
start_service coupon-api API_LISTEN="127.0.0.1:$API_PORT" METRICS_LISTEN=off RATE_LIMITS=off RUST_LOG="${RUST_LOG:-warn}"
wait_ready api_ready

# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
target/release/coupon-bench codes --base-url "http://127.0.0.1:$API_PORT" --api-pid "${pids[0]}" ${BENCH_ARGS:-}
