//! The sweeper: releases checkout holds whose time ran out, in batches, every
//! `SWEEP_INTERVAL_MS`. Safe with several instances running: each batch locks its rows with
//! `FOR UPDATE SKIP LOCKED` ([`coupon_core::redemption::release_expired_holds`]).

use chrono::Utc;
use coupon_core::redemption;
use tokio_util::sync::CancellationToken;

use crate::IssueConsumer;

impl IssueConsumer {
    /// Sweeps until `shutdown`; a full batch is followed at once by another.
    pub(crate) async fn sweep(&self, shutdown: &CancellationToken) {
        loop {
            match redemption::release_expired_holds(&self.pool, Utc::now(), self.sweep_batch).await
            {
                Ok(released) => {
                    if !released.is_empty() {
                        metrics::counter!(coupon_core::telemetry::names::RESERVATIONS_RELEASED)
                            .increment(released.len() as u64);
                        tracing::info!(count = released.len(), "expired holds released");
                        self.stats
                            .holds_released
                            .fetch_add(released.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    if released.len() as u32 == self.sweep_batch {
                        continue;
                    }
                }
                Err(err) => tracing::warn!(%err, "sweep failed; next sweep retries"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.sweep_interval) => {}
            }
        }
    }
}
