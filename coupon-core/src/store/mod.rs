//! The stores both services use, and their start-up: [`db`] the MySQL pool and migrations,
//! [`kafka`] the Kafka clients, [`redis`] the Redis connection (the one place that chooses
//! what kind of Redis deployment to talk to).

pub mod db;
pub mod kafka;
pub mod redis;

use anyhow::Context;
use sqlx::MySqlPool;

use crate::config::StoreConfig;

/// Open connections to MySQL and Redis.
pub struct Connections {
    /// MySQL pool, migrations applied.
    pub pool: MySqlPool,
    /// Multiplexed Redis connection (one node or a cluster) with bounded commands.
    pub redis: redis::RedisConnection,
}

/// What every service does first: create the database when missing and apply migrations,
/// connect to Redis, and create the Kafka topics when `kafka_create_topics` is set.
///
/// # Errors
/// A store is unreachable; the error says which.
pub async fn connect(stores: &StoreConfig) -> anyhow::Result<Connections> {
    let pool = db::prepare(stores.database_url(), stores.database_max_connections).await?;
    let redis = stores
        .connect_redis(stores.redis_timeout())
        .await
        .context("connecting to Redis")?;
    if stores.kafka_create_topics {
        kafka::ensure_topics(stores)
            .await
            .context("creating Kafka topics")?;
    }
    Ok(Connections { pool, redis })
}
