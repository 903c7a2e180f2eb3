//! coupon-consumer against a real Kafka-protocol broker, MySQL/MariaDB and Redis: one module
//! per loop of the consumer (`coupon_consumer::Application`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod helpers;
mod issues;
mod outbox;
mod payments;
mod purge;
mod reconcile;
mod shutdown;
mod sweeper;
