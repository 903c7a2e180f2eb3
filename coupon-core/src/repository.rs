//! MySQL repositories: coupon policies and issued coupons.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{Connection, MySql, QueryBuilder, Row, Transaction};

use crate::domain::{
    CouponId, CouponPolicy, CouponStatus, CouponType, DiscountType, NewCouponPolicy, UserId,
};
use crate::message::IssueMessage;

pub(crate) const POLICY_COLUMNS: &str = "id, title, coupon_type, total_quantity, issued_quantity, \
     discount_type, discount_value, max_discount_amount, min_order_amount, issue_starts_at, \
     issue_ends_at, valid_days, valid_until, valid_from, status, restore_on_cancel, created_at, \
     updated_at";

pub(crate) fn policy_from_row(row: &MySqlRow) -> Result<CouponPolicy, sqlx::Error> {
    let decode = |column: &str, e: crate::domain::ValidationError| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    };
    Ok(CouponPolicy {
        id: CouponId::parse(row.try_get("id")?).map_err(|e| decode("id", e))?,
        title: row.try_get("title")?,
        coupon_type: CouponType::parse(row.try_get("coupon_type")?)
            .map_err(|e| decode("coupon_type", e))?,
        total_quantity: row.try_get("total_quantity")?,
        issued_quantity: row.try_get("issued_quantity")?,
        discount_type: DiscountType::parse(row.try_get("discount_type")?)
            .map_err(|e| decode("discount_type", e))?,
        discount_value: row.try_get("discount_value")?,
        max_discount_amount: row.try_get("max_discount_amount")?,
        min_order_amount: row.try_get("min_order_amount")?,
        issue_starts_at: row.try_get("issue_starts_at")?,
        issue_ends_at: row.try_get("issue_ends_at")?,
        valid_days: row.try_get("valid_days")?,
        valid_until: row.try_get("valid_until")?,
        valid_from: row.try_get("valid_from")?,
        restore_on_cancel: row.try_get("restore_on_cancel")?,
        status: CouponStatus::parse(row.try_get("status")?).map_err(|e| decode("status", e))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Appends `(?, ?, …)` with `ids` bound, for `id IN` clauses.
pub(crate) fn push_id_list(query: &mut QueryBuilder<'_, MySql>, ids: &[i64]) {
    query.push("(");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")");
}

/// Inserts a validated policy inside `tx` and reads it back.
///
/// The caller prepares the coupon's Redis state before committing `tx`, so a committed policy
/// always has its stock bound in Redis.
///
/// # Errors
/// Any database error.
pub async fn insert_policy(
    tx: &mut Transaction<'_, MySql>,
    new: &NewCouponPolicy,
) -> Result<CouponPolicy, sqlx::Error> {
    let id = sqlx::query(
        "INSERT INTO coupons (title, coupon_type, total_quantity, discount_type, discount_value, \
         max_discount_amount, min_order_amount, issue_starts_at, issue_ends_at, valid_days, \
         valid_until, valid_from, restore_on_cancel, status) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ACTIVE')",
    )
    .bind(new.title.trim())
    .bind(new.coupon_type.as_str())
    .bind(new.total_quantity)
    .bind(new.discount_type.as_str())
    .bind(new.discount_value)
    .bind(new.max_discount_amount)
    .bind(new.min_order_amount)
    .bind(crate::db::datetime(new.issue_starts_at))
    .bind(crate::db::datetime(new.issue_ends_at))
    .bind(new.valid_days)
    .bind(crate::db::datetime(new.valid_until))
    .bind(crate::db::datetime(new.valid_from))
    .bind(new.restore_on_cancel)
    .execute(&mut **tx)
    .await?
    .last_insert_id();
    let row = sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM coupons WHERE id = ?"
    ))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    policy_from_row(&row)
}

