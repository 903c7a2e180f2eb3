#!/usr/bin/env bash
# Runs one Apache Kafka broker in KRaft mode, as broker and controller in one JVM, on
# 127.0.0.1, in the foreground (exec: the JVM takes this process's pid, so a signal sent to it
# reaches the broker). Used by scripts/stack.sh (the local stack's broker on 9092, and the three
# nodes of KAFKA_MODE=cluster) and by the fault suite (brokers of its own per scenario, killed
# and restarted on their data).
#
#   scripts/kafka-broker.sh DIR PORT CONTROLLER_PORT                      one node, alone
#   scripts/kafka-broker.sh DIR PORT CONTROLLER_PORT NODE_ID VOTERS CLUSTER_ID
#                                                                         one node of a cluster
#
# VOTERS is the controller quorum, `1@127.0.0.1:19095,2@127.0.0.1:19096,3@127.0.0.1:19097`
# (every node's id and controller port; this node's NODE_ID among them), CLUSTER_ID the id
# every node of the cluster is formatted with (`kafka.tools.StorageTool random-uuid` prints
# one). A node alone is node 1 of a quorum of itself, formatted with a new cluster id.
#
# The replication follows the quorum's size: alone, every topic has one replica; in a cluster
# of three or more, the defaults a shop must run (docs/scale.md): internal topics (committed
# offsets, transactions) and topics created without a replication factor get 3 replicas and
# min.insync.replicas=2, so an acks=all write survives the loss of one broker and writes go on
# while one is missing. Unclean leader election stays off (Kafka's default).
#
# DIR holds server.properties (written on every start) and data/ (the log, formatted on the
# first start). The JVM's heap is explicit, KAFKA_HEAP_OPTS (-Xms512m -Xmx1g): on 2 cores and
# 24 GiB shared with MariaDB, Redis, both services and a load generator, the JVM's default (a
# quarter of the memory) would be far too much. KAFKA_ROOT is the installed broker
# (scripts/install-kafka.sh prints it; installed here when unset).
set -euo pipefail

case $# in
  3) dir=$1 port=$2 controller=$3 node=1 voters="1@127.0.0.1:$3" cluster_id="" ;;
  6) dir=$1 port=$2 controller=$3 node=$4 voters=$5 cluster_id=$6 ;;
  *)
    echo "usage: $0 DIR PORT CONTROLLER_PORT [NODE_ID VOTERS CLUSTER_ID]" >&2
    exit 2
    ;;
esac
grep -q "\(^\|,\)$node@127.0.0.1:$controller\(,\|$\)" <<<"$voters" ||
  { echo "$0: node $node@127.0.0.1:$controller is not among the voters $voters" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_ROOT="${KAFKA_ROOT:-$("$here/install-kafka.sh")}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

nodes=$(tr ',' '\n' <<<"$voters" | grep -c .)
if [ "$nodes" -ge 3 ]; then replicas=3 min_isr=2; else replicas=1 min_isr=1; fi

# group.initial.rebalance.delay.ms=0: a group's first rebalance is not held back 3 s waiting
# for more members (the tests start one consumer group each). Topics are created explicitly
# (scripts/stack.sh, the services' KAFKA_CREATE_TOPICS), never by a first produce to a
# misspelt name.
cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
default.replication.factor=$replicas
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
PROPS

classpath="$KAFKA_ROOT/libs/*"
if [ ! -f "$dir/data/meta.properties" ]; then
  [ -n "$cluster_id" ] || cluster_id="$(java -cp "$classpath" kafka.tools.StorageTool random-uuid)"
  java -cp "$classpath" kafka.tools.StorageTool format -t "$cluster_id" \
    -c "$dir/server.properties" >"$dir/format.log"
fi
# shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
exec java ${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_ROOT/log4j2.xml" \
  -cp "$classpath" kafka.Kafka "$dir/server.properties"
