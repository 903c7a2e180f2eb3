#!/usr/bin/env bash
# The issue-path benchmark (`make bench`): installs wrk and redis-benchmark where missing, builds
# release binaries, then `coupon-bench issue` measures, in one run on this machine, (a) the
# ceilings (plain axum with the API's extractors, the admission script under redis-benchmark,
# the broker's produce and consume rates), (b) the issue endpoint with every request admitted,
# (c) the rejection path (sold out, repeat users), (d) the consumer's drain rate into MySQL,
# and the exactness of every coupon it touched. See coupon-bench/src/issue.rs.
# Results: bench/results/issue.json and issue.md. Takes about 10 minutes on 2 cores.
#
# Settings (env): BENCH_ARGS (extra flags, e.g. "--runs 5 --seconds 20 --connections 128").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/apt.sh
source scripts/apt.sh
command -v wrk >/dev/null || apt_install wrk
command -v redis-benchmark >/dev/null || apt_install redis-tools

echo "[bench] building (release)"
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-bench

# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
target/release/coupon-bench issue ${BENCH_ARGS:-}
