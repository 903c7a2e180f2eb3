#!/usr/bin/env bash
# `make monitor`: a Prometheus on 127.0.0.1:9090 with monitoring/prometheus.yml's rules and
# scrape jobs, pointed at the local services and scraping every second: coupon-api's metrics on
# 127.0.0.1:9464, coupon-consumer's on 127.0.0.1:9465 (the ports `make demo` gives them).
# Prometheus comes from Debian's package, unpacked into ~/.cache (scripts/prometheus.sh); its
# data lives in .local/monitor/ and goes with `down`. No Grafana: the dashboards' queries are
# checked against this Prometheus by monitoring/check_queries.py (`make monitor-check`).
#
#   scripts/monitor.sh up       start it (idempotent); prints its address
#   scripts/monitor.sh down     stop it (`make down` does too)
#   scripts/monitor.sh status
#
# Settings (env): PROMETHEUS_PORT (9090), STACK_DIR (.local/ in the repo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$here/.local}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
dir="$STACK_DIR/monitor"

log() { printf '[monitor] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The compose file's config, rewritten for this machine: the compose service names become
# 127.0.0.1, the intervals 1 s (a local drop lasts seconds), the rules file an absolute path.
local_config() {
  sed -e 's/^\(  scrape_interval:\) .*/\1 1s/' \
    -e 's/^\(  scrape_timeout:\) .*/\1 1s/' \
    -e 's/^\(  evaluation_interval:\) .*/\1 1s/' \
    -e 's/"coupon-api:9464"/"127.0.0.1:9464"/' \
    -e 's/"coupon-consumer:9465"/"127.0.0.1:9465"/' \
    -e "s/\"localhost:9090\"/\"127.0.0.1:$PROMETHEUS_PORT\"/" \
    -e "s|^  - alerts.yml|  - $here/monitoring/alerts.yml|" \
    "$here/monitoring/prometheus.yml"
}

up() {
  if port_open "$PROMETHEUS_PORT"; then
    log "something already listens on 127.0.0.1:$PROMETHEUS_PORT; leaving it"
    return 0
  fi
  # shellcheck source=scripts/prometheus.sh
  source "$here/scripts/prometheus.sh"
  local prometheus promtool
  prometheus=$(prometheus_tool prometheus)
  promtool=$(prometheus_tool promtool)
  mkdir -p "$dir"
  local_config >"$dir/prometheus.yml"
  # Every rewrite must have applied: a changed compose config must not leave a target behind.
  for want in 'scrape_interval: 1s' '"127.0.0.1:9464"' '"127.0.0.1:9465"' "$here/monitoring/alerts.yml"; do
    grep -qF "$want" "$dir/prometheus.yml" || { log "rewriting monitoring/prometheus.yml missed: $want"; return 1; }
  done
  "$promtool" check config "$dir/prometheus.yml" >/dev/null
  log "starting Prometheus on 127.0.0.1:$PROMETHEUS_PORT"
  nohup "$prometheus" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$dir/prometheus.log" 2>&1 &
  echo $! >"$dir/prometheus.pid"
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PROMETHEUS_PORT" && printf 'GET /-/ready HTTP/1.0\r\n\r\n' >&3 && grep -q ' 200 ' <&3) 2>/dev/null; then
      log "up: http://127.0.0.1:$PROMETHEUS_PORT (scraping 127.0.0.1:9464 and 127.0.0.1:9465 every second)"
      return 0
    fi
    kill -0 "$(cat "$dir/prometheus.pid")" 2>/dev/null || break
    sleep 0.2
  done
  log "Prometheus did not become ready"
  tail -20 "$dir/prometheus.log" >&2
  return 1
}

down() {
  local pidfile="$dir/prometheus.pid" pid
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      log "stopping Prometheus ($pid)"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  fi
  rm -rf "$dir/data"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if port_open "$PROMETHEUS_PORT"; then echo "127.0.0.1:$PROMETHEUS_PORT open"; else echo "127.0.0.1:$PROMETHEUS_PORT closed"; fi ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
