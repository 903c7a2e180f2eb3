//! `coupon-consumer`: the Kafka consumer group member that persists issue messages to MySQL.
//!
//! Each loop takes a batch bounded by size and time, persists it in one MySQL transaction
//! ([`coupon_core::repository::persist_batch`]), dead-letters what can never be persisted, and
//! only then commits the batch's offsets. At-least-once delivery plus the unique key
//! `(coupon_id, user_id)` make every acknowledged issue message end as exactly one row.

pub mod config;
pub mod dead_letter;
pub mod expiry;
pub mod gauges;
pub mod outbox;
pub mod payments;
pub mod sweeper;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use coupon_core::admission::{AdmissionStore, Invalidation, InvalidationReason, RedisKeys};
use coupon_core::kafka::producer_config;
use coupon_core::message::IssueMessage;
use coupon_core::repository::{self, PersistReport};
use coupon_core::stores::Connections;
use coupon_core::telemetry::{self, names};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::config::ConsumerConfig;
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::gauges::GroupContext;

/// Counters of what the consumer has done, readable while it runs (tests wait on them; the
/// same figures go to Prometheus).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages whose batch was persisted and whose offsets were committed (count).
    pub messages_committed: AtomicU64,
    /// Batches committed (count).
    pub batches_committed: AtomicU64,
    /// Messages sent to the dead-letter topic (count).
    pub dead_lettered: AtomicU64,
    /// Failed attempts at persisting a batch or dead-lettering its rejects (count).
    pub failed_attempts: AtomicU64,
    /// Payment results applied or dead-lettered (count).
    pub payments_applied: AtomicU64,
    /// Checkout holds released by the sweeper (count).
    pub holds_released: AtomicU64,
    /// Events published from the outbox (count).
    pub events_published: AtomicU64,
}

/// Connection handles and settings of a running consumer.
pub struct IssueConsumer {
    consumer: StreamConsumer<GroupContext>,
    pool: MySqlPool,
    payments: StreamConsumer<GroupContext>,
    dead_letters: DeadLetters,
    sweep_interval: Duration,
    sweep_batch: u32,
    events_topic: String,
    relay_interval: Duration,
    relay_max_defer: Duration,
    /// When the issue consumer last took a full batch (a backlog); the relay yields to it.
    last_full_batch: std::sync::Mutex<Option<Instant>>,
    expiry_interval: Duration,
    expiring_soon: chrono::Duration,
    archive_after: chrono::Duration,
    admission: AdmissionStore,
    batch_max_messages: usize,
    batch_max_wait: Duration,
    retry: ExponentialBuilder,
    metrics_sample_interval: Duration,
    metrics_coupon_limit: u32,
    /// A group-less client for the partitions' high watermarks (the lag gauges).
    watermarks: Arc<BaseConsumer>,
    stats: Arc<ConsumerStats>,
}

/// Every `step` label of `coupon_consumer_retries_total` (monitoring/METRICS.md).
pub const RETRY_STEPS: [&str; 5] = [
    "admission_check",
    "persist",
    "dead_letter",
    "payment_apply",
    "payment_dead_letter",
];

/// Client settings of the group member: offsets are committed by hand, only after the batch is
/// durable (`enable.auto.commit=false`), and a new group starts from the earliest offset so no
/// message published before the first consumer joined is skipped. A fetch waits at most
/// `fetch_wait_ms` for data ([`ConsumerConfig::kafka_fetch_wait_ms`]). With `instance_id`, the
/// member is static (`group.instance.id`, [`ConsumerConfig::group_instance_id`]).
pub fn consumer_config(
    brokers: &str,
    group_id: &str,
    instance_id: Option<&str>,
    fetch_wait_ms: u32,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("socket.connection.setup.timeout.ms", "3000");
    if let Some(id) = instance_id {
        config.set("group.instance.id", id);
    }
    config
}

