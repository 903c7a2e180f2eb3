//! coupon-consumer configuration: the shared store settings plus batching and the group.

use std::time::Duration;

use coupon_core::config::{
    parse_days, parse_millis, parse_millis_or_off, parse_optional_addr, parse_secs, OptionalAddr,
    OptionalDuration, StoreConfig,
};

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
    #[arg(
        id = "batch_max_wait_ms",
        long = "batch-max-wait-ms",
        value_name = "BATCH_MAX_WAIT_MS",
        env = "BATCH_MAX_WAIT_MS",
        default_value = "50",
        value_parser = parse_millis
    )]
    pub batch_max_wait: Duration,

    /// Longest time (ms) the broker holds a fetch open waiting for data (librdkafka
    /// `fetch.wait.max.ms`, whose default is the same 500), for both group members (issue
    /// messages and payment results). Kafka answers as soon as there is data
    /// (`fetch.min.bytes`, 1 byte), so this bounds how long an idle fetch is held, not the
    /// delay from publish to persist; a shorter wait only sends idle fetches more often.
    #[arg(
        id = "kafka_fetch_wait_ms",
        long = "kafka-fetch-wait-ms",
        value_name = "KAFKA_FETCH_WAIT_MS",
        env = "KAFKA_FETCH_WAIT_MS",
        default_value = "500",
        value_parser = parse_millis
    )]
    pub kafka_fetch_wait: Duration,

    /// Pause (ms) between sweeps that release expired checkout holds.
    #[arg(
        id = "sweep_interval_ms",
        long = "sweep-interval-ms",
        value_name = "SWEEP_INTERVAL_MS",
        env = "SWEEP_INTERVAL_MS",
        default_value = "1000",
        value_parser = parse_millis
    )]
    pub sweep_interval: Duration,

    /// Most holds one sweep transaction releases (count).
    #[arg(long, env = "SWEEP_BATCH", default_value_t = 500)]
    pub sweep_batch: u32,

    /// Pause (ms) between polls of the event outbox when it was empty.
    #[arg(
        id = "relay_interval_ms",
        long = "relay-interval-ms",
        value_name = "RELAY_INTERVAL_MS",
        env = "RELAY_INTERVAL_MS",
        default_value = "200",
        value_parser = parse_millis
    )]
    pub relay_interval: Duration,

    /// Longest time (ms) the outbox relay stays paused while the issue consumer has a
    /// backlog (its last full batch came less than a second ago): a drop's issues are persisted
    /// first and their events follow. At least one relay batch runs per this interval, so
    /// events are never starved. 0 never pauses.
    #[arg(
        id = "relay_max_defer_ms",
        long = "relay-max-defer-ms",
        value_name = "RELAY_MAX_DEFER_MS",
        env = "RELAY_MAX_DEFER_MS",
        default_value = "5000",
        value_parser = parse_millis
    )]
    pub relay_max_defer: Duration,

    /// Pause (ms) between runs of the expiry jobs (EXPIRING_SOON notices, EXPIRED marks).
    #[arg(
        id = "expiry_interval_ms",
        long = "expiry-interval-ms",
        value_name = "EXPIRY_INTERVAL_MS",
        env = "EXPIRY_INTERVAL_MS",
        default_value = "60000",
        value_parser = parse_millis
    )]
    pub expiry_interval: Duration,

    /// Days before the end of validity that EXPIRING_SOON is sent (each coupon once).
    #[arg(
        id = "expiring_soon_days",
        long = "expiring-soon-days",
        value_name = "EXPIRING_SOON_DAYS",
        env = "EXPIRING_SOON_DAYS",
        default_value = "7",
        value_parser = parse_days
    )]
    pub expiring_soon: Duration,

    /// Days after its soft delete that a code moves to the archive tables.
    #[arg(
        id = "archive_after_days",
        long = "archive-after-days",
        value_name = "ARCHIVE_AFTER_DAYS",
        env = "ARCHIVE_AFTER_DAYS",
        default_value = "183",
        value_parser = parse_days
    )]
    pub archive_after: Duration,

    /// Pause (ms) between purges of expired idempotency keys, published outbox events past
    /// `OUTBOX_RETENTION_SECS` and finished jobs past `JOB_RETENTION_SECS`; 0 turns them off.
    #[arg(
        id = "purge_interval_ms",
        long = "purge-interval-ms",
        value_name = "PURGE_INTERVAL_MS",
        env = "PURGE_INTERVAL_MS",
        default_value = "60000",
        value_parser = parse_millis_or_off
    )]
    pub purge_interval: OptionalDuration,

    /// Most rows one purge statement deletes (count); each table is purged batch after batch,
    /// each its own short statement, until a batch comes back short.
    #[arg(long, env = "PURGE_BATCH", default_value_t = 1_000)]
    pub purge_batch: u32,

    /// How long (s) a published outbox event is kept after its publication (7 days by
    /// default); unpublished events are never purged.
    #[arg(
        id = "outbox_retention_secs",
        long = "outbox-retention-secs",
        value_name = "OUTBOX_RETENTION_SECS",
        env = "OUTBOX_RETENTION_SECS",
        default_value = "604800",
        value_parser = parse_secs
    )]
    pub outbox_retention: Duration,

    /// How long (s) a finished reconciliation job (DONE, FAILED), code generation job (DONE)
    /// or ended checkout hold is kept after it finished (30 days by default); running jobs and
    /// open holds are never purged.
    #[arg(
        id = "job_retention_secs",
        long = "job-retention-secs",
        value_name = "JOB_RETENTION_SECS",
        env = "JOB_RETENTION_SECS",
        default_value = "2592000",
        value_parser = parse_secs
    )]
    pub job_retention: Duration,

    /// Longest pause (ms) between retries of a batch that failed on a MySQL or Kafka error.
    #[arg(
        id = "retry_max_delay_ms",
        long = "retry-max-delay-ms",
        value_name = "RETRY_MAX_DELAY_MS",
        env = "RETRY_MAX_DELAY_MS",
        default_value = "5000",
        value_parser = parse_millis
    )]
    pub retry_max_delay: Duration,

    /// Longest time (ms) a stop waits for the work in hand: on SIGTERM each loop takes no new
    /// work and the batch in hand is still persisted and committed (a failing step is retried
    /// at once, then with back-off); whatever still fails this long after the signal is
    /// abandoned uncommitted and redelivered to the next member. Keep it below the
    /// orchestrator's kill timeout (Kubernetes: `terminationGracePeriodSeconds`, 30 s).
    #[arg(
        id = "shutdown_grace_ms",
        long = "shutdown-grace-ms",
        value_name = "SHUTDOWN_GRACE_MS",
        env = "SHUTDOWN_GRACE_MS",
        default_value = "10000",
        value_parser = parse_millis
    )]
    pub shutdown_grace: Duration,

    /// Pause (ms) between the periodic reconciliation passes (one instance at a time, under a
    /// MySQL named lock); 0 turns them off.
    #[arg(
        id = "reconcile_interval_ms",
        long = "reconcile-interval-ms",
        value_name = "RECONCILE_INTERVAL_MS",
        env = "RECONCILE_INTERVAL_MS",
        default_value = "60000",
        value_parser = parse_millis_or_off
    )]
    pub reconcile_interval: OptionalDuration,

    /// Wait (ms) between the two reads that must both show an admission as lost before a
    /// pass re-publishes it; at least the API's producer message timeout
    /// (`KAFKA_MESSAGE_TIMEOUT_MS`). Default: twice this process's message timeout.
    #[arg(
        id = "reconcile_grace_ms",
        long = "reconcile-grace-ms",
        value_name = "RECONCILE_GRACE_MS",
        env = "RECONCILE_GRACE_MS",
        value_parser = parse_millis
    )]
    pub reconcile_grace: Option<Duration>,

    /// How long (s) after its issue window closed a coupon is still reconciled by the
    /// periodic pass.
    #[arg(
        id = "reconcile_lookback_secs",
        long = "reconcile-lookback-secs",
        value_name = "RECONCILE_LOOKBACK_SECS",
        env = "RECONCILE_LOOKBACK_SECS",
        default_value = "86400",
        value_parser = parse_secs
    )]
    pub reconcile_lookback: Duration,

    /// How often the per-coupon gauges are sampled from MySQL and Redis (ms).
    #[arg(
        id = "metrics_sample_interval_ms",
        long = "metrics-sample-interval-ms",
        value_name = "METRICS_SAMPLE_INTERVAL_MS",
        env = "METRICS_SAMPLE_INTERVAL_MS",
        default_value = "5000",
        value_parser = parse_millis
    )]
    pub metrics_sample_interval: Duration,

    /// Most coupons given per-coupon gauges at once (count; monitoring/METRICS.md).
    #[arg(long, env = "METRICS_COUPON_LIMIT", default_value_t = 20)]
    pub metrics_coupon_limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        consumer: ConsumerConfig,
    }

    #[test]
    fn durations_keep_their_defaults() {
        let consumer = Cli::parse_from(["coupon-consumer"]).consumer;
        let ms = Duration::from_millis;
        let days = |n: u64| Duration::from_secs(n * 86_400);
        assert_eq!(consumer.batch_max_wait, ms(50));
        assert_eq!(consumer.kafka_fetch_wait, ms(500));
        assert_eq!(consumer.sweep_interval, ms(1_000));
        assert_eq!(consumer.relay_interval, ms(200));
        assert_eq!(consumer.relay_max_defer, ms(5_000));
        assert_eq!(consumer.expiry_interval, ms(60_000));
        assert_eq!(consumer.expiring_soon, days(7));
        assert_eq!(consumer.archive_after, days(183));
        assert_eq!(consumer.purge_interval, Some(ms(60_000)));
        assert_eq!(consumer.outbox_retention, Duration::from_secs(604_800));
        assert_eq!(consumer.job_retention, Duration::from_secs(2_592_000));
        assert_eq!(consumer.retry_max_delay, ms(5_000));
        assert_eq!(consumer.shutdown_grace, ms(10_000));
        assert_eq!(consumer.reconcile_interval, Some(ms(60_000)));
        assert_eq!(consumer.reconcile_grace, None);
        assert_eq!(consumer.reconcile_lookback, Duration::from_secs(86_400));
        assert_eq!(consumer.metrics_sample_interval, ms(5_000));
    }

    #[test]
    fn a_periodic_job_set_to_zero_is_off() {
        let consumer = Cli::parse_from([
            "coupon-consumer",
            "--purge-interval-ms",
            "0",
            "--reconcile-interval-ms",
            "0s",
        ])
        .consumer;
        assert_eq!(consumer.purge_interval, None);
        assert_eq!(consumer.reconcile_interval, None);
    }

    #[test]
    fn a_duration_flag_keeps_its_name_and_its_unit() {
        let consumer = Cli::parse_from([
            "coupon-consumer",
            "--reconcile-grace-ms",
            "200",
            "--outbox-retention-secs",
            "1h",
            "--archive-after-days",
            "30",
            "--kafka-fetch-wait-ms",
            "1s",
        ])
        .consumer;
        assert_eq!(consumer.reconcile_grace, Some(Duration::from_millis(200)));
        assert_eq!(consumer.outbox_retention, Duration::from_secs(3_600));
        assert_eq!(consumer.archive_after, Duration::from_secs(30 * 86_400));
        assert_eq!(consumer.kafka_fetch_wait, Duration::from_millis(1_000));
    }
}
