//! The public reads that would otherwise reach the stores on every request, served within a
//! stated staleness bound, so a poll flood during a drop (shoppers refreshing the coupon page,
//! a load balancer probing readiness) lands on each instance's memory, not on MySQL, Redis or
//! the broker:
//!
//! - `GET /api/v1/coupons/{coupon_id}`: the policy and its counts, at most
//!   [`PUBLIC_READ_TTL`] old (an unknown id's 404 too); concurrent misses for one coupon share
//!   one read (moka's `try_get_with`), so each instance reads MySQL and Redis at most once a
//!   second per coupon;
//! - `GET /ready`: the dependency probes, at most [`PUBLIC_READ_TTL`] old, one probe at a time
//!   ([`crate::operations::health::ReadinessCache`]);
//! - `GET /api/v1/coupons` (the search) has bounded input instead: `q` is at most
//!   [`crate::policies::routes::MAX_QUERY_CHARS`] characters and a page at most 100 items, each
//!   page one indexed query.
//!
//! The issue path never reads these caches: its answers come from the admission script.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::domain::CouponId;
use moka::future::Cache;

use crate::policies::routes::PolicyView;

/// Longest age of a cached public read (1 s).
pub const PUBLIC_READ_TTL: Duration = Duration::from_secs(1);

/// Most coupons whose public read is cached at once (count).
const POLICY_READS_MAX: u64 = 10_000;

/// The cache of the public policy reads; cheap to clone (clones share the cache).
#[derive(Clone)]
pub struct PolicyReads {
    /// `GET /api/v1/coupons/{id}`: the view, or `None` for a 404.
    pub policies: Cache<CouponId, Option<Arc<PolicyView>>>,
}

impl Default for PolicyReads {
    fn default() -> Self {
        Self {
            policies: Cache::builder()
                .max_capacity(POLICY_READS_MAX)
                .time_to_live(PUBLIC_READ_TTL)
                .build(),
        }
    }
}
