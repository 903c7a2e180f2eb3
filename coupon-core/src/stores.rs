//! Start-up of the stores both services share.

use anyhow::Context;
use redis::aio::ConnectionManager;
use sqlx::MySqlPool;

use crate::config::StoreConfig;
use crate::{admission, db, kafka};

/// Open connections to MySQL and Redis.
pub struct Connections {
    /// MySQL pool, migrations applied.
    pub pool: MySqlPool,
    /// Multiplexed Redis connection with bounded commands.
    pub redis: ConnectionManager,
}

/// What every service does first: create the database when missing and apply migrations,
/// connect to Redis, and create the Kafka topics when `kafka_create_topics` is set.
///
/// # Errors
/// A store is unreachable; the error says which.
pub async fn connect(stores: &StoreConfig) -> anyhow::Result<Connections> {
    let pool = db::prepare(stores.database_url(), stores.database_max_connections).await?;
    let redis = admission::connect(stores.redis_url(), stores.redis_timeout())
        .await
        .context("connecting to Redis")?;
    if stores.kafka_create_topics {
        kafka::ensure_topics(stores)
            .await
            .context("creating Kafka topics")?;
    }
    Ok(Connections { pool, redis })
}