/// Reads one policy, or `None` when no row has that id or the policy was deleted.
///
/// # Errors
/// Any database error.
pub async fn find_policy(
    pool: &MySqlPool,
    id: CouponId,
) -> Result<Option<CouponPolicy>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM coupons WHERE id = ? AND deleted_at IS NULL"
    ))
    .bind(id.get())
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(policy_from_row)
    .transpose()
}

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
                .push_bind(crate::db::datetime(msg.admitted_at))
                .push_bind(crate::db::datetime(crate::domain::expiry(
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

/// Changes an operator may make to a live policy; absent fields stay as they are. The stock,
/// the discount and the start of the issue window are fixed once users may hold the coupon.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    /// New title, 1–200 characters.
    pub title: Option<String>,
    /// New end of the issue window (exclusive); must stay after `issue_starts_at`.
    pub issue_ends_at: Option<DateTime<Utc>>,
    /// New days of use after issue (> 0), for coupons issued from now on.
    pub valid_days: Option<i32>,
    /// New absolute end of use, for coupons issued from now on.
    pub valid_until: Option<DateTime<Utc>>,
}

impl PolicyUpdate {
    /// `policy` with this update applied, validated.
    ///
    /// # Errors
    /// [`crate::domain::ValidationError`] naming the broken rule.
    pub fn apply(
        &self,
        policy: &CouponPolicy,
    ) -> Result<CouponPolicy, crate::domain::ValidationError> {
        let fail = |msg: &str| Err(crate::domain::ValidationError(msg.to_owned()));
        let mut next = policy.clone();
        if let Some(title) = &self.title {
            if title.trim().is_empty() || title.chars().count() > 200 {
                return fail("title must have 1 to 200 characters");
            }
            next.title = title.trim().to_owned();
        }
        let times = [self.issue_ends_at, self.valid_until];
        if !times.into_iter().flatten().all(crate::domain::storable) {
            return fail("times must lie between the years 1000 and 9999");
        }
        if self
            .valid_days
            .is_some_and(|d| d > crate::domain::MAX_VALID_DAYS)
        {
            return fail("valid_days must be at most 36500");
        }
        if let Some(ends) = self.issue_ends_at {
            if ends <= next.issue_starts_at {
                return fail("issue_ends_at must be after issue_starts_at");
            }
            next.issue_ends_at = ends;
        }
        if let Some(days) = self.valid_days {
            if days <= 0 {
                return fail("valid_days must be a positive number of days");
            }
            next.valid_days = Some(days);
        }
        if let Some(until) = self.valid_until {
            if until <= next.issue_starts_at {
                return fail("valid_until must be after issue_starts_at");
            }
            next.valid_until = Some(until);
        }
        Ok(next)
    }
}

/// Stores the administrable fields of `policy` (title, issue end, validity, status) and reads
/// the row back; `None` when the policy does not exist or was deleted.
///
/// # Errors
/// Any database error.
pub async fn save_policy_admin_fields(
    pool: &MySqlPool,
    policy: &CouponPolicy,
) -> Result<Option<CouponPolicy>, sqlx::Error> {
    sqlx::query(
        "UPDATE coupons SET title = ?, issue_ends_at = ?, valid_days = ?, valid_until = ?, status = ? \
         WHERE id = ? AND deleted_at IS NULL",
    )
    .bind(&policy.title)
    .bind(crate::db::datetime(policy.issue_ends_at))
    .bind(policy.valid_days)
    .bind(crate::db::datetime(policy.valid_until))
    .bind(policy.status.as_str())
    .bind(policy.id.get())
    .execute(pool)
    .await?;
    find_policy(pool, policy.id).await
}

/// Soft-deletes a policy: it disappears from reads and issuing; rows already issued stay, and
/// issue messages already accepted are still persisted. Returns whether a live policy was
/// deleted.
///
/// # Errors
/// Any database error.
pub async fn delete_policy(
    pool: &MySqlPool,
    id: CouponId,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(
        "UPDATE coupons SET deleted_at = ?, status = 'SUSPENDED' WHERE id = ? AND deleted_at IS NULL",
    )
    .bind(crate::db::datetime(now))
    .bind(id.get())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(deleted == 1)
}
