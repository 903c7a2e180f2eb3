//! Persisting issue messages into `coupon_issues`: one transaction per batch, idempotent by
//! `UNIQUE (coupon_id, user_id)` (a redelivered message is a no-op), with the policy's
//! `issued_quantity` raised by the rows actually inserted.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no database.

use std::collections::{BTreeMap, HashSet};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No `coupons` row has the message's coupon id.
    UnknownCoupon,
    /// Persisting the message would push `issued_quantity` past `total_quantity`: the
    /// admission set and MySQL disagree (invariant 1), which needs an operator. Only the
    /// messages beyond the units left are refused; the rest of their coupon's group persists.
    StockExceeded,
    /// MySQL refused the message's row for a reason that a retry cannot change (a foreign
    /// key, a CHECK constraint, a value out of range or too long); the error is kept.
    RefusedByDatabase(String),
}

impl Rejection {
    /// Stable label, used as the dead-letter reason and the metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UnknownCoupon => "unknown_coupon",
            Self::StockExceeded => "stock_exceeded",
            Self::RefusedByDatabase(_) => "refused_by_database",
        }
    }
}

/// Whether MySQL refused a row for good: a data or constraint error that the same row meets
/// again on every retry (MySQL/MariaDB error numbers: 1048 NULL in a NOT NULL column, 1264
/// and 1690 out of range, 1265 truncated, 1292 and 1366 incorrect value, 1406 too long, 1451/1452
/// foreign key, 3819 (MySQL) and 4025 (MariaDB) CHECK constraint). A duplicate key (1062) is
/// not one of them: the pre-read absorbs duplicates, so one seen here is a race with another
/// writer and the retry finds the row. Connection errors, deadlocks (1213) and lock wait
/// timeouts (1205) are transient too.
pub fn is_refusal(err: &sqlx::Error) -> bool {
    const REFUSALS: [u16; 11] = [
        1048, 1264, 1265, 1292, 1366, 1406, 1451, 1452, 3819, 4025, 1690,
    ];
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|db| REFUSALS.contains(&db.number()))
}

/// What [`persist_batch`] did, per coupon.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PersistReport {
    /// Rows actually inserted, per coupon (redelivered messages insert nothing).
    pub inserted: BTreeMap<CouponId, u64>,
    /// Indexes (into the batch) of the messages whose row was inserted, in ascending order.
    pub persisted: Vec<usize>,
    /// Messages skipped because their row was already present (count).
    pub duplicates: u64,
    /// Indexes (into the batch) of messages that can never be persisted, with the reason, in
    /// ascending order.
    pub rejected: Vec<(usize, Rejection)>,
    /// Coupons whose `issued_quantity` reached `total_quantity` in this batch.
    pub sold_out: Vec<CouponId>,
}

