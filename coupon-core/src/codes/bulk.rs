//! Bulk changes of a topic's codes (suspend, resume, delete), in locked batches of
//! [`BULK_BATCH`], each its own transaction.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::policies;

use super::*;

/// A bulk change of a topic's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// `ACTIVE` → `SUSPENDED`.
    Suspend,
    /// `SUSPENDED` → `ACTIVE`.
    Activate,
    /// `ACTIVE` or `SUSPENDED` → `DELETED` (soft delete, `deleted_at` set).
    Delete,
}

/// Codes changed per transaction by [`bulk_change`] (count): each batch is its own short
/// transaction, so a million-code topic never holds its rows locked for long.
pub const BULK_BATCH: u32 = 1_000;

/// Applies `action` to every code of `topic` it applies to, in batches of [`BULK_BATCH`]
/// rows; returns how many changed. Idempotent: a repeat finds nothing left to change.
///
/// Each batch locks the next codes through [`BULK_BATCH_SQL`] and updates them by primary
/// key. A single `UPDATE … ORDER BY id LIMIT n` would be shorter but is slow here: it changes
/// the very index column it walks, so InnoDB buffers every matching row of the topic before
/// applying the limit (MariaDB's "Using buffer"), a full pass over millions of codes per batch.
///
/// # Errors
/// Any database error (batches already applied stay applied; a repeat finishes the job).
pub async fn bulk_change(
    pool: &MySqlPool,
    topic: i64,
    action: BulkAction,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let (from, to): (&[&str], &str) = match action {
        BulkAction::Suspend => (&["ACTIVE"], "SUSPENDED"),
        BulkAction::Activate => (&["SUSPENDED"], "ACTIVE"),
        BulkAction::Delete => (&["ACTIVE", "SUSPENDED"], "DELETED"),
    };
    let mut changed = 0;
    for status in from {
        loop {
            // A batch InnoDB rolled back as a deadlock victim (1213), say against a redeem or
            // a generation job on the same codes, is simply run again.
            let mut attempts = 0;
            let (batch_changed, batch_len) = loop {
                match bulk_batch(pool, topic, status, to, action, now).await {
                    Err(err) if is_deadlock(&err) && attempts < 5 => attempts += 1,
                    other => break other?,
                }
            };
            changed += batch_changed;
            if batch_len < BULK_BATCH as usize {
                break;
            }
        }
    }
    Ok(changed)
}

/// One transaction of [`bulk_change`]: locks up to [`BULK_BATCH`] codes of `topic` in
/// `status` and sets them to `to`; returns (codes changed, codes locked).
async fn bulk_batch(
    pool: &MySqlPool,
    topic: i64,
    status: &str,
    to: &str,
    action: BulkAction,
    now: DateTime<Utc>,
) -> Result<(u64, usize), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Bulk changes of one topic take turns batch by batch: without this lock, a suspend and
    // an activate walking the same (topic, status) index deadlocked again and again.
    sqlx::query("SELECT id FROM coupon_topics WHERE id = ? FOR UPDATE")
        .bind(topic)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<i64> = sqlx::query_scalar(BULK_BATCH_SQL)
        .bind(topic)
        .bind(status)
        .bind(BULK_BATCH)
        .fetch_all(&mut *tx)
        .await?;
    let mut changed = 0;
    if !ids.is_empty() {
        let mut update = QueryBuilder::<MySql>::new("UPDATE coupon_codes SET status = ");
        update.push_bind(to);
        if action == BulkAction::Delete {
            update
                .push(", deleted_at = ")
                .push_bind(crate::store::db::datetime(now));
        }
        update.push(" WHERE id IN ");
        policies::push_id_list(&mut update, &ids);
        changed = update.build().execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok((changed, ids.len()))
}

/// Locks the next batch of a bulk change: the first `?` (limit) codes of a topic (`?`) in a
/// status (`?`), on the forced `(topic_id, status, id)` index, so a batch reads only its rows.
pub const BULK_BATCH_SQL: &str =
    "SELECT id FROM coupon_codes FORCE INDEX (idx_coupon_codes_topic_status) \
     WHERE topic_id = ? AND status = ? ORDER BY id LIMIT ? FOR UPDATE";
