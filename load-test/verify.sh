#!/usr/bin/env bash
# Verifies the coupon a load-test run raced, with `coupon-demo verify` (the check `make demo`
# prints): reads the run's race file (written by the k6 script or the locustfile: coupon id,
# whether the run created the coupon, its 202 answers, requests left without an answer), waits
# for coupon-consumer to drain and compares MySQL and Redis. The 202 count must equal the rows
# only when it accounts for every admission: the run created the coupon and every request was
# answered. The stores are found as the services find them (DATABASE_URL, REDIS_URL,
# REDIS_KEY_PREFIX; the local stack's by default). Exits 1 when inexact.
#
#   load-test/verify.sh load-test/results/k6-race.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

race=${1:?usage: load-test/verify.sh RACE_JSON}
if [ ! -s "$race" ]; then
  echo "[verify] no $race: the run ended before it raced" >&2
  exit 1
fi
read -r coupon accepted < <(python3 - "$race" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
every_admission = run["created"] and run["unanswered"] == 0
if run["created"] and not every_admission:
    print(f"[verify] {run['unanswered']} requests got no answer: the rows are not compared "
          "with the 202 count", file=sys.stderr)
print(run["coupon_id"] or "-", run["accepted"] if every_admission else "")
PY
)
if [ "$coupon" = - ]; then
  echo "[verify] $race names no coupon: the run ended before it raced" >&2
  exit 1
fi
args=(verify --coupon "$coupon")
if [ -n "$accepted" ]; then
  args+=(--accepted "$accepted")
fi
# The package set of scripts/demo.sh: building coupon-demo alone would resolve other features
# for the shared dependencies and rebuild them (and relink the binary) after `make demo`.
cargo build --release --locked --quiet -p coupon-api -p coupon-consumer -p coupon-demo -p coupon-bench
echo "[verify] coupon-demo ${args[*]}"
exec target/release/coupon-demo "${args[@]}"
