//! The cache-invalidation channel (`P coupon:invalidation`): how a sell-out or a policy change
//! reaches every API instance.

use redis::AsyncCommands;

use super::{Invalidation, RedisKeys};
use crate::store::redis::RedisConnection;

/// Publisher of [`Invalidation`] messages; cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct InvalidationBroadcast {
    conn: RedisConnection,
    keys: RedisKeys,
}

impl InvalidationBroadcast {
    /// Wraps a connection; `keys` names this deployment's channel.
    pub fn new(conn: RedisConnection, keys: RedisKeys) -> Self {
        Self { conn, keys }
    }

    /// Broadcasts `invalidation` to every subscribed API instance (classic `PUBLISH`); returns
    /// how many subscribers the receiving node delivered it to. On a Redis Cluster the message
    /// reaches the subscribers of every node through the cluster bus, but the count is only
    /// that of the node the command went to, so 0 there does not mean nobody heard it
    /// (<https://redis.io/docs/latest/commands/publish/>).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn publish(&self, invalidation: Invalidation) -> redis::RedisResult<i64> {
        let json = serde_json::to_string(&invalidation).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "invalidation JSON", e.to_string()))
        })?;
        self.conn
            .clone()
            .publish(self.keys.invalidation_channel(), json)
            .await
    }
}