impl IssueConsumer {
    /// Connects to MySQL (creating the database and applying migrations), Redis and Kafka
    /// (creating topics when configured to) and joins the consumer group.
    ///
    /// # Errors
    /// A store is unreachable or a client configuration is refused.
    pub async fn build(config: &ConsumerConfig) -> anyhow::Result<Self> {
        let stores = &config.stores;
        telemetry::install_metrics(config.metrics.metrics_listen)?;
        gauges::register_metrics();
        let Connections { pool, redis } = coupon_core::stores::connect(stores).await?;
        let consumer: StreamConsumer<GroupContext> = consumer_config(
            &stores.kafka_brokers,
            &config.group_id,
            config.group_instance_id.as_deref(),
            config.kafka_fetch_wait_ms,
        )
        .create_with_context(GroupContext)
        .context("creating the Kafka consumer")?;
        consumer
            .subscribe(&[&stores.kafka_issue_topic])
            .context("subscribing to the issue topic")?;
        let dead_letters = DeadLetters {
            producer: producer_config(&stores.kafka_brokers, stores.kafka_message_timeout())
                .create()
                .context("creating the dead-letter producer")?,
            topic: stores.kafka_dead_letter_topic.clone(),
        };
        let payments: StreamConsumer<GroupContext> = consumer_config(
            &stores.kafka_brokers,
            &format!("{}-payments", config.group_id),
            config.group_instance_id.as_deref(),
            config.kafka_fetch_wait_ms,
        )
        .create_with_context(GroupContext)
        .context("creating the payments consumer")?;
        payments
            .subscribe(&[&stores.kafka_payments_topic])
            .context("subscribing to the payments topic")?;
        Ok(Self {
            consumer,
            pool,
            payments,
            dead_letters,
            sweep_interval: config.sweep_interval(),
            sweep_batch: config.sweep_batch,
            events_topic: stores.kafka_events_topic.clone(),
            relay_interval: config.relay_interval(),
            relay_max_defer: config.relay_max_defer(),
            last_full_batch: std::sync::Mutex::default(),
            expiry_interval: config.expiry_interval(),
            expiring_soon: chrono::Duration::days(i64::from(config.expiring_soon_days)),
            archive_after: chrono::Duration::days(i64::from(config.archive_after_days)),
            admission: AdmissionStore::new(redis, RedisKeys::new(stores.redis_key_prefix.clone())),
            batch_max_messages: config.batch_max_messages.max(1),
            batch_max_wait: config.batch_max_wait(),
            retry: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(config.retry_max_delay())
                .with_jitter()
                .without_max_times(),
            metrics_sample_interval: config.metrics_sample_interval(),
            metrics_coupon_limit: config.metrics_coupon_limit,
            watermarks: Arc::new(
                ClientConfig::new()
                    .set("bootstrap.servers", &stores.kafka_brokers)
                    .create()
                    .context("creating the watermark client")?,
            ),
            stats: Arc::default(),
        })
    }

