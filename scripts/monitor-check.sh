#!/usr/bin/env bash
# `make monitor-check`: a real Prometheus answers every dashboard and alert query.
#
# Starts `make monitor`'s Prometheus (unless one runs), runs the demo's drop with it scraping
# every second (DEMO_HOLD_SECONDS=12: the services run 12 s before the race and after the
# verification, so counters and the consumer's 5 s gauges have samples on both sides of it),
# then evaluates every Grafana panel query and alert rule of monitoring/ through Prometheus's
# HTTP API (monitoring/check_queries.py). Then shows that the check can fail: a copy of the
# dashboards whose panel names a metric no service exports must be refused. Stops the
# Prometheus it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=""
if ! (exec 3<>"/dev/tcp/127.0.0.1/${PROMETHEUS_PORT:-9090}") 2>/dev/null; then
  scripts/monitor.sh up
  started=1
fi
work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  [ -z "$started" ] || scripts/monitor.sh down
}
trap cleanup EXIT

DEMO_HOLD_SECONDS="${DEMO_HOLD_SECONDS:-12}" scripts/demo.sh
python3 monitoring/check_queries.py "$@"

cp monitoring/grafana/dashboards/*.json "$work/"
sed -i 's/coupon_policy_remaining{/coupon_policy_remaining_typo{/' "$work/couponrush-issue.json"
grep -q coupon_policy_remaining_typo "$work/couponrush-issue.json"
if python3 monitoring/check_queries.py --dashboards "$work" "$@" >"$work/out" 2>&1; then
  echo "[monitor-check] the check passed a dashboard naming a metric no service exports" >&2
  exit 1
fi
grep -q "FAIL .*coupon_policy_remaining_typo" "$work/out" || { cat "$work/out" >&2; exit 1; }
echo "[monitor-check] and it refuses a dashboard whose panel names a metric no service exports:"
grep "FAIL" "$work/out" | head -3
