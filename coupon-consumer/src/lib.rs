//! `coupon-consumer`: the Kafka consumer group member that persists issue messages to MySQL,
//! and the background jobs that keep coupons moving after they are issued.
//!
//! [`Application`] builds eight loops, each its own type owning just what it needs, and runs them
//! under one [`retry::Shutdown`]:
//! - [`issues::IssueConsumer`]: issue messages into rows, in batches;
//! - [`payments::PaymentConsumer`]: payment results confirm or release checkout holds;
//! - [`sweeper::HoldSweeper`]: releases holds whose time ran out;
//! - [`outbox::OutboxRelay`]: publishes the event outbox to the events topic;
//! - [`expiry::ExpiryJobs`]: expiry notices and marks, code archival;
//! - [`gauges::GaugeSampler`]: consumer lag and per-coupon stock gauges;
//! - [`reconcile::PeriodicReconciliation`]: the reconciliation pass, one instance at a time;
//! - [`purge::PurgeJobs`]: deletes expired idempotency keys, published events and finished
//!   jobs past their retention.

pub mod config;
pub mod dead_letter;
pub mod expiry;
pub mod gauges;
pub mod issues;
pub mod outbox;
pub mod payments;
pub mod purge;
pub mod reconcile;
pub mod retry;
pub mod sweeper;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coupon_core::issue::admission::{AdmissionStore, InvalidationBroadcast, RedisKeys};
use coupon_core::issue::recovery::IssueLog;
use coupon_core::store::kafka::{producer_config, IssuePublisher};
use coupon_core::store::Connections;
use coupon_core::telemetry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;

use crate::config::ConsumerConfig;
use crate::dead_letter::DeadLetters;
use crate::expiry::ExpiryJobs;
use crate::gauges::{GaugeSampler, GroupContext};
use crate::issues::IssueConsumer;
use crate::outbox::{Backlog, OutboxRelay};
use crate::payments::PaymentConsumer;
use crate::purge::PurgeJobs;
use crate::reconcile::PeriodicReconciliation;
use crate::retry::{Retrier, Shutdown};
use crate::sweeper::HoldSweeper;

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
    /// Payment results applied or dead-lettered, one per message handled (count).
    pub payments_applied: AtomicU64,
    /// Checkout holds released by the sweeper (count).
    pub holds_released: AtomicU64,
    /// Events published from the outbox (count).
    pub events_published: AtomicU64,
    /// Repairs made by the periodic reconciliation (count).
    pub reconciliation_repairs: AtomicU64,
}

/// Client settings of the group member: offsets are committed by hand, only after the batch is
/// durable (`enable.auto.commit=false`), and a new group starts from the earliest offset so no
/// message published before the first consumer joined is skipped. `session.timeout.ms=10000`:
/// a member that died without leaving the group is given up, and its partitions handed to the
/// others, after 10 s (librdkafka's default is 45 s; the broker accepts 6 s to 30 min,
/// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`). A fetch waits at most
/// `fetch_wait` for data ([`ConsumerConfig::kafka_fetch_wait`]). With `instance_id`, the
/// member is static (`group.instance.id`, [`ConsumerConfig::group_instance_id`]).
pub fn consumer_config(
    brokers: &str,
    group_id: &str,
    instance_id: Option<&str>,
    fetch_wait: Duration,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        .set("socket.connection.setup.timeout.ms", "3000");
    if let Some(id) = instance_id {
        config.set("group.instance.id", id);
    }
    config
}

/// A built consumer: its eight loops, ready to run.
pub struct Application {
    issues: IssueConsumer,
    payments: PaymentConsumer,
    sweeper: HoldSweeper,
    relay: OutboxRelay,
    expiry: ExpiryJobs,
    gauges: GaugeSampler,
    reconciliation: PeriodicReconciliation,
    purge: PurgeJobs,
    shutdown_grace: Duration,
    stats: Arc<ConsumerStats>,
}

