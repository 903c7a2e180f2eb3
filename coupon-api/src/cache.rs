//! What each API instance keeps in memory for the issue path, in three caches:
//!
//! - [`PolicyCache`]: coupon policies, in front of the Redis copy and MySQL;
//! - [`SoldOutMarks`]: the sell-outs the consumer broadcast, each with a copy of the coupon's
//!   holders where it fits;
//! - [`AdmittedHere`]: the admissions this instance made and published.
//!
//! The invalidation broadcasts ([`crate::invalidation`]) keep the first two fresh.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::domain::{CouponId, CouponPolicy, UserId};
use coupon_core::issue::admission::{AdmissionStore, StockShards};
use coupon_core::policies;
use coupon_core::telemetry::names;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use sqlx::MySqlPool;

use crate::error::ApiError;

/// How long a sold-out mark is kept (a sold-out coupon stays sold out; the bound only frees
/// memory).
const SOLD_OUT_TTL: Duration = Duration::from_secs(3600);

/// How long a remembered admission is kept without being asked about again (it stays true;
/// the bound only frees memory).
const ADMITTED_TTI: Duration = Duration::from_secs(600);

/// Registers `coupon_policy_cache_requests_total` for `hit` and `miss` at 0.
pub(crate) fn register_metrics() {
    for result in ["hit", "miss"] {
        metrics::counter!(names::POLICY_CACHE_REQUESTS, "result" => result).increment(0);
    }
}

/// The users holding a sold-out coupon (sorted, distinct user ids).
///
/// Exact once the consumer has announced the sell-out: MySQL then holds `total_quantity`
/// rows, every row has an admission (docs/invariants.md 4) and the set holds at most
/// `total_quantity` members (1), so the set equals the rows, and a full set admits nobody
/// more. It only changes if Redis loses it, and the rebuild restores the same members.
#[derive(Debug)]
pub struct Holders(Vec<i64>);

impl Holders {
    /// Sorts and de-duplicates `members` (SSCAN may return one twice).
    pub fn new(mut members: Vec<i64>) -> Self {
        members.sort_unstable();
        members.dedup();
        Self(members)
    }

    /// Whether `user` holds the coupon.
    pub fn contains(&self, user: UserId) -> bool {
        self.0.binary_search(&user.get()).is_ok()
    }

