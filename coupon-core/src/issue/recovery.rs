//! Rebuilding a coupon's Redis admission state after Redis lost it (docs/invariants.md 4).
//!
//! Redis restarted without persistence, or failed over to a replica that missed writes: the
//! coupon's stock key is gone, so the admission script answers "not prepared" and nobody is
//! admitted (fail closed). The rebuild restores the admission set as
//!
//! > users with a row in MySQL ∪ users of issue messages the consumer group has not committed,
//!
//! which is exactly the set of users who will end up with a row, and only then writes the
//! stock key back, so issuing resumes for that coupon with a set that already holds everyone.
//!
//! Order matters: the committed offsets are read before MySQL. A message the consumer persists
//! between the two reads is at or after the offset read, so it is in the Kafka part; a row
//! persisted before is in the MySQL part. Before reading, the rebuild waits out the producer's
//! message timeout: a publish that was in flight when Redis lost its data is then either in
//! the log (and read) or failed (and its admission's undo was a no-op on the empty set).
//!
//! One rebuild per coupon runs at a time across all instances (a Redis lock, `SET NX PX`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::MySqlPool;

use crate::domain::{CouponId, CouponPolicy};
use crate::issue::admission::{AdmissionStore, RedisKeys};
use crate::issue::message::IssueMessage;
use crate::store::redis::RedisConnection;

/// Where the issue messages are, and how long to wait for the broker.
#[derive(Debug, Clone)]
pub struct IssueLog {
    /// Bootstrap servers.
    pub brokers: String,
    /// The issue topic.
    pub topic: String,
    /// The consumer group whose committed offsets mark what MySQL already holds.
    pub group: String,
    /// Bound on each broker request (metadata, offsets, one poll).
    pub timeout: Duration,
}

impl IssueLog {
    /// The issue topic of `stores`, read up to `group`'s committed offsets, each broker request
    /// bounded by 5 s.
    pub fn new(stores: &crate::config::StoreConfig, group: &str) -> Self {
        Self {
            brokers: stores.kafka.brokers.clone(),
            topic: stores.kafka.issue_topic.clone(),
            group: group.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a rebuild restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Users with a row in MySQL (count).
    pub from_mysql: usize,
    /// Users of messages not yet persisted that had no row (count).
    pub from_kafka: usize,
}

impl IssueLog {
    /// User ids of `coupon`'s issue messages at or after the group's committed offsets (from
    /// the start of a partition the group never committed), up to the high watermarks read
    /// first.
    ///
    /// # Errors
    /// The broker did not answer within the timeout, or the topic has no metadata.
    pub async fn unpersisted_users(&self, coupon: CouponId) -> anyhow::Result<BTreeSet<i64>> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.read_unpersisted(coupon))
            .await
            .context("the Kafka reader task panicked")?
    }

    fn read_unpersisted(&self, coupon: CouponId) -> anyhow::Result<BTreeSet<i64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            // The group's id, to read its committed offsets; assign() never joins the group
            // and nothing is committed.
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .context("creating the Kafka reader")?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .context("reading the issue topic's metadata")?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .context("the issue topic has no metadata")?
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        let mut wanted = TopicPartitionList::new();
        for &partition in &partitions {
            wanted.add_partition(&self.topic, partition);
        }
        let committed = consumer
            .committed_offsets(wanted, self.timeout)
            .context("reading the consumer group's committed offsets")?;
        let mut ends = std::collections::HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition, self.timeout)
                .context("reading a partition's watermarks")?;
            let start = match committed
                .find_partition(&self.topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset.max(low),
                _ => low,
            };
            if start < high {
                ends.insert(partition, high);
                assignment.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
            }
        }
        let mut users = BTreeSet::new();
        if ends.is_empty() {
            return Ok(users);
        }
        consumer.assign(&assignment)?;
        while !ends.is_empty() {
            let message = consumer
                .poll(self.timeout)
                .context("no issue message arrived before the timeout")??;
            let partition = message.partition();
            if let Some(payload) = message.payload() {
                // A message that does not parse is the consumer's to dead-letter: no row.
                if let Ok(issue) = IssueMessage::from_json(payload) {
                    if issue.coupon_id == coupon {
                        users.insert(issue.user_id.get());
                    }
                }
            }
            if ends
                .get(&partition)
                .is_some_and(|&end| message.offset() + 1 >= end)
            {
                ends.remove(&partition);
            }
        }
        Ok(users)
    }
}

/// The per-coupon rebuild lock (`P coupon:{id}:rebuild`, `SET NX PX`), so one instance at a
/// time rebuilds a coupon; cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct RebuildLock {
    conn: RedisConnection,
    keys: RedisKeys,
}

impl RebuildLock {
    /// Wraps a connection; `keys` names this deployment's keys.
    pub fn new(conn: RedisConnection, keys: RedisKeys) -> Self {
        Self { conn, keys }
    }

    /// Takes `coupon`'s lock for `lease`; false when another instance holds it.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn acquire(&self, coupon: CouponId, lease: Duration) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.rebuild_lock(coupon))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Releases `coupon`'s lock.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn release(&self, coupon: CouponId) -> redis::RedisResult<()> {
        redis::AsyncCommands::del(&mut self.conn.clone(), self.keys.rebuild_lock(coupon)).await
    }
}

/// Rebuilds `policy`'s admission state from MySQL and `log`, unless another instance holds the
/// rebuild lock (then `Ok(None)`). Waits `settle` first (the producer's message timeout).
///
/// # Errors
/// Redis, MySQL or the broker failed; the stock key stays absent, so issuing stays closed and
/// the next request tries again.
pub async fn rebuild(
    pool: &MySqlPool,
    admission: &AdmissionStore,
    lock: &RebuildLock,
    log: &IssueLog,
    policy: &CouponPolicy,
    settle: Duration,
) -> anyhow::Result<Option<Rebuilt>> {
    let coupon = policy.id;
    let lease = settle + log.timeout * 10 + Duration::from_secs(30);
    if !lock.acquire(coupon, lease).await? {
        return Ok(None);
    }
    let result = async {
        tokio::time::sleep(settle).await;
        let pending = log.unpersisted_users(coupon).await?;
        let persisted: Vec<i64> =
            sqlx::query_scalar("SELECT user_id FROM coupon_issues WHERE coupon_id = ?")
                .bind(coupon.get())
                .fetch_all(pool)
                .await
                .context("reading the coupon's rows")?;
        let from_mysql = persisted.len();
        let mut members: BTreeSet<i64> = persisted.into_iter().collect();
        let before = members.len();
        members.extend(pending);
        let rebuilt = Rebuilt {
            from_mysql,
            from_kafka: members.len() - before,
        };
        let members = super::user_ids(&members.into_iter().collect::<Vec<_>>())?;
        admission.restore(policy, &members).await?;
        tracing::warn!(
            coupon_id = %coupon, rebuilt.from_mysql, rebuilt.from_kafka,
            "rebuilt the coupon's Redis admission state; issuing resumes"
        );
        anyhow::Ok(rebuilt)
    }
    .await;
    let _ = lock.release(coupon).await;
    result.map(Some)
}
