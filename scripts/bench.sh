#!/usr/bin/env bash
# The issue-path benchmark (`make bench`): installs wrk and redis-benchmark where missing, builds
# release binaries, then `coupon-bench issue` measures, in one run on this machine, (a) the
# ceilings (plain axum with the API's extractors, the admission script under redis-benchmark,
# the broker's produce and consume rates), (b) the issue endpoint with every request admitted,
# (c) the rejection path (sold out, repeat users), (d) the consumer's drain rate into MySQL,
# and the exactness of every coupon it touched. See coupon-bench/src/issue/mod.rs.
# Then, on the local Redis Cluster (started here if needed), `coupon-bench scale` measures figure
# (b) with 1 and 2 coupon-api processes on one node and on the cluster (and with
# REDIS_WAIT_REPLICAS=1) and the drain with 1 and 2 consumers, with every process's CPU per
# request (coupon-bench/src/issue/scale.rs), and `coupon-bench shards` one hot coupon with its
# stock in 1 and in 3 shards (coupon-bench/src/shards.rs).
# Results: bench/results/issue.{json,md}, scale.{json,md} and shards.{json,md}. Takes about
# 18 minutes on 2 cores.
# Fails (non-zero exit) if a figure errors, a request fails, or a coupon is inexact.
#
#   scripts/bench.sh           the full benchmark
#   scripts/bench.sh --smoke   one short run of each figure (`make bench-smoke`, CI): checks
#                              that every figure runs and every coupon is exact, measures
#                              nothing worth keeping; results in .local/bench/smoke/
#
# Settings (env): BENCH_ARGS (extra flags, after the smoke's, e.g.
# "--runs 5 --seconds 20 --connections 128"; see `coupon-bench issue --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode_args=()
case "${1:-}" in
  "") ;;
  --smoke)
    mode_args=(--runs 1 --seconds 2 --warmup-seconds 1 --redis-calls 100000
      --produce-messages 20000 --drain-messages 20000 --out-dir .local/bench/smoke)
    ;;
  *)
    echo "usage: $0 [--smoke]" >&2
    exit 2
    ;;
esac

# shellcheck source=scripts/apt.sh
source scripts/apt.sh
command -v wrk >/dev/null || apt_install wrk
command -v redis-benchmark >/dev/null || apt_install redis-tools

echo "[bench] building (release)"
# The demo's binaries too: one release build serves `make demo` and `make bench` alike.
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-demo -p coupon-bench

# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
target/release/coupon-bench issue "${mode_args[@]}" ${BENCH_ARGS:-}

# On the local Redis Cluster: the issue path at scale (coupon-bench/src/issue/scale.rs), then one
# hot coupon with its stock in 1 and in 3 shards, straight at Redis (coupon-bench/src/shards.rs):
# results in scale.{json,md} and shards.{json,md} beside issue.{json,md}.
REDIS_MODE=cluster scripts/stack.sh up
case "${1:-}" in
  --smoke)
    target/release/coupon-bench scale --runs 1 --seconds 2 --warmup-seconds 1 \
      --drain-messages 20000 --out-dir .local/bench/smoke
    target/release/coupon-bench shards --seconds 1 --out-dir .local/bench/smoke
    ;;
  *)
    target/release/coupon-bench scale
    target/release/coupon-bench shards
    ;;
esac
