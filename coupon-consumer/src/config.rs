//! coupon-consumer configuration: the shared store settings plus batching and the group.

use std::time::Duration;

use coupon_core::config::{parse_optional_addr, OptionalAddr, StoreConfig};

/// The consumer's default `METRICS_LISTEN`: coupon-api's default (`127.0.0.1:9464`) plus one,
/// so both services start side by side with their defaults.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9465";

/// Everything coupon-consumer reads at start-up (flags or environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerConfig {
    /// MySQL, Redis and Kafka settings.
    #[command(flatten)]
    pub stores: StoreConfig,

    /// Address of the Prometheus `/metrics` endpoint, apart from public traffic. `off`
    /// disables it.
    #[arg(long, env = "METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN, value_parser = parse_optional_addr)]
    pub metrics_listen: OptionalAddr,

    /// Kafka consumer group id; every instance of the group shares the issue topic's partitions.
    #[arg(long, env = "KAFKA_CONSUMER_GROUP", default_value = "coupon-consumer")]
    pub group_id: String,

    /// Static group membership (KIP-345): this instance's stable id in the group, e.g. the
    /// pod or host name. A restarted instance with the same id takes its partitions back as
    /// soon as it rejoins, without waiting for the session timeout and without a rebalance of
    /// the other members. Without it, an instance killed without leaving the group (SIGKILL,
    /// a lost host) keeps its partitions, unconsumed, until its session expires, and only
    /// then does a rebalance hand them out: `session.timeout.ms`, 10 s here
    /// ([`crate::consumer_config`]; librdkafka's default is 45 s). Two instances must never
    /// share an id: the later one fences the earlier out of the group. Unset: dynamic
    /// membership.
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,

    /// Most messages persisted in one MySQL transaction (count).
    #[arg(long, env = "BATCH_MAX_MESSAGES", default_value_t = 500)]
    pub batch_max_messages: usize,

    /// Longest wait (ms) for a batch to fill once its first message arrived.
    #[arg(long, env = "BATCH_MAX_WAIT_MS", default_value_t = 50)]
    pub batch_max_wait_ms: u64,

    /// Longest time (ms) the broker holds a fetch open waiting for data (librdkafka
    /// `fetch.wait.max.ms`, whose default is the same 500), for both group members (issue
    /// messages and payment results). Kafka answers as soon as there is data
    /// (`fetch.min.bytes`, 1 byte), so this bounds how long an idle fetch is held, not the
    /// delay from publish to persist; a shorter wait only sends idle fetches more often.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = 500)]
    pub kafka_fetch_wait_ms: u32,

    /// Pause (ms) between sweeps that release expired checkout holds.
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value_t = 1_000)]
    pub sweep_interval_ms: u64,

    /// Most holds one sweep transaction releases (count).
    #[arg(long, env = "SWEEP_BATCH", default_value_t = 500)]
    pub sweep_batch: u32,

    /// Pause (ms) between polls of the event outbox when it was empty.
    #[arg(long, env = "RELAY_INTERVAL_MS", default_value_t = 200)]
    pub relay_interval_ms: u64,

    /// Longest time (ms) the outbox relay stays paused while the issue consumer has a
    /// backlog (its last full batch came less than a second ago): a drop's issues are persisted
    /// first and their events follow. At least one relay batch runs per this interval, so
    /// events are never starved. 0 never pauses.
    #[arg(long, env = "RELAY_MAX_DEFER_MS", default_value_t = 5_000)]
    pub relay_max_defer_ms: u64,

    /// Pause (ms) between runs of the expiry jobs (EXPIRING_SOON notices, EXPIRED marks).
    #[arg(long, env = "EXPIRY_INTERVAL_MS", default_value_t = 60_000)]
    pub expiry_interval_ms: u64,

    /// Days before the end of validity that EXPIRING_SOON is sent (each coupon once).
    #[arg(long, env = "EXPIRING_SOON_DAYS", default_value_t = 7)]
    pub expiring_soon_days: u32,

    /// Days after its soft delete that a code moves to the archive tables.
    #[arg(long, env = "ARCHIVE_AFTER_DAYS", default_value_t = 183)]
    pub archive_after_days: u32,

    /// Pause (ms) between purges of expired idempotency keys, published outbox events past
    /// `OUTBOX_RETENTION_SECS` and finished jobs past `JOB_RETENTION_SECS`; 0 turns them off.
    #[arg(long, env = "PURGE_INTERVAL_MS", default_value_t = 60_000)]
    pub purge_interval_ms: u64,

    /// Most rows one purge statement deletes (count); each table is purged batch after batch,
    /// each its own short statement, until a batch comes back short.
    #[arg(long, env = "PURGE_BATCH", default_value_t = 1_000)]
    pub purge_batch: u32,

    /// How long (s) a published outbox event is kept after its publication (7 days by
    /// default); unpublished events are never purged.
    #[arg(long, env = "OUTBOX_RETENTION_SECS", default_value_t = 604_800)]
    pub outbox_retention_secs: u64,

    /// How long (s) a finished reconciliation job (DONE, FAILED), code generation job (DONE)
    /// or ended checkout hold is kept after it finished (30 days by default); running jobs and
    /// open holds are never purged.
    #[arg(long, env = "JOB_RETENTION_SECS", default_value_t = 2_592_000)]
    pub job_retention_secs: u64,

    /// Longest pause (ms) between retries of a batch that failed on a MySQL or Kafka error.
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 5_000)]
    pub retry_max_delay_ms: u64,

    /// Longest time (ms) a stop waits for the work in hand: on SIGTERM each loop takes no new
    /// work and the batch in hand is still persisted and committed (a failing step is retried
    /// at once, then with back-off); whatever still fails this long after the signal is
    /// abandoned uncommitted and redelivered to the next member. Keep it below the
    /// orchestrator's kill timeout (Kubernetes: `terminationGracePeriodSeconds`, 30 s).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Pause (ms) between the periodic reconciliation passes (one instance at a time, under a
    /// MySQL named lock); 0 turns them off.
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 60_000)]
    pub reconcile_interval_ms: u64,

    /// Wait (ms) between the two reads that must both show an admission as lost before a
    /// pass re-publishes it; at least the API's producer message timeout
    /// (`KAFKA_MESSAGE_TIMEOUT_MS`). Default: twice this process's message timeout.
    #[arg(long, env = "RECONCILE_GRACE_MS")]
    pub reconcile_grace_ms: Option<u64>,

    /// How long (s) after its issue window closed a coupon is still reconciled by the
    /// periodic pass.
    #[arg(long, env = "RECONCILE_LOOKBACK_SECS", default_value_t = 86_400)]
    pub reconcile_lookback_secs: u64,

    /// How often the per-coupon gauges are sampled from MySQL and Redis (ms).
    #[arg(long, env = "METRICS_SAMPLE_INTERVAL_MS", default_value_t = 5_000)]
    pub metrics_sample_interval_ms: u64,

    /// Most coupons given per-coupon gauges at once (count; monitoring/METRICS.md).
    #[arg(long, env = "METRICS_COUPON_LIMIT", default_value_t = 20)]
    pub metrics_coupon_limit: u32,
}