/// Persists a batch of issue messages in ONE transaction: per coupon (ascending ids, so
/// concurrent consumers lock coupons in the same order and cannot deadlock on them), the
/// group's users that already have a row under `UNIQUE (coupon_id, user_id)` are read (a
/// locking read, after the coupon row is locked), the others are inserted with one multi-row
/// `INSERT` (no `IGNORE`: MySQL's `IGNORE` turns foreign-key, CHECK and truncation errors
/// into warnings too, so a refused row would pass for a duplicate), then
/// `issued_quantity += rows inserted`.
///
/// At-least-once delivery plus the unique key make each issue persist exactly once: a batch
/// delivered twice inserts and counts nothing the second time. Each coupon's group runs in a
/// savepoint. Messages beyond the units the coupon has left are reported as
/// [`Rejection::StockExceeded`] (the earliest in the batch persist); a row MySQL refuses for
/// good ([`is_refusal`]) is found by inserting the group's rows one at a time, and only it is
/// reported, as [`Rejection::RefusedByDatabase`].
///
/// # Errors
/// Any other database error (connection, deadlock, lock wait timeout, a duplicate raced in by
/// another writer); the transaction is rolled back and nothing of the batch is persisted, so
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
        let policy = GroupPolicy {
            total: row.try_get("total_quantity")?,
            issued: row.try_get("issued_quantity")?,
            valid_days: row.try_get("valid_days")?,
            valid_until: row.try_get("valid_until")?,
        };
        coupons.insert(id, policy);
    }

    for (coupon, indexes) in &groups {
        let Some(policy) = coupons.get(&coupon.get()) else {
            report
                .rejected
                .extend(indexes.iter().map(|&i| (i, Rejection::UnknownCoupon)));
            continue;
        };
        let mut savepoint = Connection::begin(&mut *tx).await?;
        let present = present_users(&mut savepoint, *coupon, batch, indexes).await?;
        let mut seen = HashSet::new();
        let mut fresh: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|&i| {
                let user = batch[i].user_id.get();
                !present.contains(&user) && seen.insert(user)
            })
            .collect();
        report.duplicates += (indexes.len() - fresh.len()) as u64;
        if let Some(total) = policy.total {
            let room = usize::try_from(total - policy.issued).unwrap_or(0);
            if fresh.len() > room {
                let excess = fresh.split_off(room);
                tracing::error!(
                    coupon_id = %coupon, issued = policy.issued, total, excess = excess.len(),
                    "persisting would exceed the stock; the excess is dead-lettered"
                );
                report
                    .rejected
                    .extend(excess.into_iter().map(|i| (i, Rejection::StockExceeded)));
            }
        }
        let inserted = match insert_rows(&mut savepoint, batch, &fresh, policy).await {
            Ok(()) => fresh,
            Err(err) if is_refusal(&err) => {
                tracing::warn!(%err, coupon_id = %coupon, "MySQL refused a row; inserting the group's rows one at a time");
                let mut inserted = Vec::with_capacity(fresh.len());
                for i in fresh {
                    let mut one = Connection::begin(&mut *savepoint).await?;
                    match insert_rows(&mut one, batch, &[i], policy).await {
                        Ok(()) => {
                            one.commit().await?;
                            inserted.push(i);
                        }
                        Err(err) if is_refusal(&err) => {
                            one.rollback().await?;
                            report
                                .rejected
                                .push((i, Rejection::RefusedByDatabase(err.to_string())));
                        }
                        Err(err) => return Err(err),
                    }
                }
                inserted
            }
            Err(err) => return Err(err),
        };
        if inserted.is_empty() {
            savepoint.commit().await?;
            continue;
        }
        let count = inserted.len() as u64;
        sqlx::query("UPDATE coupons SET issued_quantity = issued_quantity + ? WHERE id = ?")
            .bind(count)
            .bind(coupon.get())
            .execute(&mut *savepoint)
            .await?;
        // ISSUED events have ids derived from the issued coupon (the outbox's unique key
        // skips one announced twice); the new rows are read once, by the unique key, and the
        // events built from them.
        let mut rows = QueryBuilder::<MySql>::new(format!(
            "SELECT {} FROM coupon_issues WHERE coupon_id = ",
            crate::events::EVENT_SOURCE_COLUMNS
        ));
        rows.push_bind(coupon.get()).push(" AND user_id IN (");
        let mut users = rows.separated(", ");
        for &i in &inserted {
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
        savepoint.commit().await?;
        report.inserted.insert(*coupon, count);
        report.persisted.extend(inserted);
        let now_issued = policy.issued + i64::try_from(count).unwrap_or(i64::MAX);
        if policy.total == Some(now_issued) {
            report.sold_out.push(*coupon);
        }
    }
    tx.commit().await?;
    report.rejected.sort_by_key(|&(i, _)| i);
    report.persisted.sort_unstable();
    Ok(report)
}

/// A coupon's row as a batch's group needs it, read under its lock.
struct GroupPolicy {
    total: Option<i64>,
    issued: i64,
    valid_days: Option<i32>,
    valid_until: Option<DateTime<Utc>>,
}

/// The users among `indexes` of `batch` that already have a row of `coupon` (a locking read,
/// so a row another transaction committed after this one began is seen).
async fn present_users(
    conn: &mut sqlx::MySqlConnection,
    coupon: CouponId,
    batch: &[IssueMessage],
    indexes: &[usize],
) -> Result<HashSet<i64>, sqlx::Error> {
    let mut query =
        QueryBuilder::<MySql>::new("SELECT user_id FROM coupon_issues WHERE coupon_id = ");
    query.push_bind(coupon.get()).push(" AND user_id IN (");
    let mut users = query.separated(", ");
    for &i in indexes {
        users.push_bind(batch[i].user_id.get());
    }
    query.push(") FOR UPDATE");
    let rows = query.build().fetch_all(conn).await?;
    rows.iter()
        .map(|row| row.try_get::<i64, _>("user_id"))
        .collect()
}

/// Inserts the rows of `indexes` (none: nothing to do) with one multi-row `INSERT`.
async fn insert_rows(
    conn: &mut sqlx::MySqlConnection,
    batch: &[IssueMessage],
    indexes: &[usize],
    policy: &GroupPolicy,
) -> Result<(), sqlx::Error> {
    if indexes.is_empty() {
        return Ok(());
    }
    let mut insert = QueryBuilder::<MySql>::new(
        "INSERT INTO coupon_issues \
         (coupon_id, user_id, issued_at, expires_at, status, request_id, correlation_id) ",
    );
    insert.push_values(indexes, |mut row, &i| {
        let msg = &batch[i];
        row.push_bind(msg.coupon_id.get())
            .push_bind(msg.user_id.get())
            .push_bind(crate::store::db::datetime(msg.admitted_at))
            .push_bind(crate::store::db::datetime(crate::domain::expiry(
                policy.valid_days,
                policy.valid_until,
                msg.admitted_at,
            )))
            .push_bind("ISSUED")
            .push_bind(msg.request_id.to_string())
            .push_bind(msg.correlation_id.as_deref());
    });
    insert.build().execute(conn).await?;
    Ok(())
}
