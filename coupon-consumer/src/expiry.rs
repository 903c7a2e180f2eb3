//! Expiry jobs, every `EXPIRY_INTERVAL_MS`: `EXPIRING_SOON` notices for coupons whose validity
//! ends within `EXPIRING_SOON_DAYS` (each coupon once), `EXPIRED` marks for coupons past their
//! validity, and the archival of codes soft-deleted `ARCHIVE_AFTER_DAYS` ago, all in batches.
//! Each locks its rows with `FOR UPDATE SKIP LOCKED`, so several instances can run them; the
//! first two write their events to the outbox in the same transaction.

use chrono::Utc;
use coupon_core::telemetry::names;
use coupon_core::{codes, events};
use tokio_util::sync::CancellationToken;

use crate::IssueConsumer;

/// Coupons handled per transaction (count).
const EXPIRY_BATCH: u32 = 500;

impl IssueConsumer {
    /// Runs the expiry jobs until `shutdown`.
    pub(crate) async fn run_expiry_jobs(&self, shutdown: &CancellationToken) {
        loop {
            if let Err(err) = self.expire_once().await {
                tracing::warn!(error = %err, "expiry jobs failed; next run retries");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.expiry_interval) => {}
            }
        }
    }

    async fn expire_once(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        while events::notice_expiring(&self.pool, now, self.expiring_soon, EXPIRY_BATCH).await?
            as u32
            == EXPIRY_BATCH
        {}
        let mut expired = 0;
        loop {
            let n = events::expire(&self.pool, now, EXPIRY_BATCH).await?;
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
