//! Archival: soft-deleted codes move to `coupon_codes_archive` in batches, and reads of the
//! archive.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::policies;

use super::*;

/// Moves up to `batch` codes soft-deleted before `deleted_before` (with their redemption, kept
/// in the code row) into `coupon_codes_archive`, in one transaction, and returns how many moved.
/// Each batch is atomic and rows are taken with `FOR UPDATE SKIP LOCKED`, so the job can stop
/// anywhere, be run again, or run on several instances.
///
/// # Errors
/// Any database error (the batch is rolled back whole).
pub async fn archive_deleted(
    pool: &MySqlPool,
    deleted_before: DateTime<Utc>,
    batch: u32,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM coupon_codes FORCE INDEX (idx_coupon_codes_deleted) \
         WHERE status = 'DELETED' AND deleted_at < ? ORDER BY deleted_at LIMIT ? \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(crate::store::db::datetime(deleted_before))
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let mut copy = QueryBuilder::<MySql>::new(format!(
        "INSERT INTO coupon_codes_archive ({CODE_COLUMNS}, archived_at) SELECT {CODE_COLUMNS}, "
    ));
    copy.push_bind(crate::store::db::datetime(now))
        .push(" FROM coupon_codes WHERE id IN ");
    policies::push_id_list(&mut copy, &ids);
    copy.build().execute(&mut *tx).await?;
    let mut delete = QueryBuilder::<MySql>::new("DELETE FROM coupon_codes WHERE id IN ");
    policies::push_id_list(&mut delete, &ids);
    delete.build().execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// An archived code: [`CodeView`] plus its topic and when it was archived.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchivedCode {
    /// The code as it was.
    #[serde(flatten)]
    pub code: CodeView,
    /// Its topic.
    pub topic_id: i64,
    /// The issued coupon it produced, if redeemed.
    pub coupon_issue_id: Option<i64>,
    /// When it was soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the archival job moved it.
    pub archived_at: DateTime<Utc>,
}

/// Runs [`archive_deleted`] batch after batch until nothing older than `deleted_before` is
/// left, calling `on_batch` with each batch's count; returns the total moved (count).
///
/// # Errors
/// Any database error (batches already moved stay moved; a rerun finishes the job).
pub async fn archive_all_deleted(
    pool: &MySqlPool,
    deleted_before: DateTime<Utc>,
    batch: u32,
    now: DateTime<Utc>,
    mut on_batch: impl FnMut(usize),
) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let moved = archive_deleted(pool, deleted_before, batch, now).await?;
        if moved == 0 {
            return Ok(total);
        }
        total += moved;
        on_batch(moved);
        if moved < batch as usize {
            return Ok(total);
        }
    }
}

fn archived_from_row(row: &sqlx::mysql::MySqlRow) -> Result<ArchivedCode, sqlx::Error> {
    Ok(ArchivedCode {
        code: code_view_from_row(row)?,
        topic_id: row.try_get("topic_id")?,
        coupon_issue_id: row.try_get("coupon_issue_id")?,
        deleted_at: row.try_get("deleted_at")?,
        archived_at: row.try_get("archived_at")?,
    })
}

/// Looks `code` up in the archive.
///
/// # Errors
/// Any database error.
pub async fn find_archived(
    pool: &MySqlPool,
    code: &Code,
) -> Result<Option<ArchivedCode>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {CODE_COLUMNS}, archived_at FROM coupon_codes_archive WHERE code = ? ORDER BY id DESC LIMIT 1"
    ))
    .bind(code.as_str())
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(archived_from_row)
    .transpose()
}

/// Archived codes of `topic`, newest first (`id < before`), at most `limit`; walks
/// `(topic_id, id)`.
///
/// # Errors
/// Any database error.
pub async fn list_archived(
    pool: &MySqlPool,
    topic: i64,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<ArchivedCode>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {CODE_COLUMNS}, archived_at FROM coupon_codes_archive \
         WHERE topic_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(topic)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(archived_from_row)
    .collect()
}
