//! The stores both services use, and their start-up: [`db`] the MySQL pool and migrations,
//! [`kafka`] the Kafka clients, [`redis`] the Redis connection (the one place that chooses
//! what kind of Redis deployment to talk to).

pub mod db;
pub mod kafka;
pub mod redis;

use anyhow::Context;
use sqlx::MySqlPool;

use crate::config::StoreConfig;

/// Open connections to MySQL and Redis, and what the start-up check found about the issue
/// topic.
pub struct Connections {
    /// MySQL pool, migrations applied.
    pub pool: MySqlPool,
    /// Multiplexed Redis connection (one node or a cluster) with bounded commands.
    pub redis: redis::RedisConnection,
    /// Whether the issue topic survives the loss of one broker ([`kafka::check_issue_topic`]);
    /// the service records it again periodically ([`kafka::IssueTopicVerdict::record`]).
    pub issue_topic: kafka::IssueTopicVerdict,
}

/// What every service does first: check the topic settings, create the database when missing
/// and apply migrations (or, without `MIGRATE_ON_START`, check that they were applied),
/// connect to Redis, create the Kafka topics when `KAFKA_CREATE_TOPICS`
/// is set, then check whether the issue topic survives the loss of one broker (a warning
/// when not, or when the check cannot run: it never stops the start-up, and delays it by at
/// most [`kafka::ISSUE_TOPIC_CHECK_TIMEOUT`]).
///
/// # Errors
/// The topic settings contradict each other, or a store is unreachable; the error says which.
pub async fn connect(stores: &StoreConfig) -> anyhow::Result<Connections> {
    let replication = stores
        .kafka
        .new_topic_replication()
        .context("checking the Kafka topic settings")?;
    let pool = if stores.mysql.migrate_on_start {
        db::prepare(stores.mysql.url(), stores.mysql.max_connections).await?
    } else {
        let pool = db::connect(stores.mysql.url(), stores.mysql.max_connections).await?;
        db::check_migrated(&pool).await?;
        pool
    };
    let redis = stores
        .connect_redis(stores.redis.timeout)
        .await
        .context("connecting to Redis")?;
    if stores.kafka.create_topics {
        kafka::ensure_topics(stores, replication)
            .await
            .context("creating Kafka topics")?;
    }
    let issue_topic = kafka::check_issue_topic(stores).await;
    Ok(Connections {
        pool,
        redis,
        issue_topic,
    })
}
