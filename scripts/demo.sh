#!/usr/bin/env bash
# The main job (`make demo`): builds and starts coupon-api and coupon-consumer against the local
# stack, races 10,000 issue requests from 5,000 users for a 500-unit coupon through real HTTP,
# waits for the consumer to drain, prints the verification and draws the race into
# .local/demo/race.svg (coupon-demo's --chart; the last line prints the path). Exits non-zero
# on any mismatch.
#
# Settings (env): API_PORT (8080), DEMO_ARGS (extra coupon-demo flags, e.g. "--stock 1000").
# Two flags in DEMO_ARGS are the script's own, not coupon-demo's:
#   --api-instances N  N coupon-api processes (1): instance i listens on API_PORT+i, metrics on
#                      127.0.0.1:9464+2i; the race is spread over them round-robin.
#   --consumers M      M coupon-consumer processes (1), one Kafka consumer group: consumer j
#                      serves metrics on 127.0.0.1:9465+2j.
# e.g. DEMO_ARGS="--api-instances 3 --consumers 2" make demo.
# REDIS_MODE=cluster runs everything on the local Redis Cluster that `make up` then starts
# (REDIS_URL defaults to its first node), e.g.
#   REDIS_MODE=cluster DEMO_ARGS="--api-instances 3 --consumers 2" make demo
# KAFKA_MODE=cluster runs the services on the three-broker Kafka cluster that `make up` then
# starts (KAFKA_BROKERS defaults to its three brokers), topics created with 3 replicas and
# min.insync.replicas=2, e.g. CI's scale demo:
#   REDIS_MODE=cluster KAFKA_MODE=cluster DEMO_ARGS="--api-instances 3 --consumers 2 --stock-shards 4" make demo
# With several instances of one binary each logs to its own file, $logs/NAME-i.log; with one,
# to $logs/NAME.log as before.
# DEMO_HOLD_SECONDS (0): keep the services running that long before the race and after the
# verification, so a Prometheus scraping them sees the drop between quiet samples
# (`make monitor-check` runs the demo with 12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

API_PORT="${API_PORT:-8080}"
hold="${DEMO_HOLD_SECONDS:-0}"
logs=.local/demo
mkdir -p "$logs"

api_instances=1 consumers=1 demo_args=()
read -r -a words <<<"${DEMO_ARGS:-}"
set -- "${words[@]}"
while [ $# -gt 0 ]; do
  case $1 in
    --api-instances) api_instances=${2:-}; shift 2 || shift ;;
    --api-instances=*) api_instances=${1#*=}; shift ;;
    --consumers) consumers=${2:-}; shift 2 || shift ;;
    --consumers=*) consumers=${1#*=}; shift ;;
    *) demo_args+=("$1"); shift ;;
  esac
done
for count in "$api_instances" "$consumers"; do
  [[ $count =~ ^[1-9][0-9]*$ ]] || { echo "[demo] --api-instances and --consumers take a count of at least 1, not '$count'" >&2; exit 2; }
done

echo "[demo] building (release)"
# The same package set as scripts/bench.sh, so one release build (one feature resolution)
# serves `make demo` and `make bench` alike.
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-demo -p coupon-bench

# shellcheck source=scripts/services.sh
source scripts/services.sh
export RUST_LOG="${RUST_LOG:-info}"
if [ "${REDIS_MODE:-single}" = cluster ]; then
  export REDIS_MODE REDIS_URL="${REDIS_URL:-redis://127.0.0.1:${REDIS_CLUSTER_PORT:-7000}}"
fi
if [ "${KAFKA_MODE:-single}" = cluster ]; then
  first=${KAFKA_CLUSTER_PORT:-19092}
  export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:$first,127.0.0.1:$((first + 1)),127.0.0.1:$((first + 2))}" \
    KAFKA_TOPIC_REPLICATION_FACTOR="${KAFKA_TOPIC_REPLICATION_FACTOR:-3}" \
    KAFKA_TOPIC_MIN_INSYNC_REPLICAS="${KAFKA_TOPIC_MIN_INSYNC_REPLICAS:-2}"
