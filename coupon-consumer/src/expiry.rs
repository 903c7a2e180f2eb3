//! The expiry jobs, every `EXPIRY_INTERVAL_MS`: `EXPIRING_SOON` notices for coupons whose
//! validity ends within `EXPIRING_SOON_DAYS` (each coupon once), `EXPIRED` marks for coupons
//! past their validity, and the archival of codes soft-deleted `ARCHIVE_AFTER_DAYS` ago, all in
//! batches. Each locks its rows with `FOR UPDATE SKIP LOCKED`, so several instances can run
//! them; the first two write their events to the outbox in the same transaction.

use std::time::Duration;

use chrono::Utc;
use coupon_core::telemetry::names;
use coupon_core::{codes, expiry};
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::retry::Shutdown;

/// Coupons handled per transaction (count).
const EXPIRY_BATCH: u32 = 500;

/// Expiry notices, expiry marks and code archival.
pub struct ExpiryJobs {
    /// Where the coupons and codes are.
    pub(crate) pool: MySqlPool,
    /// Pause between runs.
    pub(crate) interval: Duration,
    /// How long before the end of validity `EXPIRING_SOON` is sent.
    pub(crate) expiring_soon: chrono::Duration,
    /// Age of a soft delete before its code moves to the archive.
    pub(crate) archive_after: chrono::Duration,
}

impl ExpiryJobs {
    /// Runs the jobs until `shutdown` stops it.
    pub async fn run(&self, shutdown: &Shutdown) {
        loop {
            let ran = self
                .run_once()
                .instrument(tracing::debug_span!("expiry_jobs"))
                .await;
            if let Err(err) = ran {
                tracing::warn!(error = %err, "expiry jobs failed; next run retries");
            }
            tokio::select! {
                () = shutdown.stopping() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn run_once(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        while expiry::notice_expiring(&self.pool, now, self.expiring_soon, EXPIRY_BATCH).await?
            as u32
            == EXPIRY_BATCH
        {}
        let mut expired = 0;
        loop {
            let n = expiry::expire(&self.pool, now, EXPIRY_BATCH).await?;
            expired += n;
            if (n as u32) < EXPIRY_BATCH {
                break;
            }
        }
        let cutoff = now - self.archive_after;
        let archived =
            codes::archive_all_deleted(&self.pool, cutoff, EXPIRY_BATCH, now, |_| {}).await?;
        if archived > 0 {
            metrics::counter!(names::CODES_ARCHIVED).increment(archived as u64);
            tracing::info!(archived, "soft-deleted codes moved to the archive");
        }
        if expired > 0 {
            metrics::counter!(names::ISSUES_EXPIRED).increment(expired as u64);
            tracing::info!(expired, "coupons past their validity marked EXPIRED");
        }
        Ok(())
    }
}
