//! The names of the admission state's Redis keys and the invalidation channel's messages
//! (the key layout is in [`super`]).

use serde::{Deserialize, Serialize};

use crate::domain::CouponId;

/// Builds the Redis key names of this deployment.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// Keys under `prefix` (may be empty).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The admission set of `coupon`: the user ids admitted so far (members), whose size is
    /// checked against the stock. The key keeps its historical suffix `:issued` so existing
    /// deployments keep their state; it is not the MySQL `ISSUED` state.
    pub fn admission_set(&self, coupon: CouponId) -> String {
        format!("{}coupon:{{{coupon}}}:issued", self.prefix)
    }

    /// The stock bound of `coupon`.
    pub fn stock(&self, coupon: CouponId) -> String {
        format!("{}coupon:{{{coupon}}}:stock", self.prefix)
    }

    /// The pending admissions of `coupon`: a hash of user id → request id.
    pub fn pending(&self, coupon: CouponId) -> String {
        format!("{}coupon:{{{coupon}}}:pending", self.prefix)
    }

    /// The JSON copy of `coupon`'s policy.
    pub fn policy(&self, coupon: CouponId) -> String {
        format!("{}coupon:{{{coupon}}}:policy", self.prefix)
    }

    /// The fence of `coupon`'s replica acknowledgements: written by each round of
    /// `admission/fence.lua` just before its `WAIT`, expires after 60 s.
    pub fn fence(&self, coupon: CouponId) -> String {
        format!("{}coupon:{{{coupon}}}:fence", self.prefix)
    }

    /// The lock of `coupon`'s rebuild ([`crate::issue::recovery`]).
    pub fn rebuild_lock(&self, coupon: CouponId) -> String {
        format!("{}coupon:{{{coupon}}}:rebuild", self.prefix)
    }

    /// The invalidation channel every API instance subscribes to.
    pub fn invalidation_channel(&self) -> String {
        format!("{}coupon:invalidation", self.prefix)
    }
}

/// Why API instances must drop what they cached of a coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InvalidationReason {
    /// MySQL holds `total_quantity` rows: the coupon can never be issued again.
    SoldOut,
    /// The policy row changed: reload it.
    PolicyChanged,
}

/// A cache-invalidation broadcast, sent as JSON on [`RedisKeys::invalidation_channel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The coupon concerned.
    pub coupon_id: CouponId,
    /// What happened.
    pub reason: InvalidationReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_coupon_hash_tag() {
        let keys = RedisKeys::new("t1:");
        let c = CouponId::parse(42).unwrap();
        assert_eq!(keys.admission_set(c), "t1:coupon:{42}:issued");
        assert_eq!(keys.stock(c), "t1:coupon:{42}:stock");
        assert_eq!(keys.policy(c), "t1:coupon:{42}:policy");
        assert_eq!(keys.pending(c), "t1:coupon:{42}:pending");
        assert_eq!(keys.fence(c), "t1:coupon:{42}:fence");
    }

    #[test]
    fn invalidations_are_json() {
        let inv = Invalidation {
            coupon_id: CouponId::parse(7).unwrap(),
            reason: InvalidationReason::SoldOut,
        };
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(json, r#"{"coupon_id":7,"reason":"SOLD_OUT"}"#);
        assert_eq!(serde_json::from_str::<Invalidation>(&json).unwrap(), inv);
    }
}
