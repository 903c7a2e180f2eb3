//! Persisting issue messages into `coupon_issues`: one transaction per batch, idempotent by
//! `UNIQUE (coupon_id, user_id)` (a redelivered message is a no-op), with the policy's
//! `issued_quantity` raised by the rows actually inserted.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlPool;
use sqlx::{Connection, MySql, QueryBuilder, Row};

use crate::domain::{CouponId, UserId};
use crate::issue::message::IssueMessage;

/// Whether `(coupon, user)` has a `coupon_issues` row.
///
/// # Errors
/// Any database error.
pub async fn issue_exists(
    pool: &MySqlPool,
    coupon: CouponId,
    user: UserId,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT 1 FROM coupon_issues WHERE coupon_id = ? AND user_id = ?")
        .bind(coupon.get())
        .bind(user.get())
        .fetch_optional(pool)
        .await?;
    Ok(row.is_some())
}

/// Why a message of a batch can never be persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `coupons` row has the message's coupon id.
    UnknownCoupon,
    /// Persisting the coupon's group would push `issued_quantity` past `total_quantity`: the
    /// admission set and MySQL disagree (invariant 1), which needs an operator.
    StockExceeded,
}

impl Rejection {
    /// Stable label, used as the dead-letter reason and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCoupon => "unknown_coupon",
            Self::StockExceeded => "stock_exceeded",
        }
    }
}

/// What [`persist_batch`] did, per coupon.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PersistReport {
    /// Rows actually inserted, per coupon (redelivered messages insert nothing).
    pub inserted: BTreeMap<CouponId, u64>,
    /// Messages skipped because their row was already present (count).
    pub duplicates: u64,
    /// Indexes (into the batch) of messages that can never be persisted, with the reason.
    pub rejected: Vec<(usize, Rejection)>,
    /// Coupons whose `issued_quantity` reached `total_quantity` in this batch.
    pub sold_out: Vec<CouponId>,
}

/// Persists a batch of issue messages in ONE transaction: per coupon (ascending ids, so
/// concurrent consumers lock coupons in the same order and cannot deadlock on them), one
/// multi-row `INSERT IGNORE` that skips rows already present under
/// `UNIQUE (coupon_id, user_id)`, then `issued_quantity += rows actually inserted`.
///
/// At-least-once delivery plus the unique key make each issue persist exactly once: a batch
/// delivered twice inserts and counts nothing the second time. Each coupon's group runs in a
/// savepoint, so a group that would exceed the stock is rolled back and reported as
/// [`Rejection::StockExceeded`] without failing the rest.
///
/// # Errors
/// Any database error; the transaction is rolled back and nothing of the batch is persisted, so
/// the caller may retry the whole batch.
pub async fn persist_batch(
    pool: &MySqlPool,
    batch: &[IssueMessage],
) -> Result<PersistReport, sqlx::Error> {
    let mut report = PersistReport::default();
    if batch.is_empty() {
        return Ok(report);
    }
    let mut groups: BTreeMap<CouponId, Vec<usize>> = BTreeMap::new();
    for (i, msg) in batch.iter().enumerate() {
        groups.entry(msg.coupon_id).or_default().push(i);
    }

    let mut tx = pool.begin().await?;
    let mut lock = QueryBuilder::<MySql>::new(
        "SELECT id, total_quantity, issued_quantity, valid_days, valid_until FROM coupons WHERE id IN (",
    );
    let mut ids = lock.separated(", ");
    for id in groups.keys() {
        ids.push_bind(id.get());
    }
    lock.push(") ORDER BY id FOR UPDATE");
    let mut coupons = BTreeMap::new();
    for row in lock.build().fetch_all(&mut *tx).await? {
        let id: i64 = row.try_get("id")?;
        let total: Option<i64> = row.try_get("total_quantity")?;
        let issued: i64 = row.try_get("issued_quantity")?;
        let valid_days: Option<i32> = row.try_get("valid_days")?;
        let valid_until: Option<DateTime<Utc>> = row.try_get("valid_until")?;
        coupons.insert(id, (total, issued, valid_days, valid_until));
    }

    for (coupon, indexes) in &groups {
        let Some(&(total, issued, valid_days, valid_until)) = coupons.get(&coupon.get()) else {
            report
                .rejected
                .extend(indexes.iter().map(|&i| (i, Rejection::UnknownCoupon)));
            continue;
        };
        let mut savepoint = Connection::begin(&mut *tx).await?;
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO coupon_issues (coupon_id, user_id, issued_at, expires_at, status, request_id) ",
        );
        insert.push_values(indexes, |mut row, &i| {
            let msg = &batch[i];
            row.push_bind(msg.coupon_id.get())
                .push_bind(msg.user_id.get())
                .push_bind(crate::store::db::datetime(msg.admitted_at))
                .push_bind(crate::store::db::datetime(crate::domain::expiry(
                    valid_days,
                    valid_until,
                    msg.admitted_at,
                )))
                .push_bind("ISSUED")
                .push_bind(msg.request_id.to_string());
        });
        let inserted = insert
            .build()
            .execute(&mut *savepoint)
            .await?
            .rows_affected();
        let now_issued = issued + i64::try_from(inserted).unwrap_or(i64::MAX);
        if total.is_some_and(|total| now_issued > total) {
            savepoint.rollback().await?;
            tracing::error!(
                coupon_id = %coupon, issued, inserted, ?total,
                "persisting would exceed the stock; group dead-lettered"
            );
            report
                .rejected
                .extend(indexes.iter().map(|&i| (i, Rejection::StockExceeded)));
            continue;
        }
        if inserted > 0 {
            sqlx::query("UPDATE coupons SET issued_quantity = issued_quantity + ? WHERE id = ?")
                .bind(inserted)
                .bind(coupon.get())
                .execute(&mut *savepoint)
                .await?;
        }
        if inserted > 0 {
            // ISSUED events have ids derived from the issued coupon, so the rows already
            // announced by an earlier delivery are skipped by the outbox's unique key. The
            // rows are read once, by the unique key, and the events built from them.
            let mut rows = QueryBuilder::<MySql>::new(format!(
                "SELECT {} FROM coupon_issues WHERE coupon_id = ",
                crate::events::EVENT_SOURCE_COLUMNS
            ));
            rows.push_bind(coupon.get()).push(" AND user_id IN (");
            let mut users = rows.separated(", ");
            for &i in indexes {
                users.push_bind(batch[i].user_id.get());
            }
            rows.push(")");
            let rows = rows.build().fetch_all(&mut *savepoint).await?;
            crate::events::record_rows(
                &mut savepoint,
                crate::events::EventType::Issued,
                &rows,
                Utc::now(),
            )
            .await?;
        }
        savepoint.commit().await?;
        report.duplicates += indexes.len() as u64 - inserted;
        if inserted > 0 {
            report.inserted.insert(*coupon, inserted);
            if total == Some(now_issued) {
                report.sold_out.push(*coupon);
            }
        }
    }
    tx.commit().await?;
    Ok(report)
}
