#!/usr/bin/env bash
# Installs the tansu Kafka-compatible broker (a crates.io package) once, into a cache
# directory outside the work tree, and prints the binary's path.
#
# Why tansu: no Docker engine and no Debian Kafka package exist on the target machines;
# tansu speaks the Kafka protocol over TCP, so the services use the same rdkafka code path
# as against Apache Kafka. The build takes ~15 minutes on 2 cores, hence the cache.
set -euo pipefail

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
TANSU_ROOT="${TANSU_ROOT:-$HOME/.cache/couponrush/tansu-$TANSU_VERSION}"
bin="$TANSU_ROOT/bin/tansu"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

echo "installing tansu $TANSU_VERSION into $TANSU_ROOT (about 15 minutes on 2 cores)" >&2
mkdir -p "$TANSU_ROOT"
CARGO_TARGET_DIR="$TANSU_ROOT/target" cargo install tansu \
  --version "$TANSU_VERSION" --locked --features dynostore,libsql \
  --root "$TANSU_ROOT" >&2
rm -rf "$TANSU_ROOT/target"
echo "$bin"
