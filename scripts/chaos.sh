#!/usr/bin/env bash
# The fault-injection suite (`make chaos`): builds coupon-api, coupon-consumer and coupon-chaos
# (debug), then runs coupon-chaos, which starts its own processes per scenario (redis-server,
# mariadbd, tansu where the fault needs one of its own, coupon-api, coupon-consumer), races
# 10,000 issue requests from 5,000 users for 500 units while injecting one fault, runs one
# reconciliation pass and prints the counts. Exits non-zero when any scenario fails.
#
# Extra flags go to coupon-chaos, e.g. `scripts/chaos.sh --fault redis-restarted`.
# Logs: .local/chaos/<scenario>/; the table of counts: .local/chaos/summary.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TANSU_BIN="$(scripts/install-tansu.sh)"
export TANSU_BIN
echo "[chaos] building (debug)"
cargo build --locked -p coupon-api -p coupon-consumer -p coupon-demo
rm -rf .local/chaos
target/debug/coupon-chaos "$@"
