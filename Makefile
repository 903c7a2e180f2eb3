# couponrush: the two commands are `make demo` (the main job) and `make test` (the suite).
# Both bring the local stack up first; see scripts/stack.sh.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: up down status demo test chaos fuzz bench bench-codes build fmt lint migrate

## up: install (where missing) and start MariaDB, Redis and the tansu Kafka broker
up:
	scripts/stack.sh up

## down: stop what `make up` started
down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

## demo: build and start both services, race 10,000 requests for 500 coupons, verify
demo: up
	scripts/demo.sh

## test: the whole test suite against the real local stack
test: up
	scripts/test.sh

## chaos: the fault-injection suite: six faults, each injected into a race of 10,000 requests
## from 5,000 users for 500 units; prints the counts (about 8 minutes); see scripts/chaos.sh
chaos: up
	scripts/chaos.sh

## fuzz: schemathesis against a running coupon-api from its own OpenAPI document, at least
## 100,000 requests (FUZZ_REQUESTS); fails on any 5xx or error body without a "code" (about
## 14 minutes); see fuzz/README.md
fuzz: up
	scripts/fuzz.sh

## bench: the issue path against this machine's own limits (about 10 minutes); writes
## bench/results/issue.{json,md}
bench: up
	scripts/bench.sh

## bench-codes: code generation rate, then redeem and search latency at 10,000,000 codes
## before and after archiving (about half an hour); writes bench/results/codes.{json,md}
bench-codes: up
	scripts/bench-codes.sh

build:
	$(CARGO) build --workspace --locked

migrate: up
	$(CARGO) run --locked -p coupon-api -- migrate

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