impl ConsumerConfig {
    /// [`Self::reconcile_interval_ms`] as a [`Duration`]; `None` when off.
    pub fn reconcile_interval(&self) -> Option<Duration> {
        (self.reconcile_interval_ms > 0).then(|| Duration::from_millis(self.reconcile_interval_ms))
    }

    /// [`Self::reconcile_grace_ms`], or twice the producer's message timeout.
    pub fn reconcile_grace(&self) -> Duration {
        self.reconcile_grace_ms.map_or(
            self.stores.kafka_message_timeout() * 2,
            Duration::from_millis,
        )
    }

    /// [`Self::purge_interval_ms`] as a [`Duration`]; `None` when off.
    pub fn purge_interval(&self) -> Option<Duration> {
        (self.purge_interval_ms > 0).then(|| Duration::from_millis(self.purge_interval_ms))
    }

    /// [`Self::relay_interval_ms`] as a [`Duration`].
    pub fn relay_interval(&self) -> Duration {
        Duration::from_millis(self.relay_interval_ms)
    }

    /// [`Self::relay_max_defer_ms`] as a [`Duration`].
    pub fn relay_max_defer(&self) -> Duration {
        Duration::from_millis(self.relay_max_defer_ms)
    }

    /// [`Self::expiry_interval_ms`] as a [`Duration`].
    pub fn expiry_interval(&self) -> Duration {
        Duration::from_millis(self.expiry_interval_ms)
    }

    /// [`Self::sweep_interval_ms`] as a [`Duration`].
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }

    /// [`Self::batch_max_wait_ms`] as a [`Duration`].
    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }

    /// [`Self::metrics_sample_interval_ms`] as a [`Duration`].
    pub fn metrics_sample_interval(&self) -> Duration {
        Duration::from_millis(self.metrics_sample_interval_ms)
    }

    /// [`Self::shutdown_grace_ms`] as a [`Duration`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// [`Self::retry_max_delay_ms`] as a [`Duration`].
    pub fn retry_max_delay(&self) -> Duration {
        Duration::from_millis(self.retry_max_delay_ms)
    }
}
