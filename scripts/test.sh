#!/usr/bin/env bash
# The whole test suite (`make test`): unit tests plus black-box tests against the real
# MariaDB/MySQL, Redis and Apache Kafka broker that `make up` started, run twice: on the
# single Redis node, then on a local Redis Cluster (docs/scale.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# docker-compose.yml's broker is the version `make up` runs (pinned in scripts/kafka/pom.xml;
# the install records it).
KAFKA_ROOT="$(scripts/install-kafka.sh)"
kafka_version="$(cat "$KAFKA_ROOT/installed")"
compose_images="$(grep -o 'apache/kafka:[^ ]*' docker-compose.yml | sort -u)"
if [ "$compose_images" != "apache/kafka:$kafka_version" ]; then
  echo "[test] docker-compose.yml runs ${compose_images//$'\n'/ }, make up runs Apache Kafka $kafka_version" >&2
  exit 1
fi

# Each test creates its own database named coupon_test_<uuid>; drop what earlier runs left.
leftovers="$(mariadb -h127.0.0.1 -ucoupon -pcoupon -N -e "SHOW DATABASES LIKE 'coupon\\_test\\_%'" 2>/dev/null || true)"
for db in $leftovers; do
  mariadb -h127.0.0.1 -ucoupon -pcoupon -e "DROP DATABASE \`$db\`"
done
# And its own topics (issues-<uuid>, dlq-<uuid>, payments-<uuid>, events-<uuid>): a broker
# keeping every earlier run's thousands of partitions would start and answer ever slower.
java -cp "$KAFKA_ROOT/libs/*" org.apache.kafka.tools.TopicCommand \
  --bootstrap-server "${KAFKA_BROKERS:-127.0.0.1:9092}" --delete --if-exists \
  --topic '(issues|dlq|payments|events)-[0-9a-f]{32}' >/dev/null
redis-cli -h 127.0.0.1 --scan --pattern 'test:*' 2>/dev/null | xargs -r -n 500 redis-cli -h 127.0.0.1 DEL >/dev/null || true

# The Prometheus config and alert rules must load and behave (promtool from Debian's prometheus
# package, unpacked into ~/.cache: scripts/prometheus.sh).
# shellcheck source=scripts/prometheus.sh
source scripts/prometheus.sh
promtool=$(prometheus_tool promtool)
"$promtool" check config monitoring/prometheus.yml
# Each alert has a case that fires it and one that must not (promtool's rule unit tests).
"$promtool" test rules monitoring/alerts_test.yml

echo "[test] the suite against the single Redis node (127.0.0.1:6379)"
cargo test --workspace --locked "$@"

# Again against a Redis Cluster (3 masters, 3 replicas on 127.0.0.1:7000-7005, started here
# where missing): every Redis-touching test (admission, the issue race, rebuild,
# reconciliation, invalidation, the breaker) then runs on both engines. Tests that stop or
# freeze a Redis of their own (testing::OwnRedisDeployment) start one node in the first run
# and a six-node cluster in the second.
cluster_port="${REDIS_CLUSTER_PORT:-7000}"
REDIS_MODE=cluster scripts/stack.sh up
for port in $(redis-cli -p "$cluster_port" cluster nodes | awk '/master/ && !/fail/ { split($2, a, "[:@]"); print a[2] }'); do
  redis-cli -p "$port" --scan --pattern 'test:*' | xargs -r -n 500 redis-cli -p "$port" DEL >/dev/null || true
done
echo "[test] the suite against the Redis Cluster (REDIS_MODE=cluster, 127.0.0.1:7000)"
REDIS_MODE=cluster REDIS_URL="redis://127.0.0.1:$cluster_port" cargo test --workspace --locked "$@"
