//! The issue loop: persists issue messages to MySQL in batches, dead-letters what can never be
//! persisted, broadcasts sold-out coupons, and only then commits the batch's offsets.
//!
//! At-least-once delivery plus the unique key `(coupon_id, user_id)` make every acknowledged
//! issue message end as exactly one row (docs/invariants.md 2, 3, 6).
//!
//! A batch is a list of items, each Kafka message with its parsed issue and its fate (pending,
//! persisted, duplicate, or dead with its reason and detail); each step of [`IssueConsumer`]
//! reads and sets fates (the `batch` module).

mod batch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::{
    AdmissionStore, Invalidation, InvalidationBroadcast, StockShards,
};
use coupon_core::issue::message::IssueMessage;
use coupon_core::issue::persistence::{self, PersistReport};
use coupon_core::telemetry::names;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::dead_letter::DeadLetters;
use crate::gauges::GroupContext;
use crate::outbox::Backlog;
use crate::retry::{Retrier, RetryStep, Shutdown};
use crate::ConsumerStats;
use batch::{Item, Tally};

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
    /// The admission sets, checked before persisting.
    pub(crate) admission: AdmissionStore,
    /// The invalidation channel, which announces a sell-out.
    pub(crate) broadcast: InvalidationBroadcast,
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

    /// Claims the admissions of the pending `items` ([`AdmissionStore::claim`], one script per
    /// coupon and home shard, atomic with the API's undo) and returns the positions in `items`
    /// of those that are not theirs: the user is no member, or is pending under another
    /// request, so the message's admission was undone. That happens when the API's publish
    /// failed after the broker had written the message but before it acknowledged it (a broker
    /// killed or cut off mid-request, the in-sync replicas waited for past the message timeout;
    /// librdkafka calls such a message "possibly persisted"): the user heard 503, and
    /// persisting the message would give them a coupon, and with it a unit that belongs to a
    /// user who heard 202. A claim clears the admission's pending mark before the row is
    /// written, so the API's undo of that request finds nothing to undo and answers 202
    /// instead: a message and the undo of its admission never both win. A coupon without Redis
    /// state (no stock key: Redis lost it and the API has not rebuilt it yet) cannot be checked
    /// and is persisted as before.
    async fn undone_admissions(&self, items: &[Item<'_>]) -> anyhow::Result<HashSet<usize>> {
        // The messages of one coupon carry the same shard count: it is fixed with the policy.
        let mut by_coupon: BTreeMap<CouponId, Vec<(usize, &IssueMessage)>> = BTreeMap::new();
        for (position, item) in items.iter().enumerate() {
            if let Some(issue) = item.pending() {
                by_coupon
                    .entry(issue.coupon_id)
                    .or_default()
                    .push((position, issue));
            }
        }
        let mut undone = HashSet::new();
        for group in by_coupon.into_values() {
            let Some(&(_, first)) = group.first() else {
                continue;
            };
            let shards = first.shards();
            if !self.admission.is_prepared(shards).await? {
                continue;
            }
            let messages: Vec<(UserId, _)> = group
                .iter()
                .map(|(_, issue)| (issue.user_id, issue.request_id))
                .collect();
            let claimed = self.admission.claim(shards, &messages).await?;
            undone.extend(
                group
                    .iter()
                    .zip(claimed)
                    .filter(|(_, claimed)| !claimed)
                    .map(|(&(position, _), _)| position),
            );
        }
        Ok(undone)
    }

    /// Persists, dead-letters, broadcasts and commits one batch. `None` when the grace period
    /// of a stop ended while a step was still failing (nothing committed).
    async fn handle(&self, batch: &[OwnedMessage], shutdown: &Shutdown) -> Option<()> {
        let started = Instant::now();
        let mut items: Vec<Item<'_>> = batch.iter().map(Item::parse).collect();
        if batch.len() >= self.batch_max_messages {
            self.backlog.note_full_batch();
        }
        self.check_admissions(&mut items, shutdown).await?;
        let sold_out = self.persist(&mut items, shutdown).await?;
        let letters = batch::dead_letters(&items);
        if !letters.is_empty() {
            let send = || self.dead_letters.send(&letters);
            self.retry
                .run(RetryStep::DeadLetter, send, shutdown)
                .await?;
        }
        self.broadcast_sold_out(&items, &sold_out).await;

        // The batch is durable: a commit that cannot even be queued only means redelivery,
        // which the unique key absorbs.
        if let Err(err) = self.commit(batch) {
            tracing::warn!(%err, "offset commit failed; the batch will be redelivered and skipped");
        }
        self.record_batch(&items, started);
        Some(())
    }

    /// The admission check: marks the pending items whose admission was undone
    /// ([`Self::undone_admissions`]) dead, `admission_undone`. `None` when the grace period of
    /// a stop ended while the check was still failing.
    async fn check_admissions(&self, items: &mut [Item<'_>], shutdown: &Shutdown) -> Option<()> {
        let pending: &[Item<'_>] = items;
        let check = || self.undone_admissions(pending);
        let undone = self
            .retry
            .run(RetryStep::AdmissionCheck, check, shutdown)
            .await?;
        for (position, item) in items.iter_mut().enumerate() {
            if undone.contains(&position) {
                item.undo_admission();
            }
        }
        Some(())
    }

    /// The persist step: persists the pending items in one transaction
    /// ([`persistence::persist_batch`], retried whole), settles each one's fate from its
    /// outcome, logs each persisted row (INFO, [`PERSISTED_TARGET`]) and returns the coupons
    /// that sold out. `None` when the grace period of a stop ended while persisting was still
    /// failing (nothing persisted).
    async fn persist(&self, items: &mut [Item<'_>], shutdown: &Shutdown) -> Option<Vec<CouponId>> {
        let issues: Vec<IssueMessage> = items.iter().filter_map(Item::pending).cloned().collect();
        let persist = || persistence::persist_batch(&self.pool, &issues);
        let report: PersistReport = self
            .retry
            .run(RetryStep::Persist, persist, shutdown)
            .await?;
        // The report has one outcome per issue handed over, in their order: the pending items'.
        let pending = items.iter_mut().filter(|item| item.pending().is_some());
        for (item, outcome) in pending.zip(&report.outcomes) {
            item.settle(outcome);
        }
        for issue in items.iter().filter_map(Item::persisted) {
            tracing::info!(
                target: PERSISTED_TARGET,
                coupon_id = %issue.coupon_id,
                user_id = %issue.user_id,
                request_id = %issue.request_id,
                correlation_id = %issue.correlation_id.as_ref().map_or("", |id| id.as_str()),
                "issue persisted"
            );
        }
        Some(report.sold_out)
    }

    /// Tells the API instances that the `sold_out` coupons have no stock left (best effort: a
    /// failed broadcast is logged, and their caches expire by TTL). A coupon's shards are read
    /// from one of its persisted messages.
    async fn broadcast_sold_out(&self, items: &[Item<'_>], sold_out: &[CouponId]) {
        for &coupon_id in sold_out {
            let shards = items
                .iter()
                .filter_map(Item::persisted)
                .find(|issue| issue.coupon_id == coupon_id)
                .map_or(StockShards::single(coupon_id), IssueMessage::shards);
            let invalidation = Invalidation::sold_out(shards);
            if let Err(err) = self.broadcast.publish(invalidation).await {
                tracing::warn!(%err, %coupon_id, "sold-out broadcast failed; caches expire by TTL");
            }
        }
    }

    /// Counts a committed batch in the metrics and [`ConsumerStats`], from its items' fates,
    /// and logs it (DEBUG).
    fn record_batch(&self, items: &[Item<'_>], started: Instant) {
        let messages = items.len() as u64;
        let Tally {
            persisted: inserted,
            duplicates,
            dead,
        } = Tally::of(items);
        metrics::counter!(names::CONSUMER_BATCHES).increment(1);
        metrics::counter!(names::CONSUMER_MESSAGES).increment(messages);
        metrics::counter!(names::CONSUMER_ROWS_INSERTED).increment(inserted);
        metrics::counter!(names::CONSUMER_DUPLICATES_SKIPPED).increment(duplicates);
        metrics::histogram!(names::CONSUMER_BATCH_SIZE).record(items.len() as f64);
        metrics::histogram!(names::CONSUMER_PERSIST_DURATION).record(started.elapsed());
        self.stats.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        self.stats
            .messages_committed
            .fetch_add(messages, Ordering::Relaxed);
        self.stats.batches_committed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(inserted, duplicates, dead, "batch committed");
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
