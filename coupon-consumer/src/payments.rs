//! Payment results from the payments topic confirm or release checkout holds.
//!
//! Message: `{"order_id": "o-1", "status": "COMPLETED" | "FAILED"}` (other fields are ignored).
//! `COMPLETED` turns the order's held coupons into used ones, `FAILED` releases them. A
//! `COMPLETED` that arrives after a hold was released (the sweeper, a `FAILED` first) confirms
//! the coupon if it is still free; if it is not, the result is dead-lettered as
//! `payment_after_release` (alert `CouponPaymentAfterRelease`). Applying a result is idempotent
//! (a repeat finds every hold settled), so at-least-once delivery is enough; the offset is
//! committed only after the result is applied or dead-lettered. A malformed result is
//! dead-lettered as `malformed_payment`; a result that changed nothing is counted by reason
//! (`coupon_consumer_payment_results_unchanged_total`), never dropped silently.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::Utc;
use coupon_core::redemption::{self, OrderId, Unchanged};
use coupon_core::telemetry::names;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde::Deserialize;
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters};
use crate::gauges::GroupContext;
use crate::retry::{Retrier, RetryStep, Shutdown};
use crate::ConsumerStats;

/// What a payment service reports.
#[derive(Debug, Deserialize)]
struct PaymentResult {
    order_id: String,
    status: PaymentStatus,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum PaymentStatus {
    Completed,
    Failed,
}

/// The payments topic's group member: applies each result to the order's checkout holds.
pub struct PaymentConsumer {
    /// Member of the `<group>-payments` consumer group (shared with the lag gauges).
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    /// Where the holds are.
    pub(crate) pool: MySqlPool,
    /// Where malformed results go.
    pub(crate) dead_letters: DeadLetters,
    /// Retries of applying a result.
    pub(crate) retry: Retrier,
    /// Live counters.
    pub(crate) stats: Arc<ConsumerStats>,
}

impl PaymentConsumer {
    /// One result at a time, each committed once applied or dead-lettered, until `shutdown`
    /// stops it.
    pub async fn run(&self, shutdown: &Shutdown) {
        loop {
            let received = tokio::select! {
                () = shutdown.stopping() => return,
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message.detach(),
                Err(err) => {
                    tracing::warn!(%err, "payments receive failed");
                    continue;
                }
            };
            let span = tracing::info_span!(
                "payment_result",
                partition = message.partition(),
                offset = message.offset()
            );
            if self
                .settle(&message, shutdown)
                .instrument(span)
                .await
                .is_none()
            {
                return;
            }
            self.stats.payments_applied.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self
                .consumer
                .commit(&next_offset(&message), CommitMode::Sync)
            {
                tracing::warn!(%err, "payments offset commit failed; the result will be re-applied (harmless)");
            }
        }
    }

    /// Applies one payment result (or dead-letters it); `None` when the grace period of a stop
    /// ended while retrying.
    async fn settle(&self, message: &OwnedMessage, shutdown: &Shutdown) -> Option<()> {
        let parsed = serde_json::from_slice::<PaymentResult>(message.payload().unwrap_or_default())
            .map_err(|e| e.to_string())
            .and_then(|r| {
                OrderId::parse(&r.order_id)
                    .map(|o| (o, r.status))
                    .map_err(|e| e.0)
            });
        let (order_id, status) = match parsed {
            Ok(parsed) => parsed,
            Err(detail) => {
                let letter = [DeadLetter {
                    message,
                    reason: DeadLetterReason::MalformedPayment,
                    detail,
                }];
                let send = || self.dead_letters.send(&letter);
                return self
                    .retry
                    .run(RetryStep::PaymentDeadLetter, send, shutdown)
                    .await;
            }
        };
        let paid = matches!(status, PaymentStatus::Completed);
        let apply = || redemption::settle_order(&self.pool, &order_id, paid, Utc::now());
        let settlement = self
            .retry
            .run(RetryStep::PaymentApply, apply, shutdown)
            .await?;
        metrics::counter!(names::PAYMENT_RESULTS, "status" => if paid { "completed" } else { "failed" })
            .increment(1);
        if !settlement.confirmed_after_release.is_empty() {
            metrics::counter!(names::PAYMENTS_CONFIRMED_AFTER_RELEASE)
                .increment(settlement.confirmed_after_release.len() as u64);
            tracing::warn!(
                order_id = order_id.as_str(),
                coupon_issue_ids = ?settlement.confirmed_after_release,
                "a payment arrived after its hold was released; the coupons were still free and are now used"
            );
        }
        let Some(unchanged) = settlement.unchanged() else {
            tracing::info!(
                order_id = order_id.as_str(),
                paid,
                settled = settlement.settled,
                "payment result applied"
            );
            return Some(());
        };
        metrics::counter!(names::PAYMENT_RESULTS_UNCHANGED, "reason" => unchanged.as_str())
            .increment(1);
        if unchanged != Unchanged::AfterRelease {
            tracing::info!(
                order_id = order_id.as_str(),
                paid,
                reason = unchanged.as_str(),
                "payment result changed nothing"
            );
            return Some(());
        }
        let letter = [DeadLetter {
            message,
            reason: DeadLetterReason::PaymentAfterRelease,
            detail: format!(
                "order {} was paid after its hold of coupon issues {:?} was released, and they \
                 are no longer free: the order was paid without its discount",
                order_id.as_str(),
                settlement.after_release
            ),
        }];
        let send = || self.dead_letters.send(&letter);
        self.retry
            .run(RetryStep::PaymentDeadLetter, send, shutdown)
            .await
    }
}

/// The offset to commit after `message`: the next one in its partition.
fn next_offset(message: &OwnedMessage) -> rdkafka::TopicPartitionList {
    let mut list = rdkafka::TopicPartitionList::new();
    let _ = list.add_partition_offset(
        message.topic(),
        message.partition(),
        rdkafka::Offset::Offset(message.offset() + 1),
    );
    list
}
