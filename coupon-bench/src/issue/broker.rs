//! The benchmark's own broker calls: creating its topics, and publishing issue messages as
//! the API would (the produce ceiling, the drain's pre-fill).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::message::IssueMessage;
use coupon_core::store::kafka::IssuePublisher;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use uuid::Uuid;

use crate::latency::Latencies;

use super::IssueArgs;

/// Creates topic `name` as `args` asks: `--partitions` partitions, `--replication-factor`
/// replicas each and, when given, `--min-insync-replicas`, on `--kafka-brokers`.
///
/// # Errors
/// The broker is unreachable or refused the topic.
pub(super) async fn create_topic(args: &IssueArgs, name: &str) -> anyhow::Result<()> {
    let (brokers, partitions) = (&args.kafka_brokers, args.partitions);
    let (replication, min_insync) = (args.replication_factor, args.min_insync_replicas);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let min_insync = min_insync.map(|n| n.to_string());
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    if let Some(min_insync) = &min_insync {
        topic = topic.set("min.insync.replicas", min_insync);
    }
    for result in admin.create_topics(&[topic], &options).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code:?}"))?;
    }
    Ok(())
}

/// Publishes one issue message per user of `users` for `coupon`, `concurrency` at a time, as the
/// API would after admitting them; returns the unacknowledged count and every publish's
/// latency.
pub(super) async fn publish_users(
    publisher: &IssuePublisher,
    coupon: CouponId,
    users: std::ops::RangeInclusive<i64>,
    concurrency: usize,
) -> (usize, Latencies) {
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let failures = futures::stream::iter(users)
        .map(|user| {
            let latencies = Arc::clone(&latencies);
            async move {
                let message = IssueMessage {
                    coupon_id: coupon,
                    user_id: UserId::parse(user).ok()?,
                    request_id: Uuid::now_v7(),
                    admitted_at: Utc::now(),
                    stock_shards: coupon_core::domain::ShardCount::ONE,
                    correlation_id: coupon_core::domain::CorrelationId::parse(
                        uuid::Uuid::new_v4().to_string(),
                    )
                    .ok(),
                };
                let sent = Instant::now();
                let result = publisher.publish(&message).await;
                if let Ok(mut l) = latencies.lock() {
                    l.record(sent.elapsed());
                }
                result.err().map(|_| ())
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|failed| async move { failed })
        .count()
        .await;
    let latencies = Arc::try_unwrap(latencies)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default();
    (failures, latencies)
}
