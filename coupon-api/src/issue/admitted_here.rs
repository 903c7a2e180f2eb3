//! The admissions this instance made and published, so a repeat click is answered from memory.

use std::time::Duration;

use coupon_core::domain::{CouponId, UserId};
use moka::future::Cache;
use moka::policy::EvictionPolicy;

/// How long a remembered admission is kept without being asked about again (it stays true;
/// the bound only frees memory).
const ADMITTED_TTI: Duration = Duration::from_secs(600);

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
