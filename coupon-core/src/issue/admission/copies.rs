//! The policy copy kept in Redis (`P coupon:{id}:policy`): the layer between each API
//! instance's local cache and MySQL.

use redis::AsyncCommands;

use super::{count_error, RedisKeys};
use crate::domain::{CouponId, CouponPolicy};
use crate::store::redis::RedisConnection;

/// Longest life (s) of a coupon's Redis policy copy. A deleted or suspended policy is
/// unissuable on every instance within this bound plus the local cache's `POLICY_CACHE_TTL_MS`
/// even when its announcement was lost; while it lives, each instance's local cache misses
/// read the copy instead of MySQL (one MySQL read per coupon and instance per bound).
pub const POLICY_COPY_TTL_SECS: u64 = 60;

/// Handle on the policy copies; cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct PolicyCopies {
    conn: RedisConnection,
    keys: RedisKeys,
}

impl PolicyCopies {
    /// Wraps a connection; `keys` names this deployment's keys.
    pub fn new(conn: RedisConnection, keys: RedisKeys) -> Self {
        Self { conn, keys }
    }

    /// The policy copy of `coupon`, if any (a copy that no longer parses counts as absent).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn get(&self, coupon: CouponId) -> redis::RedisResult<Option<CouponPolicy>> {
        let json: Option<String> = self
            .conn
            .clone()
            .get(self.keys.policy(coupon))
            .await
            .inspect_err(|_| count_error("policy"))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Stores the policy copy (after a MySQL read filled the gap, or a change), for
    /// [`POLICY_COPY_TTL_SECS`].
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or the policy does not serialise.
    pub async fn store(&self, policy: &CouponPolicy) -> redis::RedisResult<()> {
        let json = serde_json::to_string(policy).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "policy JSON", e.to_string()))
        })?;
        self.conn
            .clone()
            .set_ex(self.keys.policy(policy.id), json, POLICY_COPY_TTL_SECS)
            .await
    }

    /// Drops the policy copy (after a soft delete), so loaders fall through to MySQL.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn remove(&self, coupon: CouponId) -> redis::RedisResult<()> {
        self.conn.clone().del(self.keys.policy(coupon)).await
    }
}
