//! The purge, every `PURGE_INTERVAL_MS`: expired idempotency keys, outbox events published more
//! than `OUTBOX_RETENTION_SECS` ago, and reconciliation and code generation jobs finished more
//! than `JOB_RETENTION_SECS` ago are deleted ([`coupon_core::purge`]), so none of those tables
//! grows without bound. Unpublished events, running jobs and keys not yet expired are never
//! touched.
//!
//! Each table is purged in batches of `PURGE_BATCH` rows, each its own `DELETE … ORDER BY …
//! LIMIT` statement along an index (no long transaction, no long lock), until a batch comes back
//! short; a stop is honoured between batches. Several instances may purge at once: a row is
//! deleted once, whoever gets it. Deleted rows are counted in
//! `coupon_purged_rows_total{table}`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coupon_core::purge::{self, Target};
use coupon_core::telemetry::names;
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::retry::Shutdown;

/// Registers `coupon_purged_rows_total` at 0 for every table, so dashboards see it before the
/// first purge.
pub(crate) fn register_metrics() {
    for &target in Target::ALL {
        metrics::counter!(names::PURGED, "table" => target.table()).increment(0);
    }
}

/// Deletes what is past its retention.
pub struct PurgeJobs {
    /// Where the tables are.
    pub(crate) pool: MySqlPool,
    /// Pause between runs; `None` turns the loop off.
    pub(crate) interval: Option<Duration>,
    /// Most rows one statement deletes (count).
    pub(crate) batch: u32,
    /// How long a published event is kept after its publication.
    pub(crate) outbox_retention: Duration,
    /// How long a finished job is kept after it finished.
    pub(crate) job_retention: Duration,
}

impl PurgeJobs {
    /// Purges at once, then every interval, until `shutdown` stops it.
    pub async fn run(&self, shutdown: &Shutdown) {
        let Some(interval) = self.interval else {
            return;
        };
        loop {
            self.run_once(shutdown)
                .instrument(tracing::debug_span!("purge"))
                .await;
            tokio::select! {
                () = shutdown.stopping() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One run over every table; a table that fails is logged and retried by the next run,
    /// and the others are still purged.
    async fn run_once(&self, shutdown: &Shutdown) {
        let now = Utc::now();
        for &target in Target::ALL {
            let retention = match target {
                Target::IdempotencyKeys => Duration::ZERO,
                Target::PublishedEvents => self.outbox_retention,
                Target::ReconciliationJobs | Target::CodeGenerationJobs | Target::EndedHolds => {
                    self.job_retention
                }
            };
            let Some(cutoff) = cutoff(now, retention) else {
                continue;
            };
            match self.drain(target, cutoff, shutdown).await {
                Ok(0) => {}
                Ok(purged) => {
                    tracing::info!(table = target.table(), purged, %cutoff, "purged rows past their retention");
                }
                Err(err) => {
                    tracing::warn!(table = target.table(), error = %err, "purge failed; the next run retries");
                }
            }
        }
    }

    /// Deletes `target`'s rows at or before `cutoff`, batch after batch, until a batch comes
    /// back short or a stop begins; returns how many were deleted.
    async fn drain(
        &self,
        target: Target,
        cutoff: DateTime<Utc>,
        shutdown: &Shutdown,
    ) -> Result<u64, sqlx::Error> {
        let batch = self.batch.max(1);
        let mut purged = 0;
        while !shutdown.is_stopping() {
            let deleted = purge::delete_batch(&self.pool, target, cutoff, batch).await?;
            metrics::counter!(names::PURGED, "table" => target.table()).increment(deleted);
            purged += deleted;
            if deleted < u64::from(batch) {
                break;
            }
        }
        Ok(purged)
    }
}

/// `now` minus `retention`; `None` when that is before 1970 (a retention of decades or more:
/// nothing can be that old).
fn cutoff(now: DateTime<Utc>, retention: Duration) -> Option<DateTime<Utc>> {
    let cutoff = now.checked_sub_signed(chrono::Duration::from_std(retention).ok()?)?;
    (cutoff > DateTime::UNIX_EPOCH).then_some(cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_longer_than_time_itself_purges_nothing() {
        let now = Utc::now();
        assert_eq!(cutoff(now, Duration::ZERO), Some(now));
        assert_eq!(
            cutoff(now, Duration::from_secs(3_600)),
            Some(now - chrono::Duration::hours(1))
        );
        assert_eq!(cutoff(now, Duration::from_secs(u64::MAX)), None);
        assert_eq!(cutoff(now, Duration::from_secs(100 * 366 * 86_400)), None);
    }
}
