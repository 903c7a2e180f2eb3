//! `coupon-core`: what coupon-api and coupon-consumer share.
//!
//! - [`codes`]: code coupons (topics, codes, redeem by code, bulk changes, archival);
//! - [`code_jobs`]: resumable code generation jobs;
//! - [`domain`]: identifiers, the coupon policy and its validation;
//! - [`auth`]: bearer tokens (JWT): claims, roles, checking and minting;
//! - [`admission`]: the atomic Redis admission script and the per-coupon Redis keys;
//! - [`message`]: the issue message carried by Kafka;
//! - [`events`]: coupon events for notification services (transactional outbox);
//! - [`kafka`]: the `acks=all` producer and topic set-up;
//! - [`db`] and [`repository`]: the MySQL pool, migrations and queries;
//! - [`redemption`]: using an issued coupon for an order, and cancelling that;
//! - [`idempotency`]: idempotency keys of state-changing requests;
//! - [`reconcile`]: comparing admissions, messages in flight and rows, and repairing them;
//! - [`recovery`]: rebuilding a coupon's Redis admission state after Redis lost it;
//! - [`queries`]: a user's coupons, policy search and per-coupon counts;
//! - [`stores`]: the start-up both services share;
//! - [`config`], [`telemetry`] and [`shutdown`]: typed configuration, tracing, metrics and
//!   the shutdown signal.
//!
//! This crate knows nothing of HTTP or of the consumer loop.

pub mod admission;
pub mod auth;
pub mod code_jobs;
pub mod codes;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod idempotency;
pub mod kafka;
pub mod message;
pub mod queries;
pub mod reconcile;
pub mod recovery;
pub mod redemption;
pub mod repository;
pub mod shutdown;
pub mod stores;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
