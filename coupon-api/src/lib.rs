//! `coupon-api`: the HTTP front of couponrush.
//!
//! Coupon policies (`POST /api/v1/coupons`, `GET /api/v1/coupons/{coupon_id}`) and the FCFS
//! issue path (`POST /api/v1/coupons/{coupon_id}/issues`): local policy cache → one atomic Redis
//! Lua script → Kafka publish acknowledged by the broker → `202 Accepted`. See
//! [`routes::issues`] for the steps, [`auth`] for who may call what, and
//! [`startup::Application`] to run it.

pub mod auth;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod code_jobs;
pub mod config;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod invalidation;
pub mod openapi;
pub mod public_reads;
pub mod rate_limit;
pub mod rebuild;
pub mod request_id;
pub mod routes;
pub mod serve;
pub mod settle;
pub mod startup;
pub mod state;
pub mod stats;
