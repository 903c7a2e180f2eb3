//! The sweeper: releases checkout holds whose time ran out, in batches, every
//! `SWEEP_INTERVAL_MS`. Safe with several instances running: each batch locks its rows with
//! `FOR UPDATE SKIP LOCKED` ([`coupon_core::redemption::release_expired_holds`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coupon_core::redemption;
use coupon_core::telemetry::names;
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::retry::Shutdown;
use crate::ConsumerStats;

/// Releases expired checkout holds.
pub struct HoldSweeper {
    /// Where the holds are.
    pub(crate) pool: MySqlPool,
    /// Pause between sweeps that found less than a full batch.
    pub(crate) interval: Duration,
    /// Most holds released per transaction (count, at least 1).
    pub(crate) batch: u32,
    /// Live counters.
    pub(crate) stats: Arc<ConsumerStats>,
}

impl HoldSweeper {
    /// Sweeps until `shutdown` stops it; a full batch is followed at once by another.
    pub async fn run(&self, shutdown: &Shutdown) {
        loop {
            let swept = redemption::release_expired_holds(&self.pool, Utc::now(), self.batch)
                .instrument(tracing::debug_span!("hold_sweep"))
                .await;
            match swept {
                Ok(released) => {
                    if !released.is_empty() {
                        metrics::counter!(names::RESERVATIONS_RELEASED)
                            .increment(released.len() as u64);
                        tracing::info!(count = released.len(), "expired holds released");
                        self.stats
                            .holds_released
                            .fetch_add(released.len() as u64, Ordering::Relaxed);
                    }
                    if released.len() as u32 == self.batch && !shutdown.is_stopping() {
                        continue;
                    }
                }
                Err(err) => tracing::warn!(%err, "sweep failed; next sweep retries"),
            }
            tokio::select! {
                () = shutdown.stopping() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
