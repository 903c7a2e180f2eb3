//! How a coupon's stock is split over Redis hash slots: the count ([`ShardCount`]), the
//! shards ([`StockShards`], [`Shard`]) and which shard each user belongs to. Pure functions of
//! the coupon, the count and the user id; the keys they name are in
//! `crate::issue::admission`.

use serde::{Deserialize, Serialize};

use super::{CouponId, UserId, ValidationError};

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

/// How many stock shards a coupon's admission state is split into: 1 to
/// [`MAX_STOCK_SHARDS`], built by [`ShardCount::parse`] (no other count can be built). JSON:
/// the number; absent means 1, the count of every policy, message and broadcast written before
/// stock shards existed.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(try_from = "u16", into = "u16")]
#[schema(
    value_type = u16,
    description = "Stock shards (count, 1 to 64): how many Redis hash slots the stock is split over."
)]
pub struct ShardCount(u16);

impl ShardCount {
    /// One shard: the coupon's keys are those of an unsharded coupon.
    pub const ONE: Self = Self(1);

    /// Accepts 1 to [`MAX_STOCK_SHARDS`].
    ///
    /// # Errors
    /// [`ValidationError`] for any other count.
    pub fn parse(count: u16) -> Result<Self, ValidationError> {
        if (1..=MAX_STOCK_SHARDS).contains(&count) {
            Ok(Self(count))
        } else {
            Err(ValidationError(format!(
                "stock_shards must be from 1 to {MAX_STOCK_SHARDS}"
            )))
        }
    }

    /// The count.
    pub fn get(self) -> u16 {
        self.0
    }

    /// Whether it is one shard (a serialised field is then left out).
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
    pub fn is_one(&self) -> bool {
        self.0 == 1
    }
}

impl Default for ShardCount {
    fn default() -> Self {
        Self::ONE
    }
}

impl TryFrom<u16> for ShardCount {
    type Error = ValidationError;

    fn try_from(count: u16) -> Result<Self, ValidationError> {
        Self::parse(count)
    }
}

impl From<ShardCount> for u16 {
    fn from(count: ShardCount) -> u16 {
        count.0
    }
}

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
    /// `coupon` split into `count` shards.
    pub fn new(coupon: CouponId, count: ShardCount) -> Self {
        Self {
            coupon,
            count: count.get(),
        }
    }

    /// `coupon` in one shard: its keys are those of an unsharded coupon.
    pub fn single(coupon: CouponId) -> Self {
        Self::new(coupon, ShardCount::ONE)
    }

    /// The coupon.
    pub fn coupon(self) -> CouponId {
        self.coupon
    }

    /// The number of shards (count, 1 to [`MAX_STOCK_SHARDS`]).
    pub fn count(self) -> u16 {
        self.count
    }

    /// The number of shards, as the count a policy, message or broadcast carries.
    pub fn shard_count(self) -> ShardCount {
        ShardCount(self.count)
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
    pub fn home(self, user: UserId) -> Shard {
        let mut z = (user.get() as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        self.shard((z % u64::from(self.count)) as u16)
    }

    /// `users` grouped by home shard, in shard order; shards with none are left out.
    pub fn by_home(self, users: &[UserId]) -> Vec<(Shard, Vec<UserId>)> {
        let mut groups: Vec<Vec<UserId>> = vec![Vec::new(); usize::from(self.count)];
        for &user in users {
            groups[usize::from(self.home(user).index)].push(user);
        }
        self.all()
            .zip(groups)
            .filter(|(_, users)| !users.is_empty())
            .collect()
    }

    /// The units shard `index` starts with when `total` units (count, at least 0) are split:
    /// `total / count`, one more for the first `total % count` shards.
    pub fn allotment(self, total: i64, index: u16) -> i64 {
        let count = i64::from(self.count);
        total / count + i64::from(i64::from(index) < total % count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOMES_OF_USERS_1_TO_8: [u16; 8] = [1, 2, 1, 2, 2, 0, 3, 2];

    fn user(id: i64) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn home_shards_are_stable_and_spread() {
        let shards = StockShards::new(CouponId::parse(42).unwrap(), ShardCount::parse(4).unwrap());
        // Fixed values: changing the hash would move admitted users to another shard.
        let homes: Vec<u16> = (1..=8).map(|u| shards.home(user(u)).index).collect();
        assert_eq!(homes, HOMES_OF_USERS_1_TO_8);
        let mut per_shard = [0_u32; 4];
        for u in 1..=10_000 {
            per_shard[usize::from(shards.home(user(u)).index)] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (2_300..=2_700).contains(&n)),
            "{per_shard:?}"
        );
        assert_eq!(
            StockShards::single(shards.coupon())
                .home(user(12_345))
                .index,
            0
        );
    }

    #[test]
    fn allotments_add_up_to_the_total() {
        let shards = StockShards::new(CouponId::parse(1).unwrap(), ShardCount::parse(4).unwrap());
        let split: Vec<i64> = (0..4).map(|i| shards.allotment(1_002, i)).collect();
        assert_eq!(split, [251, 251, 250, 250]);
    }

    #[test]
    fn a_shard_count_outside_1_to_64_cannot_be_built() {
        assert!(ShardCount::parse(0).is_err());
        assert!(ShardCount::parse(65).is_err());
        assert_eq!(ShardCount::parse(64).unwrap().get(), 64);
        assert!(serde_json::from_str::<ShardCount>("0").is_err());
        assert_eq!(serde_json::from_str::<ShardCount>("3").unwrap().get(), 3);
    }
}
