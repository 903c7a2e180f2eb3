//! The expiry jobs: noticing coupons whose validity ends soon (`EXPIRING_SOON` events) and
//! expiring those past it (`EXPIRED`), each in batches taken with `FOR UPDATE SKIP LOCKED` so
//! several consumer instances can run them. Their events go through the outbox
//! ([`crate::events`]).

use chrono::{DateTime, Duration, Utc};
use sqlx::MySqlPool;

use crate::events::{record, update_ids, EventType};

/// One batch of [`notice_expiring`]: binds `now`, `now + window`, `batch`. The index
/// `(status, expiring_notified_at, expires_at)` is forced so a batch reads only the rows it
/// takes, never the ones noticed before (the optimizer may otherwise pick `(status, expires_at)`
/// and walk them all).
pub const EXPIRING_BATCH_SQL: &str = "SELECT id FROM coupon_issues \
     FORCE INDEX (idx_coupon_issues_expiring) \
     WHERE status = 'ISSUED' AND expiring_notified_at IS NULL \
     AND expires_at > ? AND expires_at <= ? \
     ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED";

/// Marks up to `batch` usable coupons whose validity ends within `window` of `now` as notified
/// and records their `EXPIRING_SOON` events; each coupon is noticed once. Rows are taken with
/// `FOR UPDATE SKIP LOCKED`, so several instances can run it. Returns how many were noticed.
///
/// # Errors
/// Any database error.
pub async fn notice_expiring(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    window: Duration,
    batch: u32,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(EXPIRING_BATCH_SQL)
        .bind(crate::store::db::datetime(now))
        .bind(crate::store::db::datetime(now + window))
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
    update_ids(
        &mut tx,
        "UPDATE coupon_issues SET expiring_notified_at = ",
        now,
        &ids,
    )
    .await?;
    record(&mut tx, EventType::ExpiringSoon, &ids, now).await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// Marks up to `batch` usable coupons past their validity `EXPIRED` and records their events.
/// Held coupons are left to the sweeper (they expire once released). Safe with several
/// instances (`FOR UPDATE SKIP LOCKED`). Returns how many expired.
///
/// # Errors
/// Any database error.
pub async fn expire(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    batch: u32,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM coupon_issues WHERE status = 'ISSUED' AND expires_at <= ? \
         ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(crate::store::db::datetime(now))
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    update_ids(
        &mut tx,
        "UPDATE coupon_issues SET status = 'EXPIRED', updated_at = ",
        now,
        &ids,
    )
    .await?;
    record(&mut tx, EventType::Expired, &ids, now).await?;
    tx.commit().await?;
    Ok(ids.len())
}
