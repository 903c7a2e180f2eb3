//! Each API instance's cache of coupon policies, in front of the Redis policy copy and MySQL.
//! The invalidation broadcasts ([`crate::policies::invalidation`]) keep it fresh.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::domain::{CouponId, CouponPolicy};
use coupon_core::issue::admission::PolicyCopies;
use coupon_core::policies;
use coupon_core::telemetry::names;
use moka::future::Cache;
use sqlx::MySqlPool;

use crate::http::error::ApiError;

/// Registers `coupon_policy_cache_requests_total` for `hit` and `miss` at 0.
pub(crate) fn register_metrics() {
    for result in ["hit", "miss"] {
        metrics::counter!(names::POLICY_CACHE_REQUESTS, "result" => result).increment(0);
    }
}

/// Bounded, TTL-limited cache of coupon policies: moka first, then the Redis policy copy, then
/// MySQL (which refills Redis). Only found policies are cached.
#[derive(Clone)]
pub struct PolicyCache {
    policies: Cache<CouponId, Arc<CouponPolicy>>,
    redis: PolicyCopies,
    pool: MySqlPool,
}

impl PolicyCache {
    /// A cache of at most `capacity` policies (count), each trusted for `ttl`.
    pub fn new(capacity: u64, ttl: Duration, redis: PolicyCopies, pool: MySqlPool) -> Self {
        Self {
            policies: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            redis,
            pool,
        }
    }

    /// The policy of `coupon`. Concurrent misses for one coupon share one load (moka's
    /// `try_get_with`), so a drop's first second does not stampede MySQL.
    ///
    /// # Errors
    /// [`ApiError::CouponNotFound`] when no policy has this id; [`ApiError::Unavailable`] when
    /// neither Redis nor MySQL can answer.
    pub async fn get(&self, coupon: CouponId) -> Result<Arc<CouponPolicy>, ApiError> {
        if let Some(policy) = self.policies.get(&coupon).await {
            metrics::counter!(names::POLICY_CACHE_REQUESTS, "result" => "hit").increment(1);
            return Ok(policy);
        }
        metrics::counter!(names::POLICY_CACHE_REQUESTS, "result" => "miss").increment(1);
        self.policies
            .try_get_with(coupon, self.load(coupon))
            .await
            .map_err(|err| match Arc::try_unwrap(err) {
                Ok(err) => err,
                Err(shared) => match &*shared {
                    ApiError::CouponNotFound => ApiError::CouponNotFound,
                    other => {
                        ApiError::unavailable(anyhow::anyhow!("policy load failed: {other:?}"))
                    }
                },
            })
    }

    async fn load(&self, coupon: CouponId) -> Result<Arc<CouponPolicy>, ApiError> {
        match self.redis.get(coupon).await {
            Ok(Some(policy)) => return Ok(Arc::new(policy)),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, coupon_id = %coupon, "Redis policy read failed; asking MySQL")
            }
        }
        let policy = policies::find_policy(&self.pool, coupon)
            .await?
            .ok_or(ApiError::CouponNotFound)?;
        if let Err(err) = self.redis.store(&policy).await {
            tracing::warn!(%err, coupon_id = %coupon, "could not refill the Redis policy copy");
        }
        Ok(Arc::new(policy))
    }

    /// Forgets `coupon`'s policy (it changed).
    pub async fn invalidate(&self, coupon: CouponId) {
        self.policies.invalidate(&coupon).await;
    }

    /// Drops every cached policy (after a gap in the invalidation subscription, when
    /// broadcasts may have been missed). Sold-out marks stay: they never go stale.
    pub fn invalidate_all(&self) {
        self.policies.invalidate_all();
    }
}
