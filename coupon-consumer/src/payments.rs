//! Payment results from the payments topic confirm or release checkout holds.
//!
//! Message: `{"order_id": "o-1", "status": "COMPLETED" | "FAILED"}` (other fields are ignored).
//! `COMPLETED` turns the order's held coupons into used ones, `FAILED` releases them. Applying a
//! result is idempotent (a repeat finds no hold left), so at-least-once delivery is enough; the
//! offset is committed only after the result is applied or dead-lettered.

use chrono::Utc;
use coupon_core::redemption::{self, OrderId};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetter;
use crate::IssueConsumer;

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

impl IssueConsumer {
    /// The payments loop: one message at a time, committed once applied.
    pub(crate) async fn consume_payments(&self, shutdown: &CancellationToken) {
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = self.payments.recv() => received,
            };
            let message = match received {
                Ok(message) => message.detach(),
                Err(err) => {
                    tracing::warn!(%err, "payments receive failed");
                    continue;
                }
            };
            if self.settle(&message, shutdown).await.is_none() {
                return;
            }
            self.stats
                .payments_applied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(err) = self
                .payments
                .commit(&next_offset(&message), CommitMode::Sync)
            {
                tracing::warn!(%err, "payments offset commit failed; the result will be re-applied (harmless)");
            }
        }
    }

    /// Applies one payment result (or dead-letters it); `None` on shutdown while retrying.
    async fn settle(&self, message: &OwnedMessage, shutdown: &CancellationToken) -> Option<()> {
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
                    reason: "malformed_payment",
                    detail,
                }];
                let send = || self.dead_letters.send(&letter);
                return self.retrying("payment_dead_letter", send, shutdown).await;
            }
        };
        let paid = matches!(status, PaymentStatus::Completed);
        let apply = || redemption::settle_order(&self.pool, &order_id, paid, Utc::now());
        let changed = self.retrying("payment_apply", apply, shutdown).await?;
        metrics::counter!(coupon_core::telemetry::names::PAYMENT_RESULTS, "status" => if paid { "completed" } else { "failed" })
            .increment(1);
        tracing::info!(
            order_id = order_id.as_str(),
            paid,
            changed,
            "payment result applied"
        );
        self.stats
            .payments_applied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(())
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