    /// Number of holders (count).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nobody holds it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A sold-out mark: with the coupon's [`Holders`] once they were copied, `None` before that or
/// when the set was too large to copy.
pub type SoldOut = Option<Arc<Holders>>;

/// Bounded, TTL-limited cache of coupon policies: moka first, then the Redis policy copy, then
/// MySQL (which refills Redis). Only found policies are cached.
#[derive(Clone)]
pub struct PolicyCache {
    policies: Cache<CouponId, Arc<CouponPolicy>>,
    redis: AdmissionStore,
    pool: MySqlPool,
}

impl PolicyCache {
    /// A cache of at most `capacity` policies (count), each trusted for `ttl`.
    pub fn new(capacity: u64, ttl: Duration, redis: AdmissionStore, pool: MySqlPool) -> Self {
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
        match self.redis.policy(coupon).await {
            Ok(Some(policy)) => return Ok(Arc::new(policy)),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, coupon_id = %coupon, "Redis policy read failed; asking MySQL")
            }
        }
        let policy = policies::find_policy(&self.pool, coupon)
            .await?
            .ok_or(ApiError::CouponNotFound)?;
        if let Err(err) = self.redis.store_policy(&policy).await {
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

/// The coupons the consumer announced sold out, each with its [`Holders`] once copied.
/// Weighed in members (1 + holders), up to the policy capacity plus `holders_max`.
#[derive(Clone)]
pub struct SoldOutMarks {
    marks: Cache<CouponId, SoldOut>,
    holders_max: u64,
    redis: AdmissionStore,
}

impl SoldOutMarks {
    /// Marks for at most `coupons` coupons (count) holding copies of at most `holders_max`
    /// holders in all (count; 0 copies none).
    pub fn new(coupons: u64, holders_max: u64, redis: AdmissionStore) -> Self {
        Self {
            marks: Cache::builder()
                .max_capacity(coupons.saturating_add(holders_max))
                .weigher(|_, holders: &SoldOut| {
                    let members = holders.as_ref().map_or(0, |h| h.len());
                    u32::try_from(members).map_or(u32::MAX, |m| m.saturating_add(1))
                })
                .time_to_live(SOLD_OUT_TTL)
                .build(),
            holders_max,
            redis,
        }
    }

    /// `None` unless the consumer announced that `coupon` sold out; then its mark, with the
    /// holders once they were copied.
    pub async fn get(&self, coupon: CouponId) -> Option<SoldOut> {
        self.marks.get(&coupon).await
    }

    /// Marks `coupon` sold out at once, then copies its holders in the background when the
    /// set has at most `holders_max` members.
    pub async fn mark(&self, shards: StockShards) {
        let coupon = shards.coupon();
        match self.marks.get(&coupon).await {
            Some(Some(_)) => return, // marked, holders copied
            Some(None) => {}         // marked; an earlier copy may have failed
            None => self.marks.insert(coupon, None).await,
        }
        if self.holders_max > 0 {
            let marks = self.clone();
            tokio::spawn(async move { marks.copy_holders(shards).await });
        }
    }

    /// Drops `coupon`'s mark (its policy changed, e.g. the stock was raised).
    pub async fn clear(&self, coupon: CouponId) {
        self.marks.invalidate(&coupon).await;
    }

    /// Copies `coupon`'s admission set into its sold-out mark when it has at most
    /// `holders_max` members; on any failure the mark stays without holders (each request
    /// then asks Redis).
    async fn copy_holders(&self, shards: StockShards) {
        let coupon = shards.coupon();
        let members = match self.redis.admitted_count(shards).await {
            Ok(count) if u64::try_from(count).is_ok_and(|c| c <= self.holders_max) => {
                self.redis.members(shards).await
            }
            Ok(_) => return,
            Err(err) => Err(err),
        };
        match members {
            Ok(members) => {
                let holders = Arc::new(Holders::new(members));
                // Only upgrade a mark still present (a policy change may have dropped it).
                if self.marks.contains_key(&coupon) {
                    tracing::info!(coupon_id = %coupon, holders = holders.len(), "sold-out holders copied");
                    self.marks.insert(coupon, Some(holders)).await;
                }
            }
            Err(err) => {
                tracing::warn!(%err, coupon_id = %coupon, "could not copy the sold-out holders; asking Redis per request");
            }
        }
    }
}

/// The users this instance admitted and whose issue message the broker acknowledged, per
/// coupon. Such an admission is never undone (undo only follows a failed publish), so the user
/// holds the coupon for good (docs/invariants.md 2, 3) and a repeat click is answered from here.
#[derive(Clone)]
pub struct AdmittedHere {
    admitted: Cache<(CouponId, UserId), ()>,
}

impl AdmittedHere {
    /// Remembers at most `capacity` admissions (count), each for [`ADMITTED_TTI`] after it
    /// was last asked about.
    pub fn new(capacity: u64) -> Self {
        Self {
            admitted: Cache::builder()
                .max_capacity(capacity)
                // The newest admissions are the likeliest to be clicked again: LRU keeps them,
                // where the default TinyLFU admission turned most of them away once full.
                .eviction_policy(EvictionPolicy::lru())
                .time_to_idle(ADMITTED_TTI)
                .build(),
        }
    }

    /// Remembers that this instance admitted `user` to `coupon` and the broker acknowledged
    /// the issue message.
    pub async fn note(&self, coupon: CouponId, user: UserId) {
        self.admitted.insert((coupon, user), ()).await;
    }

    /// Whether this instance remembers admitting `user` to `coupon` ([`Self::note`]).
    pub fn contains(&self, coupon: CouponId, user: UserId) -> bool {
        self.admitted.contains_key(&(coupon, user))
    }
}
