#!/usr/bin/env bash
# The whole test suite (`make test`): unit tests plus black-box tests against the real
# MariaDB/MySQL, Redis and Kafka-protocol broker that `make up` started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each test creates its own database named coupon_test_<uuid>; drop what earlier runs left.
leftovers="$(mariadb -h127.0.0.1 -uroot -N -e "SHOW DATABASES LIKE 'coupon\\_test\\_%'" 2>/dev/null || true)"
for db in $leftovers; do
  mariadb -h127.0.0.1 -uroot -e "DROP DATABASE \`$db\`"
done
redis-cli -h 127.0.0.1 --scan --pattern 'test:*' 2>/dev/null | xargs -r -n 500 redis-cli -h 127.0.0.1 DEL >/dev/null || true

cargo test --workspace --locked "$@"
