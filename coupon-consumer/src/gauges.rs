//! Consumer-side gauges: lag per partition (high watermark minus position), and the per-coupon
//! stock gauges sampled from MySQL and Redis (monitoring/METRICS.md).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coupon_core::issue::admission::AdmissionStore;
use coupon_core::queries;
use coupon_core::store::kafka::IssueTopicVerdict;
use coupon_core::telemetry::names;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::MySqlPool;

use crate::retry::Shutdown;

/// How long after its issue window closed a coupon keeps its gauges.
const CLOSED_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// Client context of the group members: logs rebalances and failed asynchronous offset commits.
///
/// (librdkafka's statistics callback would give the lag too, but with it enabled the consumer
/// stopped answering SIGTERM in our runs; the lag gauges come from each member's position and
/// the partitions' high watermarks instead, sampled with the per-coupon gauges.)
pub struct GroupContext;

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    /// Logs each assignment and revocation, with its partitions: which member holds what is
    /// otherwise invisible (`make demo` with several consumers waits for every member's
    /// first "partitions assigned" line before it races).
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(partitions = ?partitions(list), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                tracing::info!(partitions = ?partitions(list), "partitions revoked");
            }
            Rebalance::Error(err) => tracing::warn!(%err, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(err) = result {
            tracing::warn!(%err, "offset commit failed; the batch will be redelivered and skipped");
        }
    }
}

/// `topic:partition` of each element of `list`.
fn partitions(list: &TopicPartitionList) -> Vec<String> {
    list.elements()
        .iter()
        .map(|e| format!("{}:{}", e.topic(), e.partition()))
        .collect()
}

/// Samples the lag and per-coupon stock gauges.
pub struct GaugeSampler {
    /// The group members whose lag is reported (issue and payments).
    pub(crate) members: Vec<Arc<StreamConsumer<GroupContext>>>,
    /// A group-less client for the partitions' high watermarks.
    pub(crate) watermarks: Arc<BaseConsumer>,
    /// Stock and `issued_quantity`.
    pub(crate) pool: MySqlPool,
    /// The admission sets' sizes.
    pub(crate) admission: AdmissionStore,
    /// Pause between samples.
    pub(crate) interval: Duration,
    /// Most coupons given gauges at once (count).
    pub(crate) coupon_limit: u32,
    /// The start-up verdict on the issue topic, recorded again at every sample so the
    /// exporter keeps `coupon_kafka_issue_topic_durable`.
    pub(crate) issue_topic: IssueTopicVerdict,
}

impl GaugeSampler {
    /// Sets `coupon_consumer_lag_messages{topic, partition}` for every partition assigned to
    /// this member: the partition's high watermark minus this member's position (the next
    /// offset it will process), as Kafka's own consumer reports `records-lag`. The positions
    /// are local state; the watermarks are asked of the broker (1 s timeout each) on a blocking
    /// thread. Partitions without a position yet are left out.
    async fn sample_lag(&self) {
        let mut assigned = Vec::new();
        for consumer in &self.members {
            let Ok(positions) = consumer.position() else {
                continue;
            };
            for element in positions.elements() {
                if let Offset::Offset(position) = element.offset() {
                    assigned.push((element.topic().to_owned(), element.partition(), position));
                }
            }
        }
        let watermarks = std::sync::Arc::clone(&self.watermarks);
        let sampled = tokio::task::spawn_blocking(move || {
            for (topic, partition, position) in assigned {
                let Ok((_, high)) =
                    watermarks.fetch_watermarks(&topic, partition, Duration::from_secs(1))
                else {
                    continue;
                };
                metrics::gauge!(
                    names::CONSUMER_LAG,
                    "topic" => topic, "partition" => partition.to_string()
                )
                .set((high - position).max(0) as f64);
            }
        })
        .await;
        if let Err(err) = sampled {
            tracing::warn!(%err, "sampling the consumer lag failed");
        }
    }

    /// Sets the `coupon_policy_*` gauges every `METRICS_SAMPLE_INTERVAL_MS` until `shutdown`
    /// stops it, and the lag gauges ([`Self::sample_lag`]) and
    /// `coupon_kafka_issue_topic_durable` (the start-up verdict) at the same pace:
    /// stock and `issued_quantity` from MySQL, admitted from the Redis set's `SCARD`, for the
    /// coupons of [`queries::live_stocks`]. A failed sample is logged and skipped (the gauges
    /// keep their last value until the exporter's idle timeout).
    pub async fn run(&self, shutdown: &Shutdown) {
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                () = shutdown.stopping() => return,
                _ = tick.tick() => {}
            }
            self.issue_topic.record();
            self.sample_lag().await;
            if let Err(err) = self.sample_stock_gauges_once().await {
                tracing::warn!(error = %err, "sampling the per-coupon gauges failed");
            }
        }
    }

    async fn sample_stock_gauges_once(&self) -> anyhow::Result<()> {
        let now = Utc::now();
        let live =
            queries::live_stocks(&self.pool, now, now - CLOSED_GRACE, self.coupon_limit).await?;
        for stock in live {
            let admitted = self.admission.admitted_count(stock.shards).await?;
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
        names::PAYMENTS_CONFIRMED_AFTER_RELEASE,
    ] {
        metrics::counter!(name).increment(0);
    }
    let _ = metrics::histogram!(names::CONSUMER_BATCH_SIZE);
    let _ = metrics::histogram!(names::CONSUMER_PERSIST_DURATION);
    for status in ["completed", "failed"] {
        metrics::counter!(names::PAYMENT_RESULTS, "status" => status).increment(0);
    }
    for reason in coupon_core::redemption::Unchanged::ALL {
        metrics::counter!(names::PAYMENT_RESULTS_UNCHANGED, "reason" => reason.as_str())
            .increment(0);
    }
    for reason in crate::dead_letter::DeadLetterReason::ALL {
        metrics::counter!(names::CONSUMER_DEAD_LETTERS, "reason" => reason.as_str()).increment(0);
    }
    for step in crate::retry::RetryStep::ALL {
        metrics::counter!(names::CONSUMER_RETRIES, "step" => step.as_str()).increment(0);
    }
}
