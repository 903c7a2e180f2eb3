//! The names of the admission state's Redis keys and the invalidation channel's messages
//! (the key layout is in [`super`]).

use serde::{Deserialize, Serialize};

pub use crate::domain::stock::{Shard, ShardCount, StockShards, MAX_STOCK_SHARDS};
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

    /// The admission set of `shard`: the user ids admitted to it so far (members), whose size
    /// is checked against the shard's stock. The key keeps its historical suffix `:issued` so
    /// existing deployments keep their state; it is not the MySQL `ISSUED` state.
    pub fn admission_set(&self, shard: impl Into<Shard>) -> String {
        self.shard_key(shard.into(), "issued")
    }

    /// The stock bound of `shard`: the units it may admit (count; `-1` unlimited). A shard's
    /// bound moves when it lends units to another shard or borrows from one
    /// (`admission/transfer.rs`); an unsharded coupon's is its `total_quantity`.
    pub fn stock(&self, shard: impl Into<Shard>) -> String {
        self.shard_key(shard.into(), "stock")
    }

    /// The pending admissions of `shard`: a hash of user id → request id.
    pub fn pending(&self, shard: impl Into<Shard>) -> String {
        self.shard_key(shard.into(), "pending")
    }

    /// What `shard` lent: a hash of recipient shard index → units lent to it so far (count,
    /// only ever raised).
    pub fn lent(&self, shard: Shard) -> String {
        self.shard_key(shard, "lent")
    }

    /// What `shard` borrowed: a hash of donor shard index → the donor's `lent` count this shard
    /// has added to its stock so far (count, only ever raised).
    pub fn borrowed(&self, shard: Shard) -> String {
        self.shard_key(shard, "borrowed")
    }

    /// `P coupon:{<id>}:<suffix>` for shard 0, `P coupon:{<id>:s<index>}:<suffix>` for the
    /// others: each shard's hash tag puts its keys in one slot, and different tags spread the
    /// shards over the cluster's slots.
    fn shard_key(&self, shard: Shard, suffix: &str) -> String {
        let Shard { coupon, index } = shard;
        if index == 0 {
            format!("{}coupon:{{{coupon}}}:{suffix}", self.prefix)
        } else {
            format!("{}coupon:{{{coupon}:s{index}}}:{suffix}", self.prefix)
        }
    }

    /// The JSON copy of `coupon`'s policy.
    pub fn policy(&self, coupon: CouponId) -> String {
        format!("{}coupon:{{{coupon}}}:policy", self.prefix)
    }

    /// The fence of `shard`'s replica acknowledgements: written by each round of
    /// `admission/fence.lua` just before its `WAIT`, expires after 60 s.
    pub fn fence(&self, shard: impl Into<Shard>) -> String {
        self.shard_key(shard.into(), "fence")
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

/// A cache-invalidation broadcast, sent as JSON on [`RedisKeys::invalidation_channel`]:
/// `{"coupon_id": 7, "reason": "SOLD_OUT"}`, plus `"stock_shards": 4` for a sell-out of a
/// sharded coupon (instances copy its holders from every shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The coupon concerned.
    pub coupon_id: CouponId,
    /// What happened.
    pub reason: InvalidationReason,
    /// The coupon's stock shards (count; absent means 1).
    #[serde(default, skip_serializing_if = "ShardCount::is_one")]
    pub stock_shards: ShardCount,
}

impl Invalidation {
    /// MySQL holds the whole stock of `shards`' coupon.
    pub fn sold_out(shards: StockShards) -> Self {
        Self {
            coupon_id: shards.coupon(),
            reason: InvalidationReason::SoldOut,
            stock_shards: shards.shard_count(),
        }
    }

    /// `coupon`'s policy row changed.
    pub fn policy_changed(coupon: CouponId) -> Self {
        Self {
            coupon_id: coupon,
            reason: InvalidationReason::PolicyChanged,
            stock_shards: ShardCount::ONE,
        }
    }

    /// Where the coupon's admission state lives (meaningful for a sell-out).
    pub fn shards(&self) -> StockShards {
        StockShards::new(self.coupon_id, self.stock_shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(count: u16) -> ShardCount {
        ShardCount::parse(count).unwrap()
    }

    #[test]
    fn keys_share_the_coupon_hash_tag() {
        let keys = RedisKeys::new("t1:");
        let c = CouponId::parse(42).unwrap();
        assert_eq!(keys.admission_set(c), "t1:coupon:{42}:issued");
        assert_eq!(keys.stock(c), "t1:coupon:{42}:stock");
        assert_eq!(keys.policy(c), "t1:coupon:{42}:policy");
        assert_eq!(keys.pending(c), "t1:coupon:{42}:pending");
        assert_eq!(keys.fence(c), "t1:coupon:{42}:fence");
        let shards = StockShards::new(c, shards(4));
        assert_eq!(keys.admission_set(shards.shard(0)), "t1:coupon:{42}:issued");
        assert_eq!(keys.stock(shards.shard(3)), "t1:coupon:{42:s3}:stock");
        assert_eq!(keys.lent(shards.shard(1)), "t1:coupon:{42:s1}:lent");
    }

    #[test]
    fn invalidations_are_json() {
        let coupon = CouponId::parse(7).unwrap();
        let inv = Invalidation::sold_out(StockShards::single(coupon));
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(json, r#"{"coupon_id":7,"reason":"SOLD_OUT"}"#);
        assert_eq!(serde_json::from_str::<Invalidation>(&json).unwrap(), inv);
        let sharded = Invalidation::sold_out(StockShards::new(coupon, shards(3)));
        let json = serde_json::to_string(&sharded).unwrap();
        assert_eq!(
            json,
            r#"{"coupon_id":7,"reason":"SOLD_OUT","stock_shards":3}"#
        );
        assert_eq!(
            serde_json::from_str::<Invalidation>(&json)
                .unwrap()
                .shards()
                .count(),
            3
        );
    }
}
