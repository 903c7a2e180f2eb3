//! The outbox relay: publishes the events that state changes wrote into `coupon_events` to the
//! events topic, then stamps them published.
//!
//! Delivery is at least once: the stamp commits after the broker acknowledged every event of
//! the batch, so a crash in between republishes them, and readers de-duplicate by `event_id`.
//! Batches are taken with `FOR UPDATE SKIP LOCKED`, so several relays can run.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use coupon_core::events;
use coupon_core::telemetry::names;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::retry::Shutdown;
use crate::ConsumerStats;

/// Most events relayed in one transaction (count).
const RELAY_BATCH: u32 = 500;

/// A full issue batch this recent means the issue consumer has a backlog.
const BACKLOG_WINDOW: Duration = Duration::from_secs(1);

/// When the issue loop last took a full batch: the issue loop writes it, the relay reads it
/// (clones share it).
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<Mutex<Option<Instant>>>);

impl Backlog {
    /// Records that the issue loop just took a full batch.
    pub fn note_full_batch(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Instant::now());
        }
    }

    /// Whether the issue loop took a full batch within [`BACKLOG_WINDOW`].
    fn is_recent(&self) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|at| at.elapsed() < BACKLOG_WINDOW)
    }
}

/// Publishes the outbox to the events topic.
pub struct OutboxRelay {
    /// Where the outbox is.
    pub(crate) pool: MySqlPool,
    /// The relay's own producer (`acks=all`).
    pub(crate) producer: FutureProducer,
    /// The events topic.
    pub(crate) topic: String,
    /// Pause between polls of an empty outbox.
    pub(crate) interval: Duration,
    /// Longest pause while the issue loop has a backlog.
    pub(crate) max_defer: Duration,
    /// The issue loop's backlog.
    pub(crate) backlog: Backlog,
    /// Live counters.
    pub(crate) stats: Arc<ConsumerStats>,
}

impl OutboxRelay {
    /// Relays until `shutdown` stops it; a full batch is followed at once by another (the stop
    /// is checked between batches, so a backlog does not hold it up).
    ///
    /// While the issue loop has a backlog (a full batch within the last second), the relay
    /// pauses for up to `max_defer` between batches: both compete for MySQL and the broker, and
    /// a drop's issues come first (with the relay running, the drain into MySQL was about a
    /// third slower in `make bench`). Events then trail by up to the backlog's drain time.
    pub async fn run(&self, shutdown: &Shutdown) {
        let mut last_run = Instant::now();
        loop {
            if self.backlog.is_recent() && last_run.elapsed() < self.max_defer {
                tokio::select! {
                    () = shutdown.stopping() => return,
                    () = tokio::time::sleep(self.interval) => continue,
                }
            }
            last_run = Instant::now();
            let relayed = match self
                .relay_once()
                .instrument(tracing::debug_span!("outbox_batch"))
                .await
            {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = %err, "event relay failed; retrying");
                    0
                }
            };
            if relayed as u32 == RELAY_BATCH && !shutdown.is_stopping() {
                continue;
            }
            tokio::select! {
                () = shutdown.stopping() => return,
                () = tokio::time::sleep(self.interval) => {}
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
            let record = FutureRecord::to(&self.topic)
                .key(&event.key)
                .payload(&event.payload);
            self.producer.send(record, Timeout::Never)
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(err, _)| err)?;
        }
        events::mark_published(&mut tx, &pending, Utc::now()).await?;
        tx.commit().await?;
        metrics::counter!(names::EVENTS_PUBLISHED).increment(pending.len() as u64);
        self.stats
            .events_published
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        Ok(pending.len())
    }
}
