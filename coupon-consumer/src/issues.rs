//! The issue loop: persists issue messages to MySQL in batches, dead-letters what can never be
//! persisted, broadcasts sold-out coupons, and only then commits the batch's offsets.
//!
//! At-least-once delivery plus the unique key `(coupon_id, user_id)` make every acknowledged
//! issue message end as exactly one row (docs/invariants.md 2, 3, 6).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::domain::CouponId;
use coupon_core::issue::admission::{AdmissionStore, Invalidation, StockShards};
use coupon_core::issue::message::IssueMessage;
use coupon_core::issue::persistence::{PersistReport, Rejection};
use coupon_core::telemetry::names;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::gauges::GroupContext;
use crate::outbox::Backlog;
use crate::retry::{Retrier, Shutdown};
use crate::ConsumerStats;

/// The log target of the line written for every persisted row (INFO: `issue persisted` with
/// `coupon_id`, `user_id`, the issue's `request_id` and the HTTP request's `correlation_id`,
/// its `x-request-id`). `RUST_LOG=info,coupon_consumer::persisted=warn` turns these lines off.
pub const PERSISTED_TARGET: &str = "coupon_consumer::persisted";

/// The issue topic's group member and what persisting its batches needs.
pub struct IssueConsumer {
    /// Member of the consumer group on the issue topic (shared with the lag gauges).
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    /// Where rows go.
    pub(crate) pool: MySqlPool,
    /// The admission sets, checked before persisting, and the invalidation channel.
    pub(crate) admission: AdmissionStore,
    /// Where messages that can never be persisted go.
    pub(crate) dead_letters: DeadLetters,
    /// Most messages per batch (count, at least 1).
    pub(crate) batch_max_messages: usize,
    /// Longest wait for a batch to fill once its first message arrived.
    pub(crate) batch_max_wait: Duration,
    /// Retries of the batch's steps.
    pub(crate) retry: Retrier,
    /// Told of every full batch, so the outbox relay yields to a backlog.
    pub(crate) backlog: Backlog,
    /// Live counters.
    pub(crate) stats: Arc<ConsumerStats>,
}

impl IssueConsumer {
    /// Takes and handles batches until `shutdown` stops it. A batch being collected when the
    /// stop comes is still persisted and committed; one still failing when the grace period
    /// ends is left uncommitted (it will be redelivered).
    pub async fn run(&self, shutdown: &Shutdown) {
        loop {
            let batch = self.next_batch(shutdown).await;
            if !batch.is_empty() {
                let span = tracing::info_span!("issue_batch", messages = batch.len());
                if self
                    .handle(&batch, shutdown)
                    .instrument(span)
                    .await
                    .is_none()
                {
                    tracing::warn!(
                        size = batch.len(),
                        "shutdown while retrying: batch left uncommitted"
                    );
                    return;
                }
            }
            if shutdown.is_stopping() {
                return;
            }
        }
    }

