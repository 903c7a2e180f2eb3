#!/usr/bin/env bash
# The local stack without Docker: MariaDB, Redis and an Apache Kafka broker on 127.0.0.1.
# Idempotent: safe to run twice, and safe where the services already run.
#
#   scripts/stack.sh up     install what is missing (Debian packages; Kafka's jars from Maven
#                           Central), start, create the database, its user and the topics
#   scripts/stack.sh down   stop what `up` started (services found already running are left alone)
#   scripts/stack.sh status
#
# Settings (env): DB_NAME (coupon), DB_USER (coupon) and DB_PASSWORD (coupon): the services'
# own database account, with rights on `coupon` and the `coupon_*` databases of tests, demos
# and benchmarks only; KAFKA_PORT (9092; its controller listens on KAFKA_PORT+1), STACK_DIR
# (.local/ in the repo), KAFKA_MODE (single; `cluster` also starts a three-broker Kafka cluster
# on 127.0.0.1:19092-19094, controllers 19095-19097, KAFKA_CLUSTER_PORT the first port, its
# topics with 3 replicas and min.insync.replicas=2; see docs/scale.md),
# REDIS_MODE (single; `cluster` also starts a local Redis Cluster: 3 masters and 3 replicas on
# 127.0.0.1:7000-7005, REDIS_CLUSTER_PORT the first port; see docs/scale.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$here/.local}"
DB_NAME="${DB_NAME:-coupon}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_MODE="${KAFKA_MODE:-single}"
KAFKA_CLUSTER_PORT="${KAFKA_CLUSTER_PORT:-19092}"
REDIS_MODE="${REDIS_MODE:-single}"
REDIS_CLUSTER_PORT="${REDIS_CLUSTER_PORT:-7000}"
mkdir -p "$STACK_DIR"

log() { printf '[stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  log "$2 did not open port $1 within $3 s"
  return 1
}

# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

DB_USER="${DB_USER:-coupon}"
DB_PASSWORD="${DB_PASSWORD:-coupon}"
mysql_tcp() { mariadb -h127.0.0.1 -P3306 -u"$DB_USER" -p"$DB_PASSWORD" --connect-timeout=2 "$@"; }
# The runtime account of services started with MIGRATE_ON_START=false: data rights only, no DDL
# (docs/operations.md, "Database privileges"); the tests start coupon-api with it.
APP_DB_USER="${APP_DB_USER:-coupon_app}"
APP_DB_PASSWORD="${APP_DB_PASSWORD:-coupon_app}"

