//! Tracing and metrics set-up shared by both services.

use std::io::BufWriter;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use metrics_util::MetricKindMask;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub mod otlp;

/// What keeps logs and traces flowing: hold it until the process ends. Dropping it writes out
/// the log lines still queued and flushes the OTLP export.
pub struct TelemetryGuard {
    _traces: Option<otlp::OtlpExport>,
    _logs: WorkerGuard,
}

/// Installs the global tracing subscriber, writing to stderr (stdout stays free for what a
/// command prints): `RUST_LOG` filters (default `info`), and `LOG_FORMAT=json` switches to one
/// JSON object per line. Lines are written by a thread of their own through a buffer
/// (`tracing-appender`'s non-blocking writer, never dropping a line: a full queue of 128,000
/// lines makes the logging thread wait), so a burst of lines, such as coupon-consumer's line
/// per persisted row, costs one `write(2)` per burst rather than one per line. When the
/// environment names an OTLP endpoint ([`otlp::endpoint_from_env`]), spans are also exported
/// there as `service` (`coupon-api`, `coupon-consumer`). Safe to call more than once (later
/// calls install nothing).
///
/// # Errors
/// The OTLP exporter cannot be built from the configured endpoint.
pub fn init_tracing(service: &'static str) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let url = otlp::endpoint_from_env();
    let (traces, otlp_layer) = match &url {
        Some(url) => {
            let (export, layer) = otlp::OtlpExport::start(service, url)?;
            (Some(export), Some(layer))
        }
        None => (None, None),
    };
    let (writer, logs) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter).with(otlp_layer);
    let installed = if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()
    };
    if let (Ok(()), Some(url)) = (installed, url) {
        tracing::info!(%url, "exporting traces over OTLP");
    }
    Ok(TelemetryGuard {
        _traces: traces,
        _logs: logs,
    })
}