    /// Live counters of this consumer.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes issue messages and payment results and sweeps expired holds until `shutdown`
    /// fires. A batch being collected when it fires is still
    /// persisted and committed; a batch stuck retrying is abandoned uncommitted (it will be
    /// redelivered). Then the consumer leaves the group.
    ///
    /// # Errors
    /// Only set-up failures; message-level failures are retried or dead-lettered.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let stop = {
            let token = token.clone();
            async move {
                shutdown.await;
                token.cancel();
            }
        };
        let loops = async {
            tokio::join!(
                self.consume(&token),
                self.consume_payments(&token),
                self.sweep(&token),
                self.relay_events(&token),
                self.run_expiry_jobs(&token),
                self.sample_stock_gauges(&token),
            )
        };
        tokio::select! {
            _ = loops => {}
            () = async { stop.await; std::future::pending::<()>().await } => {}
        }
        tracing::info!("consumer stopped; leaving the groups");
        self.consumer.unsubscribe();
        self.payments.unsubscribe();
        Ok(())
    }

    async fn consume(&self, shutdown: &CancellationToken) {
        loop {
            let batch = self.next_batch(shutdown).await;
            if !batch.is_empty() && self.handle(&batch, shutdown).await.is_none() {
                tracing::warn!(
                    size = batch.len(),
                    "shutdown while retrying: batch left uncommitted"
                );
                return;
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Waits for a first message, then collects until the batch is full or `batch_max_wait`
    /// passed. Returns early (possibly empty) on shutdown.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Vec<OwnedMessage> {
        let mut batch = Vec::with_capacity(self.batch_max_messages);
        let first = tokio::select! {
            () = shutdown.cancelled() => return batch,
            received = self.consumer.recv() => received,
        };
        match first {
            Ok(message) => batch.push(message.detach()),
            Err(err) => {
                tracing::warn!(%err, "Kafka receive failed");
                return batch;
            }
        }
        let deadline = tokio::time::Instant::now() + self.batch_max_wait;
        while batch.len() < self.batch_max_messages {
            tokio::select! {
                () = shutdown.cancelled() => break,
                received = tokio::time::timeout_at(deadline, self.consumer.recv()) => match received {
                    Ok(Ok(message)) => batch.push(message.detach()),
                    Ok(Err(err)) => tracing::warn!(%err, "Kafka receive failed"),
                    Err(_elapsed) => break,
                },
            }
        }
        batch
    }

    /// Indexes of `issues` whose user is not in the coupon's admission set although the set
    /// exists: their admission was undone. That happens when the API's publish timed out
    /// after the broker had written the message but before it acknowledged it (a broker
    /// killed mid-request; librdkafka calls such a message "possibly persisted"): the user
    /// heard 503, and persisting the message would give them a coupon, and with it a unit
    /// that belongs to a user who heard 202. One `SMISMEMBER` per coupon in the batch. A
    /// coupon without Redis state (no stock key: Redis lost it and the API has not rebuilt it
    /// yet) cannot be checked and is persisted as before.
    async fn undone_admissions(
        &self,
        issues: &[IssueMessage],
    ) -> anyhow::Result<std::collections::HashSet<usize>> {
        let mut by_coupon: std::collections::BTreeMap<coupon_core::domain::CouponId, Vec<usize>> =
            Default::default();
        for (i, issue) in issues.iter().enumerate() {
            by_coupon.entry(issue.coupon_id).or_default().push(i);
        }
        let mut undone = std::collections::HashSet::new();
        for (coupon, indexes) in by_coupon {
            if !self.admission.is_prepared(coupon).await? {
                continue;
            }
            let users: Vec<i64> = indexes.iter().map(|&i| issues[i].user_id.get()).collect();
            let admitted = self.admission.admitted_among(coupon, &users).await?;
            undone.extend(
                indexes
                    .iter()
                    .zip(admitted)
                    .filter(|(_, admitted)| !admitted)
                    .map(|(&i, _)| i),
            );
        }
        Ok(undone)
    }

    /// Persists, dead-letters, broadcasts and commits one batch. `None` when shutdown came
    /// while a step was still failing (nothing committed).
    async fn handle(&self, batch: &[OwnedMessage], shutdown: &CancellationToken) -> Option<()> {
        let started = Instant::now();
        let mut issues = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for message in batch {
            match IssueMessage::from_json(message.payload().unwrap_or_default()) {
                Ok(issue) => {
                    issues.push(issue);
                    sources.push(message);
                }
                Err(err) => dead.push(DeadLetter {
                    message,
                    reason: "malformed",
                    detail: err.to_string(),
                }),
            }
        }

        if batch.len() >= self.batch_max_messages {
            self.note_full_batch();
        }
        let check = || self.undone_admissions(&issues);
        let undone = self.retrying("admission_check", check, shutdown).await?;
        if !undone.is_empty() {
            let mut index = 0;
            issues.retain(|_| {
                index += 1;
                !undone.contains(&(index - 1))
            });
            let mut kept_sources = Vec::with_capacity(sources.len());
            for (i, source) in sources.into_iter().enumerate() {
                if undone.contains(&i) {
                    dead.push(DeadLetter {
                        message: source,
                        reason: "admission_undone",
                        detail: "the user is not in the coupon's admission set".into(),
                    });
                } else {
                    kept_sources.push(source);
                }
            }
            sources = kept_sources;
        }
        let persist = || repository::persist_batch(&self.pool, &issues);
        let report: PersistReport = self.retrying("persist", persist, shutdown).await?;
        for &(index, rejection) in &report.rejected {
            let issue = &issues[index];
            dead.push(DeadLetter {
                message: sources[index],
                reason: rejection.as_str(),
                detail: format!("coupon {} user {}", issue.coupon_id, issue.user_id),
            });
        }
        if !dead.is_empty() {
            let send = || self.dead_letters.send(&dead);
            self.retrying("dead_letter", send, shutdown).await?;
        }

        for &coupon_id in &report.sold_out {
            let invalidation = Invalidation {
                coupon_id,
                reason: InvalidationReason::SoldOut,
            };
            if let Err(err) = self.admission.publish_invalidation(invalidation).await {
                tracing::warn!(%err, %coupon_id, "sold-out broadcast failed; caches expire by TTL");
            }
        }

        // The batch is durable: a commit that cannot even be queued only means redelivery,
        // which the unique key absorbs.
        if let Err(err) = self.commit(batch) {
            tracing::warn!(%err, "offset commit failed; the batch will be redelivered and skipped");
        }

        let inserted: u64 = report.inserted.values().sum();
        metrics::counter!(names::CONSUMER_BATCHES).increment(1);
        metrics::counter!(names::CONSUMER_MESSAGES).increment(batch.len() as u64);
        metrics::counter!(names::CONSUMER_ROWS_INSERTED).increment(inserted);
        metrics::counter!(names::CONSUMER_DUPLICATES_SKIPPED).increment(report.duplicates);
        metrics::histogram!(names::CONSUMER_BATCH_SIZE).record(batch.len() as f64);
        metrics::histogram!(names::CONSUMER_PERSIST_DURATION).record(started.elapsed());
        self.stats
            .dead_lettered
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        self.stats
            .messages_committed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats.batches_committed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            size = batch.len(),
            inserted,
            duplicates = report.duplicates,
            dead = dead.len(),
            "batch committed"
        );
        Some(())
    }

    /// Runs `attempt` until it succeeds, backing off exponentially and counting each failure in
    /// `coupon_consumer_retries_total{step}` (`step` one of [`RETRY_STEPS`]); `None` if
    /// `shutdown` fires first.
    pub(crate) async fn retrying<T, E, F, Fut>(
        &self,
        step: &'static str,
        attempt: F,
        shutdown: &CancellationToken,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let retried = attempt
            .retry(self.retry)
            .notify(|err: &E, pause: Duration| {
                self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::CONSUMER_RETRIES, "step" => step).increment(1);
                tracing::warn!(error = %err, ?pause, step, "failed; retrying");
            });
        tokio::select! {
            () = shutdown.cancelled() => None,
            result = retried => result.ok(),
        }
    }

    /// Commits, per partition, the offset after the batch's last message there. Offsets inside
    /// a partition arrive in order, so the whole batch being durable means everything below
    /// that offset is too. The commit is sent without waiting for the broker's answer (a failed
    /// one is logged by [`GroupContext`]): the batch is already durable, so a lost commit only
    /// means redelivery, which the unique key absorbs, and the next batch does not wait for a
    /// broker round trip.
    fn commit(&self, batch: &[OwnedMessage]) -> Result<(), rdkafka::error::KafkaError> {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for message in batch {
            let slot = next
                .entry((message.topic(), message.partition()))
                .or_insert(0);
            *slot = (*slot).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        self.consumer.commit(&offsets, CommitMode::Async)
    }
}
