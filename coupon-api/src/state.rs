//! State shared by every handler.

use coupon_core::admission::AdmissionStore;
use coupon_core::kafka::IssuePublisher;
use sqlx::MySqlPool;

use std::sync::Arc;

use coupon_core::domain::CouponId;

use crate::cache::PolicyCache;
use crate::code_jobs::CodeJobs;
use crate::routes::coupons::StatsView;

/// The state every handler sees: one shared [`Shared`] behind an `Arc`, so the per-request
/// clone axum's `State` extractor makes is one reference-count increment (cloning the handles
/// themselves cost several allocations per request on the issue path). Fields are reached
/// through `Deref`: `state.pool`, `state.cache`, ….
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
    /// MySQL pool (policies, issue rows).
    pub pool: MySqlPool,
    /// Redis admission state and policy copies.
    pub admission: AdmissionStore,
    /// Kafka producer of issue messages (`acks=all`).
    pub publisher: IssuePublisher,
    /// Local policy cache and sold-out marks.
    pub cache: PolicyCache,
    /// Default length of a checkout hold.
    pub reservation_hold: chrono::Duration,
    /// Per-coupon stats, each kept for one second.
    pub stats: moka::future::Cache<CouponId, Arc<StatsView>>,
    /// Runner of code generation jobs.
    pub code_jobs: CodeJobs,
    /// Where the issue messages are, for rebuilding lost admission sets.
    pub issue_log: coupon_core::recovery::IssueLog,
    /// Wait before a rebuild reads the log: the producer's message timeout.
    pub rebuild_settle: std::time::Duration,
    /// Coupons this instance is rebuilding now.
    pub rebuilding: std::sync::Mutex<std::collections::HashSet<CouponId>>,
    /// Circuit breaker of the issue path's Redis calls.
    pub breaker: crate::breaker::RedisBreaker,
    /// Per-user and per-address limits of the issue and redeem endpoints.
    pub rate_limits: crate::rate_limit::RateLimits,
    /// Checks bearer tokens ([`crate::auth`]).
    pub verifier: Arc<coupon_core::auth::TokenVerifier>,
}

/// The stats cache of [`AppState::stats`]: entries live one second.
pub fn stats_cache() -> moka::future::Cache<CouponId, Arc<StatsView>> {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(std::time::Duration::from_secs(1))
        .build()
}
