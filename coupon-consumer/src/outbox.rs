//! The outbox relay: publishes the events that state changes wrote into `coupon_events` to the
//! events topic, then stamps them published.
//!
//! Delivery is at least once: the stamp commits after the broker acknowledged every event of
//! the batch, so a crash in between republishes them, and readers de-duplicate by `event_id`.
//! Batches are taken with `FOR UPDATE SKIP LOCKED`, so several relays can run.

use std::sync::atomic::Ordering;

use chrono::Utc;
use coupon_core::events;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::IssueConsumer;

/// Most events relayed in one transaction (count).
const RELAY_BATCH: u32 = 500;

impl IssueConsumer {
    /// Relays until `shutdown`; a full batch is followed at once by another (shutdown is
    /// checked between batches, so a backlog does not hold up a stop).
    pub(crate) async fn relay_events(&self, shutdown: &CancellationToken) {
        loop {
            let relayed = match self.relay_once().await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = %err, "event relay failed; retrying");
                    0
                }
            };
            if relayed as u32 == RELAY_BATCH && !shutdown.is_cancelled() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.relay_interval) => {}
            }
        }
    }

    /// Publishes one batch of unpublished events; returns how many.
    async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let pending = events::take_unpublished(&mut tx, RELAY_BATCH).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let sends = pending.iter().map(|event| {
            let record = FutureRecord::to(&self.events_topic)
                .key(&event.key)
                .payload(&event.payload);
            self.dead_letters.producer.send(record, Timeout::Never)
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(err, _)| err)?;
        }
        events::mark_published(&mut tx, &pending, Utc::now()).await?;
        tx.commit().await?;
        metrics::counter!(coupon_core::telemetry::names::EVENTS_PUBLISHED)
            .increment(pending.len() as u64);
        self.stats
            .events_published
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        Ok(pending.len())
    }
}