fi
# A run on the cluster keeps to a database, topics and consumer group of its own (unless set):
# one database must always be paired with one Redis (reconciliation repairs the one against
# the other), and the issue messages in a topic name the coupons of one database.
if [ "${REDIS_MODE:-single}" = cluster ]; then
  ns="scale-cluster"
  export DATABASE_URL="${DATABASE_URL:-mysql://coupon:coupon@127.0.0.1:3306/coupon_${ns//-/_}}" \
    KAFKA_ISSUE_TOPIC="${KAFKA_ISSUE_TOPIC:-coupon-issues-$ns}" \
    KAFKA_DEAD_LETTER_TOPIC="${KAFKA_DEAD_LETTER_TOPIC:-coupon-issues-dlq-$ns}" \
    KAFKA_PAYMENTS_TOPIC="${KAFKA_PAYMENTS_TOPIC:-payments-$ns}" \
    KAFKA_EVENTS_TOPIC="${KAFKA_EVENTS_TOPIC:-coupon.events-$ns}" \
    KAFKA_CONSUMER_GROUP="${KAFKA_CONSUMER_GROUP:-coupon-consumer-$ns}"
fi
# tag N I: the log tag of instance I of N, none when it is the only one (NAME.log as before).
tag() { [ "$1" = 1 ] || echo ":$2"; }
api_ports=() base_urls=() consumer_tags=()
for ((i = 0; i < api_instances; i++)); do
  port=$((API_PORT + i))
  # One load client on one address: the per-address rate limit would refuse most of the race.
  start_service "coupon-api$(tag "$api_instances" "$i")" API_LISTEN="127.0.0.1:$port" \
    METRICS_LISTEN="127.0.0.1:$((9464 + 2 * i))" RATE_LIMITS=off
  api_ports+=("$port")
  base_urls+=("http://127.0.0.1:$port")
done
for ((j = 0; j < consumers; j++)); do
  start_service "coupon-consumer$(tag "$consumers" "$j")" METRICS_LISTEN="127.0.0.1:$((9465 + 2 * j))"
  consumer_tags+=("$(tag "$consumers" "$j" | tr -d :)")
done
echo "[demo] waiting for $api_instances coupon-api (/ready on 127.0.0.1 port ${api_ports[*]}) and $consumers coupon-consumer"
wait_ready "api_ready ${api_ports[*]}" "consumer_running ${consumer_tags[*]}"
if [ "$consumers" -gt 1 ]; then
  # Race only once every member holds issue partitions: a member still joining would take
  # no share of this run.
  echo "[demo] waiting until each of the $consumers consumers is assigned partitions of ${KAFKA_ISSUE_TOPIC:-coupon-issues}"
  wait_ready "consumer_assigned ${KAFKA_ISSUE_TOPIC:-coupon-issues} ${consumer_tags[*]}"
fi

status=0
[ "$hold" = 0 ] || { echo "[demo] holding ${hold} s before the race (DEMO_HOLD_SECONDS)"; sleep "$hold"; }
target/release/coupon-demo --base-url "$(IFS=,; echo "${base_urls[*]}")" "${demo_args[@]}" || status=$?
if [ "$api_instances" -gt 1 ] || [ "$consumers" -gt 1 ]; then
  # Each process's share, from its own metrics: issue answers served, rows inserted.
  for ((i = 0; i < api_instances; i++)); do
    echo "[demo] coupon-api ${api_ports[$i]}: $(metric_sum $((9464 + 2 * i)) coupon_issue_requests_total) issue requests answered"
  done
  for ((j = 0; j < consumers; j++)); do
    echo "[demo] coupon-consumer $j: $(metric_sum $((9465 + 2 * j)) coupon_consumer_rows_inserted_total) rows inserted"
  done
fi
echo "[demo] ran $api_instances coupon-api instance(s) on ports ${api_ports[*]} and $consumers" \
  "coupon-consumer(s) in group ${KAFKA_CONSUMER_GROUP:-coupon-consumer} on Redis ${REDIS_MODE:-single}" \
  "(${REDIS_URL:-redis://127.0.0.1:6379}), Kafka ${KAFKA_BROKERS:-127.0.0.1:9092}, database ${DATABASE_URL:-mysql://coupon:coupon@127.0.0.1:3306/coupon}; logs in $logs/"
[ "$hold" = 0 ] || { echo "[demo] holding ${hold} s after the verification (DEMO_HOLD_SECONDS)"; sleep "$hold"; }
exit "$status"
