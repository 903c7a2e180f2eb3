//! The sell-outs the consumer broadcast, kept by each API instance with a copy of the coupon's
//! holders where it fits, so a request for a sold-out coupon is answered without the
//! admission script. The invalidation broadcasts ([`crate::policies::invalidation`]) set and
//! clear the marks.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::{AdmissionStore, StockShards};
use moka::future::Cache;

use crate::tasks::Tasks;

/// How long a sold-out mark is kept (a sold-out coupon stays sold out; the bound only frees
/// memory).
const SOLD_OUT_TTL: Duration = Duration::from_secs(3600);

/// The users holding a sold-out coupon (sorted, distinct user ids).
///
/// Exact once the consumer has announced the sell-out: MySQL then holds `total_quantity`
/// rows, every row has an admission (docs/invariants.md 4) and the set holds at most
/// `total_quantity` members (1), so the set equals the rows, and a full set admits nobody
/// more. It only changes if Redis loses it, and the rebuild restores the same members.
#[derive(Debug)]
pub struct Holders(Vec<UserId>);

impl Holders {
    /// Sorts and de-duplicates `members` (SSCAN may return one twice).
    pub fn new(mut members: Vec<UserId>) -> Self {
        members.sort_unstable();
        members.dedup();
        Self(members)
    }

    /// Whether `user` holds the coupon.
    pub fn contains(&self, user: UserId) -> bool {
        self.0.binary_search(&user).is_ok()
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

/// A sold-out mark.
#[derive(Debug, Clone)]
pub enum SoldOut {
    /// Marked; the holders are not copied (not yet, or the set was too large to copy): a
    /// request asks Redis whether its user holds the coupon.
    Marked,
    /// Marked, with a copy of the coupon's holders.
    WithHolders(Arc<Holders>),
}

impl SoldOut {
    /// The copied holders, if any.
    pub fn holders(self) -> Option<Arc<Holders>> {
        match self {
            Self::Marked => None,
            Self::WithHolders(holders) => Some(holders),
        }
    }
}

/// The coupons the consumer announced sold out, each with its [`Holders`] once copied.
/// Weighed in members (1 + holders), up to the policy capacity plus `holders_max`.
#[derive(Clone)]
pub struct SoldOutMarks {
    marks: Cache<CouponId, SoldOut>,
    holders_max: u64,
    redis: AdmissionStore,
    tasks: Tasks,
}

impl SoldOutMarks {
    /// Marks for at most `coupons` coupons (count) holding copies of at most `holders_max`
    /// holders in all (count; 0 copies none); the copies run as tasks of `tasks`.
    pub fn new(coupons: u64, holders_max: u64, redis: AdmissionStore, tasks: Tasks) -> Self {
        Self {
            marks: Cache::builder()
                .max_capacity(coupons.saturating_add(holders_max))
                .weigher(|_, mark: &SoldOut| {
                    let members = match mark {
                        SoldOut::Marked => 0,
                        SoldOut::WithHolders(holders) => holders.len(),
                    };
                    u32::try_from(members).map_or(u32::MAX, |m| m.saturating_add(1))
                })
                .time_to_live(SOLD_OUT_TTL)
                .build(),
            holders_max,
            redis,
            tasks,
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
            Some(SoldOut::WithHolders(_)) => return,
            // An earlier copy may have failed: try again.
            Some(SoldOut::Marked) => {}
            None => self.marks.insert(coupon, SoldOut::Marked).await,
        }
        if self.holders_max > 0 {
            let marks = self.clone();
            self.tasks
                .spawn(async move { marks.copy_holders(shards).await });
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
                    self.marks
                        .insert(coupon, SoldOut::WithHolders(holders))
                        .await;
                }
            }
            Err(err) => {
                tracing::warn!(%err, coupon_id = %coupon, "could not copy the sold-out holders; asking Redis per request");
            }
        }
    }
}
