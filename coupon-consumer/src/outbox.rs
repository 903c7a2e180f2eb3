//! The outbox relay: publishes the events that state changes wrote into `coupon_events` to the
//! events topic, then stamps them published.
//!
//! Delivery is at least once: the stamp commits after the broker acknowledged every event of
//! the batch, so a crash in between republishes them, and readers de-duplicate by `event_id`.
//! Batches are taken with `FOR UPDATE SKIP LOCKED`, so several relays can run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use coupon_core::events;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::IssueConsumer;

/// Most events relayed in one transaction (count).
const RELAY_BATCH: u32 = 500;

/// A full issue batch this recent means the issue consumer has a backlog.
const BACKLOG_WINDOW: Duration = Duration::from_secs(1);

impl IssueConsumer {
    /// Relays until `shutdown`; a full batch is followed at once by another (shutdown is
    /// checked between batches, so a backlog does not hold up a stop).
    ///
    /// While the issue consumer has a backlog (a full batch within the last second), the relay
    /// pauses for up to `relay_max_defer` between batches: both compete for MySQL and the
    /// broker, and a drop's issues come first (with the relay running, the drain into MySQL
    /// was about a third slower in `make bench`). Events then trail by up to the backlog's
    /// drain time.
    pub(crate) async fn relay_events(&self, shutdown: &CancellationToken) {
        let mut last_run = Instant::now();
        loop {
            if self.backlog() && last_run.elapsed() < self.relay_max_defer {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.relay_interval) => continue,
                }
            }
            last_run = Instant::now();
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

    /// Records that the issue consumer just took a full batch.
    pub(crate) fn note_full_batch(&self) {
        if let Ok(mut last) = self.last_full_batch.lock() {
            *last = Some(Instant::now());
        }
    }

    /// Whether the issue consumer took a full batch within [`BACKLOG_WINDOW`].
    fn backlog(&self) -> bool {
        self.last_full_batch
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|at| at.elapsed() < BACKLOG_WINDOW)
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
