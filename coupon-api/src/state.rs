//! State shared by every handler.

use coupon_core::issue::admission::AdmissionStore;
use coupon_core::store::kafka::IssuePublisher;
use sqlx::MySqlPool;

use std::sync::Arc;

use crate::cache::{AdmittedHere, PolicyCache, SoldOutMarks};
use crate::code_jobs::CodeJobs;
use crate::rebuild::Rebuilds;
use crate::stats::StatsCache;

/// The state every handler sees: one shared [`Shared`] behind an `Arc`, so the per-request
/// clone axum's `State` extractor makes is one reference-count increment (cloning the handles
/// themselves cost several allocations per request on the issue path). Fields are reached
/// through `Deref`: `state.pool`, `state.policies`, ….
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the shared handles.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles shared by every handler: pools, connections, caches and settings.
pub struct Shared {
    /// MySQL pool (policies, issue rows, reads).
    pub pool: MySqlPool,
    /// MySQL pool of the order routes alone (redeem, cancel, reserve, confirm, release, and
    /// their idempotency keys), `DATABASE_ORDER_MAX_CONNECTIONS` connections: the shop's
    /// checkout never waits behind the public and user reads.
    pub order_pool: MySqlPool,
    /// Redis admission state and policy copies.
    pub admission: AdmissionStore,
    /// Kafka producer of issue messages (`acks=all`).
    pub publisher: IssuePublisher,
    /// Local policy cache.
    pub policies: PolicyCache,
    /// The sell-outs the consumer announced, with their holders.
    pub sold_out: SoldOutMarks,
    /// The admissions this instance made and published.
    pub admitted_here: AdmittedHere,
    /// Default length of a checkout hold.
    pub reservation_hold: chrono::Duration,
    /// Per-coupon stats, each kept for one second.
    pub stats: StatsCache,
    /// The public policy reads and the readiness report, each kept for one second.
    pub public_reads: crate::public_reads::PublicReads,
    /// Runner of code generation jobs.
    pub code_jobs: CodeJobs,
    /// Rebuilds of lost admission state started here.
    pub rebuilds: Rebuilds,
    /// Clears the pending marks of acknowledged admissions, in batches.
    pub settler: crate::settle::Settler,
    /// Circuit breaker of the issue path's Redis calls.
    pub breaker: crate::breaker::RedisBreaker,
}