    /// Waits for a first message, then collects until the batch is full or `batch_max_wait`
    /// passed. Returns early (possibly empty) on a stop.
    async fn next_batch(&self, shutdown: &Shutdown) -> Vec<OwnedMessage> {
        let mut batch = Vec::with_capacity(self.batch_max_messages);
        let first = tokio::select! {
            () = shutdown.stopping() => return batch,
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
                () = shutdown.stopping() => break,
                received = tokio::time::timeout_at(deadline, self.consumer.recv()) => match received {
                    Ok(Ok(message)) => batch.push(message.detach()),
                    Ok(Err(err)) => tracing::warn!(%err, "Kafka receive failed"),
                    Err(_elapsed) => break,
                },
            }
        }
        batch
    }

    /// Claims the admissions of `issues` ([`AdmissionStore::claim`], one script per coupon and
    /// home shard, atomic with the API's undo) and returns the indexes of those that are not
    /// theirs: the user is no member, or is pending under another request, so the message's
    /// admission was undone. That happens when the API's publish failed after the broker had
    /// written the message but before it acknowledged it (a broker killed or cut off
    /// mid-request, the in-sync replicas waited for past the message timeout; librdkafka calls
    /// such a message "possibly persisted"): the user heard 503, and persisting the message
    /// would give them a coupon, and with it a unit that belongs to a user who heard 202. A
    /// claim clears the admission's pending mark before the row is written, so the API's undo
    /// of that request finds nothing to undo and answers 202 instead: a message and the undo
    /// of its admission never both win. A coupon without Redis state (no stock key: Redis lost
    /// it and the API has not rebuilt it yet) cannot be checked and is persisted as before.
    async fn undone_admissions(&self, issues: &[IssueMessage]) -> anyhow::Result<HashSet<usize>> {
        // The messages of one coupon carry the same shard count: it is fixed with the policy.
        let mut by_coupon: BTreeMap<CouponId, Vec<usize>> = BTreeMap::new();
        for (i, issue) in issues.iter().enumerate() {
            by_coupon.entry(issue.coupon_id).or_default().push(i);
        }
        let mut undone = HashSet::new();
        for indexes in by_coupon.into_values() {
            let shards = issues[indexes[0]].shards();
            if !self.admission.is_prepared(shards).await? {
                continue;
            }
            let messages: Vec<(i64, _)> = indexes
                .iter()
                .map(|&i| (issues[i].user_id.get(), issues[i].request_id))
                .collect();
            let claimed = self.admission.claim(shards, &messages).await?;
            undone.extend(
                indexes
                    .iter()
                    .zip(claimed)
                    .filter(|(_, claimed)| !claimed)
                    .map(|(&i, _)| i),
            );
        }
        Ok(undone)
    }

    /// Persists, dead-letters, broadcasts and commits one batch. `None` when the grace period
    /// of a stop ended while a step was still failing (nothing committed).
    async fn handle(&self, batch: &[OwnedMessage], shutdown: &Shutdown) -> Option<()> {
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
            self.backlog.note_full_batch();
        }
        let check = || self.undone_admissions(&issues);
        let undone = self.retry.run("admission_check", check, shutdown).await?;
        if !undone.is_empty() {
            let kept: Vec<bool> = (0..issues.len()).map(|i| !undone.contains(&i)).collect();
            let mut keep = kept.iter();
            issues.retain(|_| keep.next().copied().unwrap_or(true));
            let mut kept_sources = Vec::with_capacity(issues.len());
            for (source, kept) in sources.into_iter().zip(kept) {
                if kept {
                    kept_sources.push(source);
                } else {
                    dead.push(DeadLetter {
                        message: source,
                        reason: "admission_undone",
                        detail: "the admission of this message was undone (its user is not in the \
                                 coupon's admission set, or is pending under another request)"
                            .into(),
                    });
                }
            }
            sources = kept_sources;
        }
        let persist = || coupon_core::issue::persistence::persist_batch(&self.pool, &issues);
        let report: PersistReport = self.retry.run("persist", persist, shutdown).await?;
        for &index in &report.persisted {
            let issue = &issues[index];
            tracing::info!(
                target: PERSISTED_TARGET,
                coupon_id = %issue.coupon_id,
                user_id = %issue.user_id,
                request_id = %issue.request_id,
                correlation_id = %issue.correlation_id.as_deref().unwrap_or(""),
                "issue persisted"
            );
        }
        for (index, rejection) in &report.rejected {
            let issue = &issues[*index];
            let mut detail = format!("coupon {} user {}", issue.coupon_id, issue.user_id);
            if let Rejection::RefusedByDatabase(error) = rejection {
                detail = format!("{detail}: {error}");
            }
            dead.push(DeadLetter {
                message: sources[*index],
                reason: rejection.as_str(),
                detail,
            });
        }
        if !dead.is_empty() {
            let send = || self.dead_letters.send(&dead);
            self.retry.run("dead_letter", send, shutdown).await?;
        }

        for &coupon_id in &report.sold_out {
            let shards = issues
                .iter()
                .find(|issue| issue.coupon_id == coupon_id)
                .map_or(StockShards::single(coupon_id), IssueMessage::shards);
            let invalidation = Invalidation::sold_out(shards);
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
            inserted,
            duplicates = report.duplicates,
            dead = dead.len(),
            "batch committed"
        );
        Some(())
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
