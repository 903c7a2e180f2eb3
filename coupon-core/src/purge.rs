//! Deleting rows that have served their purpose, so no table grows without bound: expired
//! idempotency keys, published outbox events past their retention, and finished reconciliation
//! and code generation jobs and ended checkout holds past theirs.
//!
//! Each call is one `DELETE … ORDER BY … LIMIT` statement of at most `batch` rows, oldest
//! first, along an index (`idempotency_keys (expires_at)`, `coupon_events (published_at, id)`,
//! and the two of migration `20261204000020_purge_indexes.sql`), so it reads only the rows it
//! deletes and holds their locks for one short statement; the caller repeats it until a batch
//! comes back short. What is still needed is never matched: an unpublished event
//! (`published_at IS NULL`), a `RUNNING` job, a key not yet expired.

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

/// A purged table; [`Target::table`] is also the `table` label of
/// `coupon_purged_rows_total` (`telemetry::names::PURGED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray)]
pub enum Target {
    /// `idempotency_keys` whose `expires_at` has passed (a request with such a key acts anew
    /// anyway, [`crate::idempotency::claim`]).
    IdempotencyKeys,
    /// `coupon_events` published (`published_at` set) at or before the cutoff.
    PublishedEvents,
    /// `reconciliation_jobs` `DONE` or `FAILED` whose `finished_at` is at or before the cutoff.
    ReconciliationJobs,
    /// `code_generation_jobs` `DONE` whose last change (`updated_at`, the last batch) is at or
    /// before the cutoff.
    CodeGenerationJobs,
    /// `coupon_holds` that ended (confirmed, released or expired) at or before the cutoff: a
    /// payment result older than the retention finds no record of the hold.
    EndedHolds,
}

impl Target {
    /// Every target, in the order a purge run takes them.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            Self::IdempotencyKeys => "idempotency_keys",
            Self::PublishedEvents => "coupon_events",
            Self::ReconciliationJobs => "reconciliation_jobs",
            Self::CodeGenerationJobs => "code_generation_jobs",
            Self::EndedHolds => "coupon_holds",
        }
    }

    /// The statement: binds the cutoff, then the batch size.
    fn sql(self) -> &'static str {
        match self {
            Self::IdempotencyKeys => {
                "DELETE FROM idempotency_keys WHERE expires_at <= ? \
                 ORDER BY expires_at LIMIT ?"
            }
            Self::PublishedEvents => {
                "DELETE FROM coupon_events \
                 WHERE published_at IS NOT NULL AND published_at <= ? \
                 ORDER BY published_at, id LIMIT ?"
            }
            Self::ReconciliationJobs => {
                "DELETE FROM reconciliation_jobs \
                 WHERE status IN ('DONE', 'FAILED') AND finished_at <= ? \
                 ORDER BY finished_at, id LIMIT ?"
            }
            Self::CodeGenerationJobs => {
                "DELETE FROM code_generation_jobs WHERE status = 'DONE' AND updated_at <= ? \
                 ORDER BY updated_at, id LIMIT ?"
            }
            Self::EndedHolds => {
                "DELETE FROM coupon_holds WHERE ended_at IS NOT NULL AND ended_at <= ? \
                 ORDER BY ended_at LIMIT ?"
            }
        }
    }
}

/// Deletes at most `batch` rows of `target` at or before `cutoff` (for
/// [`Target::IdempotencyKeys`] the current time: keys expired by then; otherwise now minus the
/// retention), oldest first, in one statement. Returns how many were deleted (count): fewer
/// than `batch` means nothing older is left.
///
/// # Errors
/// Any database error (nothing of this batch is deleted then).
pub async fn delete_batch(
    pool: &MySqlPool,
    target: Target,
    cutoff: DateTime<Utc>,
    batch: u32,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(target.sql())
        .bind(crate::store::db::datetime(cutoff))
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected())
}
