#!/usr/bin/env bash
# Installs Apache Kafka's broker (the jars of kafka_2.13 and kafka-tools with their runtime
# dependencies, from Maven Central) once, into a cache directory outside the work tree, and
# prints that directory: DIR/libs/*.jar, DIR/log4j2.xml. Installs Java 17 and Maven from
# Debian's packages where they are missing.
#
# The version is pinned in one place, scripts/kafka/pom.xml (<kafka.version>);
# docker-compose.yml names the same one (scripts/test.sh checks that they agree).
# Settings (env): KAFKA_ROOT (~/.cache/couponrush/kafka-<version>).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/apt.sh
source "$here/apt.sh"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
KAFKA_ROOT="${KAFKA_ROOT:-$HOME/.cache/couponrush/kafka-$KAFKA_VERSION}"

log() { printf '[kafka] %s\n' "$*" >&2; }

command -v java >/dev/null || { log "installing Java 17"; apt_install openjdk-17-jre-headless; }

# A complete install ends with the marker, written last: an interrupted copy is redone.
if [ ! -f "$KAFKA_ROOT/installed" ]; then
  command -v mvn >/dev/null || { log "installing Maven"; apt_install maven; }
  log "installing Apache Kafka $KAFKA_VERSION's broker from Maven Central into $KAFKA_ROOT"
  rm -rf "$KAFKA_ROOT"
  mkdir -p "$KAFKA_ROOT"
  mvn -B -f "$here/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_ROOT/libs" >"$KAFKA_ROOT/mvn.log" 2>&1 ||
    { tail -30 "$KAFKA_ROOT/mvn.log" >&2; log "Maven failed; its log: $KAFKA_ROOT/mvn.log"; exit 1; }
  ls "$KAFKA_ROOT"/libs/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null
  echo "$KAFKA_VERSION" >"$KAFKA_ROOT/installed"
fi
# The logging configuration follows the repository (cheap to copy every time).
cp "$here/kafka/log4j2.xml" "$KAFKA_ROOT/log4j2.xml"
echo "$KAFKA_ROOT"
