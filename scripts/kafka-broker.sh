#!/usr/bin/env bash
# Runs one Apache Kafka broker in KRaft mode, as broker and its own controller, on 127.0.0.1,
# in the foreground (exec: the JVM takes this process's pid, so a signal sent to it reaches
# the broker). Used by scripts/stack.sh (the local stack's broker on 9092) and by the fault
# suite (a broker of its own per scenario, killed and restarted on its data).
#
#   scripts/kafka-broker.sh DIR PORT CONTROLLER_PORT
#
# DIR holds server.properties (written on every start) and data/ (the log, formatted on the
# first start with a new cluster id). The JVM's heap is explicit, KAFKA_HEAP_OPTS
# (-Xms512m -Xmx1g): on 2 cores and 24 GiB shared with MariaDB, Redis, both services and a
# load generator, the JVM's default (a quarter of the memory) would be far too much.
# KAFKA_ROOT is the installed broker (scripts/install-kafka.sh prints it; installed here when
# unset).
set -euo pipefail

[ $# = 3 ] || { echo "usage: $0 DIR PORT CONTROLLER_PORT" >&2; exit 2; }
dir=$1 port=$2 controller=$3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_ROOT="${KAFKA_ROOT:-$("$here/install-kafka.sh")}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

# One node, so every internal topic has one replica. group.initial.rebalance.delay.ms=0: a
# group's first rebalance is not held back 3 s waiting for more members (the tests start one
# consumer group each). Topics are created explicitly (scripts/stack.sh, the services'
# KAFKA_CREATE_TOPICS), never by a first produce to a misspelt name.
cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS

classpath="$KAFKA_ROOT/libs/*"
if [ ! -f "$dir/data/meta.properties" ]; then
  java -cp "$classpath" kafka.tools.StorageTool format \
    -t "$(java -cp "$classpath" kafka.tools.StorageTool random-uuid)" \
    -c "$dir/server.properties" >"$dir/format.log"
fi
# shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
exec java ${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_ROOT/log4j2.xml" \
  -cp "$classpath" kafka.Kafka "$dir/server.properties"
