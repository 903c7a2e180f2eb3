//! Consumer-side gauges: lag per partition from librdkafka's statistics, and the per-coupon
//! stock gauges sampled from MySQL and Redis (monitoring/METRICS.md).

use chrono::Utc;
use coupon_core::queries;
use coupon_core::telemetry::names;
use rdkafka::consumer::ConsumerContext;
use rdkafka::{ClientContext, Statistics};
use tokio_util::sync::CancellationToken;

use crate::IssueConsumer;

/// How often librdkafka emits its statistics, which carry each partition's lag (ms).
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// How long after its issue window closed a coupon keeps its gauges.
const CLOSED_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// Client context of the group members: turns librdkafka's statistics
/// (<https://github.com/confluentinc/librdkafka/blob/master/STATISTICS.md>, `consumer_lag` =
/// high watermark − committed offset) into `coupon_consumer_lag_messages{topic, partition}`.
/// Partitions this member is not assigned, and those whose lag is not known yet (-1, before the
/// first fetch or commit), are left out.
pub struct LagContext;

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, state) in &statistics.topics {
            for (&partition, p) in &state.partitions {
                if partition < 0 || !p.desired || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    names::CONSUMER_LAG,
                    "topic" => topic.clone(), "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

impl IssueConsumer {
    /// Sets the `coupon_policy_*` gauges every `METRICS_SAMPLE_INTERVAL_MS` until `shutdown`:
    /// stock and `issued_quantity` from MySQL, admitted from the Redis set's `SCARD`, for the
    /// coupons of [`queries::live_stocks`]. A failed sample is logged and skipped (the gauges
    /// keep their last value until the exporter's idle timeout).
    pub(crate) async fn sample_stock_gauges(&self, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(self.metrics_sample_interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.sample_stock_gauges_once().await {
                tracing::warn!(error = %err, "sampling the per-coupon gauges failed");
            }
        }
    }

    async fn sample_stock_gauges_once(&self) -> anyhow::Result<()> {
        let now = Utc::now();
        let live = queries::live_stocks(
            &self.pool,
            now,
            now - CLOSED_GRACE,
            self.metrics_coupon_limit,
        )
        .await?;
        for stock in live {
            let admitted = self.admission.admitted_count(stock.coupon_id).await?;
            let coupon = stock.coupon_id.to_string();
            let set = |name: &'static str, value: i64| {
                metrics::gauge!(name, "coupon_id" => coupon.clone()).set(value as f64);
            };
            set(names::POLICY_STOCK, stock.total);
            set(names::POLICY_ADMITTED, admitted);
            set(names::POLICY_ISSUED, stock.issued);
            set(names::POLICY_REMAINING, (stock.total - admitted).max(0));
        }
        Ok(())
    }
}

/// Registers the consumer's counters and histograms before the first batch (the gauges appear
/// with their first sample).
pub fn register_metrics() {
    for name in [
        names::CONSUMER_MESSAGES,
        names::CONSUMER_BATCHES,
        names::CONSUMER_ROWS_INSERTED,
        names::CONSUMER_DUPLICATES_SKIPPED,
        names::RESERVATIONS_RELEASED,
        names::EVENTS_PUBLISHED,
        names::ISSUES_EXPIRED,
        names::CODES_ARCHIVED,
    ] {
        metrics::counter!(name).increment(0);
    }
    let _ = metrics::histogram!(names::CONSUMER_BATCH_SIZE);
    let _ = metrics::histogram!(names::CONSUMER_PERSIST_DURATION);
    for status in ["completed", "failed"] {
        metrics::counter!(names::PAYMENT_RESULTS, "status" => status).increment(0);
    }
    for reason in crate::dead_letter::REASONS {
        metrics::counter!(names::CONSUMER_DEAD_LETTERS, "reason" => reason).increment(0);
    }
    for step in crate::RETRY_STEPS {
        metrics::counter!(names::CONSUMER_RETRIES, "step" => step).increment(0);
    }
}
