//! Black-box tests of coupon-api over HTTP, against real MySQL/MariaDB, Redis and a
//! Kafka-protocol broker (`make up` starts them).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod admin;
mod auth;
mod codes;
mod coupons;
mod errors;
mod failures;
mod helpers;
mod idempotency;
mod instances;
mod issues;
mod openapi;
mod privileges;
mod queries;
mod rate_limits;
mod redemptions;
mod reservations;