/// Histogram buckets (seconds) for every `*_duration_seconds` metric: 0.1 ms to 10 s. 15 ms (the
/// benchmark's p99 target) and 250 ms (the latency alert's threshold) are bounds, so
/// `histogram_quantile` is exact there.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Histogram buckets (messages) for batch sizes.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// A gauge not set for this long is dropped from the export, which is how the per-coupon
/// gauges of coupons no longer sampled disappear (monitoring/METRICS.md, cardinality rule).
/// Every other gauge is set at least every few seconds.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Names of the exported metrics. `monitoring/METRICS.md` is the catalogue (types, labels, the
/// cardinality rule); dashboards and alert rules query exactly these.
pub mod names {
    /// Counter, labels `method`, `route`, `status_class`, `outcome`: HTTP requests answered.
    pub const HTTP_REQUESTS: &str = "http_requests_total";
    /// Histogram (seconds), labels `method`, `route`, `status_class`: request to response head.
    pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
    /// Counter, label `outcome`: FCFS issue answers.
    pub const ISSUE_REQUESTS: &str = "coupon_issue_requests_total";
    /// Counter: admissions undone because the publish failed.
    pub const ISSUE_ADMISSION_ROLLBACKS: &str = "coupon_issue_admission_rollbacks_total";
    /// Histogram (seconds), label `script`: one admission or undo script call.
    pub const REDIS_SCRIPT_DURATION: &str = "coupon_redis_script_duration_seconds";
    /// Counter, label `op`: failed Redis calls on the issue path.
    pub const REDIS_ERRORS: &str = "coupon_redis_errors_total";
    /// Histogram (seconds): publish until the broker's acknowledgement.
    pub const KAFKA_PRODUCE_DURATION: &str = "coupon_kafka_produce_duration_seconds";
    /// Counter: publishes not acknowledged.
    pub const KAFKA_PRODUCE_ERRORS: &str = "coupon_kafka_produce_errors_total";
    /// Gauge (messages): librdkafka's queue plus in-flight requests.
    pub const KAFKA_PRODUCER_QUEUE: &str = "coupon_kafka_producer_queue_messages";
    /// Gauge, 1 or 0: whether the issue topic keeps acknowledged messages across the loss of
    /// one broker (at least 2 replicas, `min.insync.replicas` at least 2, no unclean leader
    /// election), as checked at start-up; absent when the check could not run.
    pub const KAFKA_ISSUE_TOPIC_DURABLE: &str = "coupon_kafka_issue_topic_durable";
    /// Counter, label `result` (`hit`, `miss`): local policy cache lookups.
    pub const POLICY_CACHE_REQUESTS: &str = "coupon_policy_cache_requests_total";
    /// Counter: issue messages in persisted batches.
    pub const CONSUMER_MESSAGES: &str = "coupon_consumer_messages_total";
    /// Counter: batches persisted and committed.
    pub const CONSUMER_BATCHES: &str = "coupon_consumer_batches_total";
    /// Histogram (messages): messages per batch.
    pub const CONSUMER_BATCH_SIZE: &str = "coupon_consumer_batch_size";
    /// Histogram (seconds): persisting one batch, dead letters and commit included.
    pub const CONSUMER_PERSIST_DURATION: &str = "coupon_consumer_persist_duration_seconds";
    /// Counter: rows inserted into `coupon_issues`.
    pub const CONSUMER_ROWS_INSERTED: &str = "coupon_consumer_rows_inserted_total";
    /// Counter: messages whose row already existed.
    pub const CONSUMER_DUPLICATES_SKIPPED: &str = "coupon_consumer_duplicates_skipped_total";
    /// Counter, label `reason`: messages sent to the dead-letter topic.
    pub const CONSUMER_DEAD_LETTERS: &str = "coupon_consumer_dead_letters_total";
    /// Counter, label `step`: failed attempts retried with backoff.
    pub const CONSUMER_RETRIES: &str = "coupon_consumer_retries_total";
    /// Gauge (messages), labels `topic`, `partition`: high watermark minus committed offset.
    pub const CONSUMER_LAG: &str = "coupon_consumer_lag_messages";
    /// Gauge, label `coupon_id`: `total_quantity` of a sampled coupon.
    pub const POLICY_STOCK: &str = "coupon_policy_stock";
    /// Gauge, label `coupon_id`: size of the Redis admission set.
    pub const POLICY_ADMITTED: &str = "coupon_policy_admitted";
    /// Gauge, label `coupon_id`: `issued_quantity` in MySQL.
    pub const POLICY_ISSUED: &str = "coupon_policy_issued";
    /// Gauge, label `coupon_id`: stock minus admitted.
    pub const POLICY_REMAINING: &str = "coupon_policy_remaining";
    /// Counter, label `status` (`completed`, `failed`): payment results applied.
    pub const PAYMENT_RESULTS: &str = "coupon_consumer_payment_results_total";
    /// Counter, label `reason` (`no_hold`, `already_settled`, `after_release`): payment results
    /// that changed nothing (`coupon_core::redemption::Unchanged`).
    pub const PAYMENT_RESULTS_UNCHANGED: &str = "coupon_consumer_payment_results_unchanged_total";
    /// Counter: coupons confirmed by a `COMPLETED` that arrived after their hold was released,
    /// the coupon being still free.
    pub const PAYMENTS_CONFIRMED_AFTER_RELEASE: &str =
        "coupon_consumer_payments_confirmed_after_release_total";
    /// Counter: reservation holds released by the sweeper.
    pub const RESERVATIONS_RELEASED: &str = "coupon_reservations_released_total";
    /// Counter: events published from the outbox.
    pub const EVENTS_PUBLISHED: &str = "coupon_events_published_total";
    /// Counter: issued coupons marked EXPIRED.
    pub const ISSUES_EXPIRED: &str = "coupon_issues_expired_total";
    /// Counter: soft-deleted codes moved to the archive.
    pub const CODES_ARCHIVED: &str = "coupon_codes_archived_total";
    /// Counter: codes written by generation jobs.
    pub const CODES_GENERATED: &str = "coupon_codes_generated_total";
    /// Gauge: the issue path's Redis circuit breaker, 0 closed, 1 half-open, 2 open.
    pub const REDIS_CIRCUIT_STATE: &str = "coupon_redis_circuit_state";
    /// Counter: Redis calls refused by the open circuit breaker.
    pub const REDIS_CIRCUIT_REJECTED: &str = "coupon_redis_circuit_rejected_total";
    /// Counter: requests refused 429 by a rate limit, by `scope` (`user`, `ip`).
    pub const RATE_LIMITED: &str = "coupon_rate_limited_total";
    /// Repairs made by coupon-consumer's periodic reconciliation (counter; `kind`).
    pub const RECONCILIATION_REPAIRS: &str = "coupon_reconciliation_repairs_total";
    /// Periodic reconciliation passes (counter; `outcome`: done, skipped, failed).
    pub const RECONCILIATION_PASSES: &str = "coupon_reconciliation_passes_total";
    /// Rows deleted by coupon-consumer's purge (counter; `table`: idempotency_keys,
    /// coupon_events, reconciliation_jobs, code_generation_jobs).
    pub const PURGED: &str = "coupon_purged_rows_total";
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the global Prometheus recorder and serves `GET /metrics` on `listen`, a port apart
/// from public traffic. Must run inside a Tokio runtime. Only the first call in a process
/// installs anything (the recorder is process-global); later calls return `Ok`.
///
/// # Errors
/// The listener cannot bind or the recorder cannot be installed.
pub fn install_metrics(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    if INSTALLED.set(()).is_err() {
        return Ok(());
    }
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("batch_size".into()), BATCH_SIZE_BUCKETS)?
        .install()
        .with_context(|| format!("serving metrics on {listen}"))
}
