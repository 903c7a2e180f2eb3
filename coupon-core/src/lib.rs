//! `coupon-core`: what coupon-api and coupon-consumer share.
//!
//! - [`issue`]: issuance: the Redis admission, the issue message, its persistence, recovery
//!   after Redis lost state, reconciliation;
//! - [`codes`]: code coupons: topics, generation, redeem by code, bulk changes, search,
//!   archival, generation jobs;
//! - [`store`]: the MySQL pool and migrations, the Kafka clients, the Redis connection, and
//!   the start-up both services share;
//! - [`domain`]: identifiers, the coupon policy and its validation; [`policies`]: the policy
//!   repository;
//! - [`redemption`]: using an issued coupon for an order (redeem, reserve, confirm, release),
//!   and cancelling that;
//! - [`events`]: coupon events for notification services (transactional outbox);
//!   [`expiry`]: the expiring-soon and expiry jobs;
//! - [`queries`]: a user's coupons, policy search and per-coupon counts;
//! - [`idempotency`]: idempotency keys of state-changing requests; [`purge`]: deleting keys,
//!   events and jobs past their retention;
//! - [`auth`]: bearer tokens (JWT): claims, roles, checking and minting;
//! - [`config`], [`telemetry`] and [`shutdown`]: typed configuration, tracing, metrics and
//!   the shutdown signal.
//!
//! This crate knows nothing of HTTP or of the consumer loop.

pub mod auth;
pub mod codes;
pub mod config;
pub mod domain;
pub mod events;
pub mod expiry;
pub mod idempotency;
pub mod issue;
pub mod policies;
pub mod purge;
pub mod queries;
pub mod redemption;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
