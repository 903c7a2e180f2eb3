//! MySQL repository of coupon policies: insert, find, operator changes, delete, and the row
//! mapping the other modules share. Issued coupons are written by [`crate::issue::persistence`].
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no database.

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row, Transaction};

use crate::domain::{
    CouponId, CouponPolicy, CouponStatus, CouponType, DiscountType, PolicyRecord, ValidPolicy,
};

pub(crate) const POLICY_COLUMNS: &str = "id, title, coupon_type, total_quantity, issued_quantity, \
     discount_type, discount_value, max_discount_amount, min_order_amount, issue_starts_at, \
     issue_ends_at, valid_days, valid_until, valid_from, status, restore_on_cancel, created_at, \
     updated_at, version, stock_shards";

pub(crate) fn policy_from_row(row: &MySqlRow) -> Result<CouponPolicy, sqlx::Error> {
    let decode = |column: &str, e: crate::domain::ValidationError| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    };
    let record = PolicyRecord {
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
        version: row.try_get("version")?,
        stock_shards: crate::store::db::shard_count(row.try_get("stock_shards")?)?,
    };
    CouponPolicy::try_from(record).map_err(|e| decode("coupon_type", e))
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

/// Inserts a policy inside `tx` and reads it back.
///
/// The caller prepares the coupon's Redis state before committing `tx`, so a committed policy
/// always has its stock bound in Redis.
///
/// # Errors
/// Any database error.
pub async fn insert_policy(
    tx: &mut Transaction<'_, MySql>,
    new: &ValidPolicy,
) -> Result<CouponPolicy, sqlx::Error> {
    let id = sqlx::query(
        "INSERT INTO coupons (title, coupon_type, total_quantity, discount_type, discount_value, \
         max_discount_amount, min_order_amount, issue_starts_at, issue_ends_at, valid_days, \
         valid_until, valid_from, restore_on_cancel, stock_shards, status) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ACTIVE')",
    )
    .bind(new.title.trim())
    .bind(new.coupon_type.as_str())
    .bind(new.total_quantity)
    .bind(new.discount_type.as_str())
    .bind(new.discount_value)
    .bind(new.max_discount_amount)
    .bind(new.min_order_amount)
    .bind(crate::store::db::datetime(new.issue_starts_at))
    .bind(crate::store::db::datetime(new.issue_ends_at))
    .bind(new.valid_days)
    .bind(crate::store::db::datetime(new.valid_until))
    .bind(crate::store::db::datetime(new.valid_from))
    .bind(new.restore_on_cancel)
    .bind(new.stock_shards)
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
            next.validity = next.validity.with_days(days);
        }
        if let Some(until) = self.valid_until {
            if until <= next.issue_starts_at {
                return fail("valid_until must be after issue_starts_at");
            }
            next.validity = next.validity.with_until(until);
        }
        Ok(next)
    }
}

/// What a conditional admin change found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Written; the row as it now reads (its version raised by one).
    Changed(CouponPolicy),
    /// No live policy has this id (never created, or deleted).
    NotFound,
    /// Another change was written since the version this one read: nothing was written.
    Conflict,
}

/// Stores the administrable fields of `policy` (title, issue end, validity, status) if the
/// row's version is still `policy.version` (the version the change was computed from), raising
/// it by one, and reads the row back. A read-modify-write that lost a race against another
/// admin change writes nothing ([`Saved::Conflict`]) instead of putting back what that change
/// changed.
///
/// # Errors
/// Any database error.
pub async fn save_policy_admin_fields(
    pool: &MySqlPool,
    policy: &CouponPolicy,
) -> Result<Saved, sqlx::Error> {
    let written = sqlx::query(
        "UPDATE coupons SET title = ?, issue_ends_at = ?, valid_days = ?, valid_until = ?, status = ?, \
         version = version + 1 WHERE id = ? AND deleted_at IS NULL AND version = ?",
    )
    .bind(&policy.title)
    .bind(crate::store::db::datetime(policy.issue_ends_at))
    .bind(policy.validity.days())
    .bind(crate::store::db::datetime(policy.validity.until()))
    .bind(policy.status.as_str())
    .bind(policy.id.get())
    .bind(policy.version)
    .execute(pool)
    .await?
    .rows_affected();
    match find_policy(pool, policy.id).await? {
        None => Ok(Saved::NotFound),
        Some(_) if written == 0 => Ok(Saved::Conflict),
        Some(saved) => Ok(Saved::Changed(saved)),
    }
}

/// Whether a policy with this id was soft-deleted (the row is kept): a repeated delete finds
/// it and re-announces the delete to Redis and the other instances.
///
/// # Errors
/// Any database error.
pub async fn is_deleted(pool: &MySqlPool, id: CouponId) -> Result<bool, sqlx::Error> {
    let deleted: Option<bool> =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM coupons WHERE id = ?")
            .bind(id.get())
            .fetch_optional(pool)
            .await?;
    Ok(deleted == Some(true))
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
        "UPDATE coupons SET deleted_at = ?, status = 'SUSPENDED', version = version + 1 \
         WHERE id = ? AND deleted_at IS NULL",
    )
    .bind(crate::store::db::datetime(now))
    .bind(id.get())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(deleted == 1)
}
