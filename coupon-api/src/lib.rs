//! `coupon-api`: the HTTP front of couponrush.
//!
//! Coupon policies (`POST /api/v1/coupons`, `GET /api/v1/coupons/{coupon_id}`) and the FCFS
//! issue path (`POST /api/v1/coupons/{coupon_id}/issues`): local policy cache → one atomic Redis
//! Lua script → Kafka publish acknowledged by the broker → `202 Accepted`. See
//! [`issue::routes`] for the steps, [`http::auth`] for who may call what, and
//! [`startup::Application`] to run it.
//!
//! One folder per feature, each with its router, handlers and the state only it uses:
//! [`issue`], [`policies`], [`codes`], [`orders`] (the order service's routes), [`users`] (a
//! user's own coupons) and [`operations`] (probes, reconciliation). [`http`] holds what every
//! route shares; [`startup`], [`serve`], [`state`], [`config`] and [`cli`] build and run the
//! whole.

pub mod cli;
pub mod codes;
pub mod config;
pub mod http;
pub mod issue;
pub mod operations;
pub mod orders;
pub mod policies;
pub mod serve;
pub mod startup;
pub mod state;
pub mod tasks;
pub mod users;