impl Application {
    /// Connects to MySQL (creating the database and applying migrations), Redis and Kafka
    /// (creating topics when configured to), joins the two consumer groups and builds the
    /// loops.
    ///
    /// # Errors
    /// A store is unreachable, a client configuration is refused, or the metrics address is
    /// taken.
    pub async fn build(config: &ConsumerConfig) -> anyhow::Result<Self> {
        let stores = &config.stores;
        let calendar_span = |setting: &str, span| {
            chrono::Duration::from_std(span).with_context(|| format!("{setting} is too long"))
        };
        let expiring_soon = calendar_span("EXPIRING_SOON_DAYS", config.expiring_soon)?;
        let archive_after = calendar_span("ARCHIVE_AFTER_DAYS", config.archive_after)?;
        telemetry::install_metrics(config.metrics_listen)?;
        gauges::register_metrics();
        reconcile::register_metrics();
        purge::register_metrics();
        let Connections {
            pool,
            redis,
            issue_topic,
        } = coupon_core::store::connect(stores).await?;
        let keys = RedisKeys::new(stores.redis.key_prefix.clone());
        let broadcast = InvalidationBroadcast::new(redis.clone(), keys.clone());
        let admission = AdmissionStore::new(redis, keys);
        let member = |group: &str, topic: &str, what: &str| -> anyhow::Result<_> {
            let consumer: StreamConsumer<GroupContext> = consumer_config(
                &stores.kafka.brokers,
                group,
                config.group_instance_id.as_deref(),
                config.kafka_fetch_wait,
            )
            .create_with_context(GroupContext)
            .with_context(|| format!("creating the {what} consumer"))?;
            consumer
                .subscribe(&[topic])
                .with_context(|| format!("subscribing to the {what} topic"))?;
            Ok(Arc::new(consumer))
        };
        let issue_member = member(&config.group_id, &stores.kafka.issue_topic, "issue")?;
        let payments_member = member(
            &format!("{}-payments", config.group_id),
            &stores.kafka.payments_topic,
            "payments",
        )?;
        let producer = |what: &str| {
            producer_config(&stores.kafka.brokers, stores.kafka.message_timeout)
                .create()
                .with_context(|| format!("creating the {what} producer"))
        };
        let dead_letters = DeadLetters {
            producer: producer("dead-letter")?,
            topic: stores.kafka.dead_letter_topic.clone(),
        };
        let stats = Arc::new(ConsumerStats::default());
        let retry = Retrier::new(config.retry_max_delay, Arc::clone(&stats));
        let backlog = Backlog::default();
        Ok(Self {
            gauges: GaugeSampler {
                members: vec![Arc::clone(&issue_member), Arc::clone(&payments_member)],
                watermarks: Arc::new(
                    ClientConfig::new()
                        .set("bootstrap.servers", &stores.kafka.brokers)
                        .create()
                        .context("creating the watermark client")?,
                ),
                pool: pool.clone(),
                admission: admission.clone(),
                interval: config.metrics_sample_interval,
                coupon_limit: config.metrics_coupon_limit,
                issue_topic,
            },
            issues: IssueConsumer {
                consumer: issue_member,
                pool: pool.clone(),
                admission: admission.clone(),
                broadcast,
                dead_letters: dead_letters.clone(),
                batch_max_messages: config.batch_max_messages.max(1),
                batch_max_wait: config.batch_max_wait,
                retry: retry.clone(),
                backlog: backlog.clone(),
                stats: Arc::clone(&stats),
            },
            payments: PaymentConsumer {
                consumer: payments_member,
                pool: pool.clone(),
                dead_letters,
                retry,
                stats: Arc::clone(&stats),
            },
            sweeper: HoldSweeper {
                pool: pool.clone(),
                interval: config.sweep_interval,
                batch: config.sweep_batch.max(1),
                stats: Arc::clone(&stats),
            },
            relay: OutboxRelay {
                pool: pool.clone(),
                producer: producer("outbox relay")?,
                topic: stores.kafka.events_topic.clone(),
                interval: config.relay_interval,
                max_defer: config.relay_max_defer,
                backlog,
                stats: Arc::clone(&stats),
            },
            purge: PurgeJobs {
                pool: pool.clone(),
                interval: config.purge_interval,
                batch: config.purge_batch,
                outbox_retention: config.outbox_retention,
                job_retention: config.job_retention,
            },
            expiry: ExpiryJobs {
                pool: pool.clone(),
                interval: config.expiry_interval,
                expiring_soon,
                archive_after,
            },
            reconciliation: PeriodicReconciliation {
                pool,
                admission,
                log: IssueLog::new(stores, &config.group_id),
                publisher: IssuePublisher::new(
                    &stores.kafka.brokers,
                    &stores.kafka.issue_topic,
                    stores.kafka.message_timeout,
                )
                .context("creating the reconciliation's issue producer")?,
                interval: config.reconcile_interval,
                grace: config
                    .reconcile_grace
                    .unwrap_or(stores.kafka.message_timeout * 2),
                lookback: config.reconcile_lookback,
                stats: Arc::clone(&stats),
            },
            shutdown_grace: config.shutdown_grace,
            stats,
        })
    }

    /// Live counters of this consumer.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        Arc::clone(&self.stats)
    }

    /// Runs every loop until `signal` completes, then stops them ([`retry::Shutdown`]): each
    /// loop takes no new work, the batch in hand is still persisted and committed, and
    /// whatever is still failing `SHUTDOWN_GRACE_MS` after the signal is abandoned uncommitted
    /// (it will be redelivered). Then the consumer leaves its groups.
    ///
    /// # Errors
    /// None today (message-level failures are retried or dead-lettered); the `Result` leaves
    /// room for a loop that can fail.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let shutdown = Shutdown::default();
        let stages = async {
            signal.await;
            tracing::info!(grace = ?self.shutdown_grace, "stopping: finishing the work in hand");
            shutdown.stop();
            tokio::time::sleep(self.shutdown_grace).await;
            shutdown.abandon();
            std::future::pending::<()>().await;
        };
        let loops = async {
            tokio::join!(
                self.issues.run(&shutdown),
                self.payments.run(&shutdown),
                self.sweeper.run(&shutdown),
                self.relay.run(&shutdown),
                self.expiry.run(&shutdown),
                self.gauges.run(&shutdown),
                self.reconciliation.run(&shutdown),
                self.purge.run(&shutdown),
            )
        };
        tokio::select! {
            _ = loops => {}
            () = stages => {}
        }
        tracing::info!("consumer stopped; leaving the groups");
        self.issues.consumer.unsubscribe();
        self.payments.consumer.unsubscribe();
        Ok(())
    }
}
