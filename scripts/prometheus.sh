# Sourced by test.sh and monitor.sh: Prometheus's tools from Debian's `prometheus` package,
# unpacked into the cache rather than installed (installing it would also start a Prometheus
# system service).

# prometheus_tool NAME: prints the path of NAME (`promtool` or `prometheus`): the one on PATH,
# else the package's, fetched into ~/.cache/couponrush/prometheus on first use.
prometheus_tool() {
  local name=$1 found cache work
  found=$(command -v "$name" || true)
  if [ -n "$found" ]; then
    echo "$found"
    return
  fi
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/couponrush/prometheus"
  if [ ! -x "$cache/usr/bin/$name" ]; then
    echo "[prometheus] fetching Debian's package prometheus into $cache" >&2
    # shellcheck source=scripts/apt.sh
    source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
    work=$(mktemp -d)
    (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 || { as_root apt-get update -qq && apt-get download prometheus >/dev/null; }; })
    mkdir -p "$cache"
    dpkg-deb -x "$work"/prometheus_*.deb "$cache"
    rm -rf "$work"
  fi
  echo "$cache/usr/bin/$name"
}
