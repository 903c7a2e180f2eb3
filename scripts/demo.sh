#!/usr/bin/env bash
# The main job (`make demo`): builds the release binaries, then runs coupon-demo, which starts
# coupon-api and coupon-consumer against the local stack (coupon-demo/src/services.rs, through
# coupon-harness), races 10,000 issue requests from 5,000 users for a 500-unit coupon through
# real HTTP, waits for the consumer to drain, prints the verification, draws the race into
# .local/demo/race.svg (coupon-demo's --chart; the last line prints the path) and stops the
# services. Exits non-zero on any mismatch.
#
# Settings (env): API_PORT (8080, the first coupon-api's port), DEMO_ARGS (coupon-demo's
# flags, passed to it whole, e.g. "--stock 1000"; `target/release/coupon-demo --help` lists
# them), among them:
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
# to $logs/NAME.log ($logs: .local/demo, coupon-demo's --log-dir).
# DEMO_HOLD_SECONDS (0): keep the services running that long before the race and after the
# verification, so a Prometheus scraping them sees the drop between quiet samples
# (`make monitor-check` runs the demo with 12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "[demo] building (release)"
# The same package set as scripts/bench.sh, so one release build (one feature resolution)
# serves `make demo` and `make bench` alike.
cargo build --release --locked -p coupon-api -p coupon-consumer -p coupon-demo -p coupon-bench

# The environment coupon-demo reads and the services it starts inherit.
# Bearer tokens on the local stack: a development secret unless JWT_SECRET is set (as
# scripts/services.sh sets it for the other scripts). Anyone who knows it can mint tokens, so a
# real deployment sets its own, and the services refuse the published one unless
# ALLOW_DEVELOPMENT_SECRET is true, as it is here.
export JWT_SECRET="${JWT_SECRET:-couponrush-local-development-secret}"
export ALLOW_DEVELOPMENT_SECRET="${ALLOW_DEVELOPMENT_SECRET:-true}"
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

# DEMO_ARGS split into words as the shell would, without globbing.
read -r -a demo_args <<<"${DEMO_ARGS:-}"
exec target/release/coupon-demo "${demo_args[@]}"