# db_account USER PASSWORD PRIVILEGES: makes USER (with PRIVILEGES on `$DB_NAME` and the
# `coupon_*` databases) unless it can already log in over TCP. Made through the Unix socket (a
# fresh Debian install lets root in there only), for each host name a TCP connection from this
# machine can carry: the server names a client on 127.0.0.1 `localhost` when /etc/hosts says
# so, `127.0.0.1` otherwise, `::1` over IPv6, so the login never depends on name resolution.
db_account() {
  local user=$1 password=$2 privileges=$3 host sql=""
  account_login() { mariadb -h127.0.0.1 -P3306 -u"$user" -p"$password" --connect-timeout=2 -e 'SELECT 1' >/dev/null 2>&1; }
  account_login && return 0
  log "creating the database user '$user' ($privileges on \`$DB_NAME\` and \`coupon\\_%\` only)"
  for host in localhost 127.0.0.1 ::1; do
    sql+="CREATE USER IF NOT EXISTS '$user'@'$host' IDENTIFIED BY '$password';
      ALTER USER '$user'@'$host' IDENTIFIED BY '$password';
      GRANT $privileges ON \`$DB_NAME\`.* TO '$user'@'$host';
      GRANT $privileges ON \`coupon\\_%\`.* TO '$user'@'$host';"
  done
  as_root mariadb -e "$sql FLUSH PRIVILEGES;"
  account_login || { log "'$user' still cannot log in over TCP"; return 1; }
}

mariadb_up() {
  if ! port_open 3306; then
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || { log "installing MariaDB"; apt_install mariadb-server mariadb-client; }
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld
    as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    wait_port 3306 MariaDB 60
    # The socket comes a moment after the port.
    for _ in $(seq 100); do as_root mariadb -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
    echo mariadb >>"$STACK_DIR/started"
  fi
  # The services' own account: its database and the `coupon_*` databases the tests, demos and
  # benchmarks create and drop, nothing else.
  db_account "$DB_USER" "$DB_PASSWORD" "ALL PRIVILEGES" || return 1
  # The runtime account of MIGRATE_ON_START=false: data rights only, no DDL.
  db_account "$APP_DB_USER" "$APP_DB_PASSWORD" "SELECT, INSERT, UPDATE, DELETE" || return 1
  mysql_tcp -e "CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
}

redis_up() {
  if ! port_open 6379; then
    command -v redis-server >/dev/null || { log "installing Redis"; apt_install redis-server; }
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    # Persistence off, as on the development machines; see README "What exactness relies on".
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/couponrush.log
    wait_port 6379 Redis 30
    echo redis >>"$STACK_DIR/started"
  fi
}

cluster_ports() { seq "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 5)); }

# Six redis-server processes in cluster mode, each in its own directory (nodes.conf lives
# there), then `redis-cli --cluster create` once. cluster-node-timeout 1000 ms: a killed master
# is replaced by its replica within about 2 s (the chaos suite kills one).
cluster_up() {
  command -v redis-server >/dev/null || { log "installing Redis"; apt_install redis-server; }
  local port dir
  for port in $(cluster_ports); do
    port_open "$port" && continue
    dir="$STACK_DIR/redis-cluster/$port"
    mkdir -p "$dir"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --save "" --appendonly no --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
    wait_port "$port" "Redis Cluster node" 30
  done
  if [ "$(redis-cli -p "$REDIS_CLUSTER_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')" != ok ]; then
    local nodes=()
    for port in $(cluster_ports); do nodes+=("127.0.0.1:$port"); done
    if [ "$(redis-cli -p "$REDIS_CLUSTER_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
      log "creating the Redis Cluster (3 masters, 3 replicas) on ${nodes[*]}"
      redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$STACK_DIR/redis-cluster/create.log"
    fi
    local i
    for ((i = 0; i < 300; i++)); do
      [ "$(redis-cli -p "$REDIS_CLUSTER_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')" = ok ] && break
      sleep 0.1
    done
  fi
  redis-cli --cluster check "127.0.0.1:$REDIS_CLUSTER_PORT" >/dev/null ||
    { log "the Redis Cluster on $REDIS_CLUSTER_PORT is not healthy"; redis-cli --cluster check "127.0.0.1:$REDIS_CLUSTER_PORT" >&2; return 1; }
  # cluster_state:ok comes before the replicas' first sync; until then a WAIT 1 times out.
  local synced
  for ((i = 0; i < 300; i++)); do
    synced=0
    for port in $(cluster_ports); do
      redis-cli -p "$port" info replication | grep -q 'master_link_status:up' && synced=$((synced + 1))
    done
    [ "$synced" -ge 3 ] && return 0
    sleep 0.1
  done
  log "the Redis Cluster's replicas did not sync within 30 s"
  return 1
}

cluster_down() {
  local port
  for port in $(cluster_ports); do
    [ -f "$STACK_DIR/redis-cluster/$port/redis.pid" ] || continue
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$STACK_DIR/redis-cluster/$port/redis.pid")" 2>/dev/null || true
  done
  # A cluster is re-created from scratch next time: the nodes' state files go with it.
  [ -d "$STACK_DIR/redis-cluster" ] && log "stopping the Redis Cluster" && rm -rf "$STACK_DIR/redis-cluster"
  return 0
}

# The topics of the default settings: the issue topic with 12 partitions
# (KAFKA_ISSUE_PARTITIONS), its dead-letter topic, payments and events (docs/configuration.md).
KAFKA_TOPICS="coupon-issues:12 coupon-issues-dlq:1 payments:3 coupon.events:3"

# The three nodes of KAFKA_MODE=cluster: node i (1-3) listens on KAFKA_CLUSTER_PORT+i-1 and its
# controller on KAFKA_CLUSTER_PORT+i+2, so 19092-19094 and 19095-19097 by default, none of
# them the single broker's.
cluster_nodes() { seq 1 3; }
cluster_port() { echo $((KAFKA_CLUSTER_PORT + $1 - 1)); }
cluster_controller() { echo $((KAFKA_CLUSTER_PORT + $1 + 2)); }
cluster_bootstrap() {
  local i list=()
  for i in $(cluster_nodes); do list+=("127.0.0.1:$(cluster_port "$i")"); done
  (IFS=,; echo "${list[*]}")
}

# listener PORT: the pid of the process listening on PORT (iproute2's ss), empty when none.
listener() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }

# ours PORT PIDFILE: what listens on PORT is the broker this script started (its pid file), not
# merely some process with the port open.
ours() { [ -f "$2" ] && [ "$(listener "$1")" = "$(cat "$2")" ]; }

kafka_topics() { # BOOTSTRAP TopicCommand-args...
  local bootstrap=$1
  shift
  java -cp "$KAFKA_ROOT/libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@"
}

# start_broker NAME DIR PORT CONTROLLER_PORT [NODE_ID VOTERS CLUSTER_ID]: starts
# scripts/kafka-broker.sh in the background (pid file DIR/broker.pid, log DIR/broker.log)
# unless the broker started here already listens; refuses a port held by anything else.
start_broker() {
  local name=$1 dir=$2 port=$3 pid
  shift 2
  if port_open "$port" && ! ours "$port" "$dir/broker.pid"; then
    pid="$(listener "$port")"
    log "127.0.0.1:$port is held by another process (pid ${pid:-unknown}: $(ps -o args= -p "${pid:-0}" 2>/dev/null | cut -c1-120)), not the $name this stack started; stop it or change its port"
    return 1
  fi
  ours "$port" "$dir/broker.pid" && return 0
  mkdir -p "$dir"
  log "starting Apache Kafka $(cat "$KAFKA_ROOT/installed") (KRaft, broker and controller) as the $name on 127.0.0.1:$port"
  nohup "$here/scripts/kafka-broker.sh" "$dir" "$@" >"$dir/broker.log" 2>&1 &
  echo $! >"$dir/broker.pid"
}

# wait_broker NAME DIR PORT: the broker started here listens on PORT (90 s at most; fails at
# once when it exited).
wait_broker() {
  local i pid
  pid="$(cat "$2/broker.pid")"
  for ((i = 0; i < 900; i++)); do
    ours "$3" "$2/broker.pid" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  log "the $1 (pid $pid) does not listen on 127.0.0.1:$3; the end of $2/broker.log:"
  tail -20 "$2/broker.log" >&2
  return 1
}

# create_topics BOOTSTRAP REPLICAS [MIN_INSYNC_REPLICAS]: the topics of KAFKA_TOPICS that are
# missing.
create_topics() {
  local bootstrap=$1 replicas=$2 existing topic config=()
  [ -n "${3:-}" ] && config=(--config "min.insync.replicas=$3")
  existing="$(kafka_topics "$bootstrap" --list)"
  for topic in $KAFKA_TOPICS; do
    grep -qx "${topic%%:*}" <<<"$existing" && continue
    log "creating topic ${topic%%:*} (${topic##*:} partitions, $replicas replica(s)${3:+, min.insync.replicas=$3})"
    kafka_topics "$bootstrap" --create --if-not-exists --topic "${topic%%:*}" \
      --partitions "${topic##*:}" --replication-factor "$replicas" "${config[@]}" >/dev/null
  done
}

kafka_up() {
  start_broker broker "$STACK_DIR/kafka" "$KAFKA_PORT" $((KAFKA_PORT + 1))
  wait_broker broker "$STACK_DIR/kafka" "$KAFKA_PORT"
  # One broker, so one replica each: docs/scale.md says what production needs.
  create_topics "127.0.0.1:$KAFKA_PORT" 1
}

# The three-node cluster: every node is broker and controller (a quorum of three voters, so
# the cluster's metadata survives one node lost, not two), formatted with one cluster id kept
# in $STACK_DIR/kafka-cluster/cluster-id. Heap per node KAFKA_CLUSTER_HEAP_OPTS
# (-Xms256m -Xmx512m: three JVMs beside the single broker on this machine's 24 GiB). Topics
# with 3 replicas and min.insync.replicas=2; up returns once every partition of every topic
# has its three replicas in sync.
kafka_cluster_up() {
  local base="$STACK_DIR/kafka-cluster" i voters=() id
  mkdir -p "$base"
  for i in $(cluster_nodes); do voters+=("$i@127.0.0.1:$(cluster_controller "$i")"); done
  [ -s "$base/cluster-id" ] || java -cp "$KAFKA_ROOT/libs/*" kafka.tools.StorageTool random-uuid >"$base/cluster-id"
  id="$(cat "$base/cluster-id")"
  for i in $(cluster_nodes); do
    KAFKA_HEAP_OPTS="${KAFKA_CLUSTER_HEAP_OPTS:--Xms256m -Xmx512m}" \
      start_broker "cluster's node $i" "$base/$i" "$(cluster_port "$i")" \
      "$(cluster_controller "$i")" "$i" "$(IFS=,; echo "${voters[*]}")" "$id"
  done
  for i in $(cluster_nodes); do wait_broker "cluster's node $i" "$base/$i" "$(cluster_port "$i")"; done
  local bootstrap
  bootstrap="$(cluster_bootstrap)"
  # The port opens before the quorum has elected a leader; the first listing waits for it.
  for ((i = 0; i < 60; i++)); do kafka_topics "$bootstrap" --list >/dev/null 2>&1 && break; sleep 1; done
  create_topics "$bootstrap" 3 2
  local lagging
  for ((i = 0; i < 120; i++)); do
    lagging="$(kafka_topics "$bootstrap" --describe --under-replicated-partitions 2>&1)" &&
      [ -z "$lagging" ] && return 0
    sleep 1
  done
  log "partitions of the cluster still lack in-sync replicas after 120 s:"
  printf '%s\n' "$lagging" >&2
  return 1
}

# stop_brokers NAME GRACE DIR...: SIGTERM to each broker started here (the controlled shutdown
# flushes its logs and closes them cleanly), all at once, then waits GRACE seconds for them and
# SIGKILLs what is left. The last node of a cluster cannot finish its controlled shutdown once
# the other two controllers are gone (no quorum to acknowledge it), so it is killed after the
# grace; its log is recovered at its next start, and nothing it acknowledged is lost (the
# data is in the files, a killed process loses no page cache).
stop_brokers() {
  local name=$1 grace=$2 dir pids=() pid alive
  shift 2
  for dir in "$@"; do
    [ -f "$dir/broker.pid" ] || continue
    pid="$(cat "$dir/broker.pid")"
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$dir/broker.pid"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  log "stopping the $name (${pids[*]})"
  for _ in $(seq $((grace * 10))); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && { log "broker $pid did not stop within $grace s; killing it"; kill -9 "$pid" 2>/dev/null || true; }
  done
  return 0
}

# kafka_status NAME PORT DIR: one line on what listens on PORT.
kafka_status() {
  if ours "$2" "$3/broker.pid"; then
    echo "127.0.0.1:$2 open: $1 (pid $(cat "$3/broker.pid"))"
  elif port_open "$2"; then
    echo "127.0.0.1:$2 open: another process (pid $(listener "$2")), not $1"
  else
    echo "127.0.0.1:$2 closed"
  fi
}

case "${1:-}" in
  up)
    command -v mariadb >/dev/null || { log "installing the MariaDB client"; apt_install mariadb-client; }
    mariadb_up
    redis_up
    [ "$REDIS_MODE" = cluster ] && cluster_up
    KAFKA_ROOT="$("$here/scripts/install-kafka.sh")"
    export KAFKA_ROOT
    command -v ss >/dev/null || { log "installing iproute2 (ss)"; apt_install iproute2; }
    kafka_up
    [ "$KAFKA_MODE" = cluster ] && kafka_cluster_up
    log "up: MariaDB 127.0.0.1:3306 (database $DB_NAME, user $DB_USER), Redis 127.0.0.1:6379, Kafka 127.0.0.1:$KAFKA_PORT"
    [ "$KAFKA_MODE" = cluster ] && log "up: Kafka cluster of 3 brokers $(cluster_bootstrap) (KAFKA_MODE=cluster KAFKA_BROKERS=$(cluster_bootstrap)), 3 replicas, min.insync.replicas=2"
    [ "$REDIS_MODE" = cluster ] && log "up: Redis Cluster 127.0.0.1:$REDIS_CLUSTER_PORT-$((REDIS_CLUSTER_PORT + 5)) (REDIS_MODE=cluster REDIS_URL=redis://127.0.0.1:$REDIS_CLUSTER_PORT)"
    true
    ;;
  down)
    stop_brokers "Kafka cluster" 10 "$STACK_DIR"/kafka-cluster/[0-9]
    stop_brokers "Kafka broker" 30 "$STACK_DIR/kafka"
    cluster_down
    if [ -f "$STACK_DIR/started" ]; then
      if grep -qx redis "$STACK_DIR/started"; then log "stopping Redis"; redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true; fi
      if grep -qx mariadb "$STACK_DIR/started"; then log "stopping MariaDB"; as_root mariadb-admin shutdown >/dev/null 2>&1 || true; fi
      rm -f "$STACK_DIR/started"
    fi
    log "down"
    ;;
  status)
    for p in 3306 6379 $(cluster_ports); do
      if port_open "$p"; then echo "127.0.0.1:$p open"; else echo "127.0.0.1:$p closed"; fi
    done
    kafka_status "the Kafka broker of this stack" "$KAFKA_PORT" "$STACK_DIR/kafka"
    for i in $(cluster_nodes); do
      kafka_status "node $i of this stack's Kafka cluster" "$(cluster_port "$i")" "$STACK_DIR/kafka-cluster/$i"
    done
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
