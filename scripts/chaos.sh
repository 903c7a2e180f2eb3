#!/usr/bin/env bash
# The fault-injection suite (`make chaos`): builds coupon-api, coupon-consumer and coupon-chaos
# (debug), then runs coupon-chaos, which starts its own processes per scenario (redis-server,
# mariadbd, an Apache Kafka broker or a cluster of three where the fault needs them, coupon-api,
# coupon-consumer), races 10,000 issue requests from 5,000 users for 500 units (the cluster
# faults: 4,000 from 2,000 for 1,000 units, slower) while injecting one fault, reads the stores before and after one reconciliation pass and judges them. Exits
# non-zero when any scenario breaks a rule.
#
# Extra flags go to coupon-chaos, e.g. `scripts/chaos.sh --fault redis-restarted`, or
# `scripts/chaos.sh --ci` for the CI size (4,000 requests from 2,000 users for 200 units).
# Logs: .local/chaos/<scenario>/; the table of counts: .local/chaos/summary.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The broker launcher (scripts/kafka-broker.sh) of scenario broker-stopped runs this install.
KAFKA_ROOT="$(scripts/install-kafka.sh)"
export KAFKA_ROOT
echo "[chaos] building (debug)"
cargo build --locked -p coupon-api -p coupon-consumer -p coupon-demo
rm -rf .local/chaos
target/debug/coupon-chaos "$@"
