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

/// One stock shard of a coupon: its keys share one hash tag, so one Redis Cluster slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    /// The coupon.
    pub coupon: CouponId,
    /// The shard's index, `0..count`.
    pub index: u16,
}

impl From<CouponId> for Shard {
    /// Shard 0, where an unsharded coupon keeps all of its admission state.
    fn from(coupon: CouponId) -> Self {
        Self { coupon, index: 0 }
    }
}

/// Most stock shards a policy may have (`stock_shards`, count).
pub const MAX_STOCK_SHARDS: u16 = 64;

/// How a coupon's admission state is split: into `count` stock shards (1 unless its policy's
/// `stock_shards` says more), each in a hash slot of its own, so the admissions of one hot
/// coupon spread over several Redis Cluster masters. A user always belongs to the same shard
/// (its home, [`Self::home`]), where their duplicate check and admission run in one script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StockShards {
    coupon: CouponId,
    count: u16,
}

impl StockShards {
    /// `coupon` split into `count` shards (clamped to `1..=MAX_STOCK_SHARDS`).
    pub fn new(coupon: CouponId, count: u16) -> Self {
        Self {
            coupon,
            count: count.clamp(1, MAX_STOCK_SHARDS),
        }
    }

    /// `coupon` in one shard: its keys are those of an unsharded coupon.
    pub fn single(coupon: CouponId) -> Self {
        Self::new(coupon, 1)
    }

    /// The coupon.
    pub fn coupon(self) -> CouponId {
        self.coupon
    }

    /// The number of shards (count, at least 1).
    pub fn count(self) -> u16 {
        self.count
    }

    /// Shard `index` (taken modulo the count).
    pub fn shard(self, index: u16) -> Shard {
        Shard {
            coupon: self.coupon,
            index: index % self.count,
        }
    }

    /// Every shard, by index.
    pub fn all(self) -> impl Iterator<Item = Shard> {
        (0..self.count).map(move |index| self.shard(index))
    }

    /// The home shard of `user`: the SplitMix64 finaliser of the user id
    /// (<https://prng.di.unimi.it/splitmix64.c>) modulo the count. A pure function of the two,
    /// the same in every process and release; it must never change while a sharded coupon has
    /// admissions, or a user could be admitted once in each of two shards.
    pub fn home(self, user: i64) -> Shard {
        let mut z = (user as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        self.shard((z % u64::from(self.count)) as u16)
    }

    /// `users` grouped by home shard, in shard order; shards with none are left out.
    pub fn by_home(self, users: &[i64]) -> Vec<(Shard, Vec<i64>)> {
        let mut groups: Vec<Vec<i64>> = vec![Vec::new(); usize::from(self.count)];
        for &user in users {
            groups[usize::from(self.home(user).index)].push(user);
        }
        self.all()
            .zip(groups)
            .filter(|(_, users)| !users.is_empty())
            .collect()
    }

    /// The units shard `index` starts with when `total` (count) is split: `total / count`, one
    /// more for the first `total % count` shards; `-1` (unlimited) stays `-1`.
    pub fn allotment(self, total: i64, index: u16) -> i64 {
        if total < 0 {
            return -1;
        }
        let count = i64::from(self.count);
        total / count + i64::from(i64::from(index) < total % count)
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
    #[serde(default = "one_shard", skip_serializing_if = "is_one_shard")]
    pub stock_shards: u16,
}

/// The serde default of a `stock_shards` field: 1 (unsharded), the count of every policy,
/// message and broadcast written before stock shards existed.
pub(crate) fn one_shard() -> u16 {
    1
}

/// Whether a `stock_shards` field is left out when serialised (1), so unsharded messages keep
/// their shape.
pub(crate) fn is_one_shard(count: &u16) -> bool {
    *count == 1
}

impl Invalidation {
    /// MySQL holds the whole stock of `shards`' coupon.
    pub fn sold_out(shards: StockShards) -> Self {
        Self {
            coupon_id: shards.coupon(),
            reason: InvalidationReason::SoldOut,
            stock_shards: shards.count(),
        }
    }

    /// `coupon`'s policy row changed.
    pub fn policy_changed(coupon: CouponId) -> Self {
        Self {
            coupon_id: coupon,
            reason: InvalidationReason::PolicyChanged,
            stock_shards: 1,
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

    const HOMES_OF_USERS_1_TO_8: [u16; 8] = [1, 2, 1, 2, 2, 0, 3, 2];

    #[test]
    fn keys_share_the_coupon_hash_tag() {
        let keys = RedisKeys::new("t1:");
        let c = CouponId::parse(42).unwrap();
        assert_eq!(keys.admission_set(c), "t1:coupon:{42}:issued");
        assert_eq!(keys.stock(c), "t1:coupon:{42}:stock");
        assert_eq!(keys.policy(c), "t1:coupon:{42}:policy");
        assert_eq!(keys.pending(c), "t1:coupon:{42}:pending");
        assert_eq!(keys.fence(c), "t1:coupon:{42}:fence");
        let shards = StockShards::new(c, 4);
        assert_eq!(keys.admission_set(shards.shard(0)), "t1:coupon:{42}:issued");
        assert_eq!(keys.stock(shards.shard(3)), "t1:coupon:{42:s3}:stock");
        assert_eq!(keys.lent(shards.shard(1)), "t1:coupon:{42:s1}:lent");
    }

    #[test]
    fn home_shards_are_stable_and_spread() {
        let shards = StockShards::new(CouponId::parse(42).unwrap(), 4);
        // Fixed values: changing the hash would move admitted users to another shard.
        let homes: Vec<u16> = (1..=8).map(|u| shards.home(u).index).collect();
        assert_eq!(homes, HOMES_OF_USERS_1_TO_8);
        let mut per_shard = [0_u32; 4];
        for user in 1..=10_000 {
            per_shard[usize::from(shards.home(user).index)] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (2_300..=2_700).contains(&n)),
            "{per_shard:?}"
        );
        assert_eq!(StockShards::single(shards.coupon()).home(12_345).index, 0);
    }

    #[test]
    fn allotments_add_up_to_the_total() {
        let shards = StockShards::new(CouponId::parse(1).unwrap(), 4);
        let split: Vec<i64> = (0..4).map(|i| shards.allotment(1_002, i)).collect();
        assert_eq!(split, [251, 251, 250, 250]);
        assert_eq!(shards.allotment(-1, 2), -1);
        assert_eq!(StockShards::new(shards.coupon(), 0).count(), 1);
    }

    #[test]
    fn invalidations_are_json() {
        let coupon = CouponId::parse(7).unwrap();
        let inv = Invalidation::sold_out(StockShards::single(coupon));
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(json, r#"{"coupon_id":7,"reason":"SOLD_OUT"}"#);
        assert_eq!(serde_json::from_str::<Invalidation>(&json).unwrap(), inv);
        let sharded = Invalidation::sold_out(StockShards::new(coupon, 3));
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
