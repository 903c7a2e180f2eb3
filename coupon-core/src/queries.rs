//! Read-side queries: a user's coupons, policy search, per-coupon stats.
//!
//! Lists use keyset pagination (newest first, `id < cursor`), never `OFFSET`, so page N costs
//! the same as page 1; each filter combination is served by an index
//! (`coupon_issues (user_id, status, id)`, `coupons` primary key).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::domain::{CouponId, CouponStatus, UserId, ValidationError};
use crate::policies;

/// Most items one page may hold (count).
pub const MAX_PAGE: u32 = 100;

/// A page size and position: `limit` 1–[`MAX_PAGE`] (default 20), `cursor` the `next_cursor`
/// of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Items wanted (count).
    pub limit: u32,
    /// Only items with a smaller id than this.
    pub before_id: Option<i64>,
}

impl Page {
    /// Reads `limit` and `cursor` query parameters.
    ///
    /// # Errors
    /// [`ValidationError`] for a limit out of range or a cursor that is not one we handed out.
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, ValidationError> {
        let limit = limit.unwrap_or(20);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ValidationError(format!(
                "limit must be from 1 to {MAX_PAGE}"
            )));
        }
        let before_id = cursor
            .map(|c| c.parse::<i64>().ok().filter(|id| *id > 0))
            .map(|id| id.ok_or_else(|| ValidationError("cursor is not valid".into())))
            .transpose()?;
        Ok(Self { limit, before_id })
    }
}

/// One page of `T`: `{"items": [...], "next_cursor": "123" | null}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PageOf<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn paginate<T>(mut items: Vec<T>, page: Page, id_of: impl Fn(&T) -> i64) -> PageOf<T> {
    let more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    let next_cursor = more
        .then(|| items.last().map(|i| id_of(i).to_string()))
        .flatten();
    PageOf { items, next_cursor }
}

/// States of an issued coupon.
pub const ISSUE_STATES: [&str; 4] = ["ISSUED", "RESERVED", "USED", "EXPIRED"];

/// One of a user's coupons, with the policy's display fields.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserCoupon {
    /// `coupon_issues.id`: what redeem and reserve take.
    pub coupon_issue_id: i64,
    /// The policy.
    pub coupon_id: i64,
    /// `ISSUED`, `RESERVED`, `USED` or `EXPIRED`.
    pub status: String,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// When it stops being usable, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was used.
    pub used_at: Option<DateTime<Utc>>,
    /// The order it is used for or reserved by.
    pub order_id: Option<String>,
    /// Policy title.
    pub title: String,
    /// `FIXED` or `PERCENTAGE`.
    pub discount_type: String,
    /// Amount or percent.
    pub discount_value: i64,
    /// Cap of a percentage discount.
    pub max_discount_amount: Option<i64>,
    /// Smallest order it applies to.
    pub min_order_amount: i64,
}

fn user_coupon(row: &MySqlRow) -> Result<UserCoupon, sqlx::Error> {
    Ok(UserCoupon {
        coupon_issue_id: row.try_get("coupon_issue_id")?,
        coupon_id: row.try_get("coupon_id")?,
        status: row.try_get("status")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        order_id: crate::store::db::binary_text(row, "order_id")?,
        title: row.try_get("title")?,
        discount_type: row.try_get("discount_type")?,
        discount_value: row.try_get("discount_value")?,
        max_discount_amount: row.try_get("max_discount_amount")?,
        min_order_amount: row.try_get("min_order_amount")?,
    })
}

/// `user`'s coupons, newest first, optionally only those in `status` (one of
/// [`ISSUE_STATES`]; the caller validates it).
///
/// # Errors
/// Any database error.
pub async fn user_coupons(
    pool: &MySqlPool,
    user: UserId,
    status: Option<&str>,
    page: Page,
) -> Result<PageOf<UserCoupon>, sqlx::Error> {
    let mut query = QueryBuilder::<MySql>::new(
        "SELECT ci.id AS coupon_issue_id, ci.coupon_id, ci.status, ci.issued_at, ci.expires_at, \
         ci.used_at, ci.order_id, c.title, c.discount_type, c.discount_value, \
         c.max_discount_amount, c.min_order_amount \
         FROM coupon_issues ci JOIN coupons c ON c.id = ci.coupon_id WHERE ci.user_id = ",
    );
    query.push_bind(user.get());
    if let Some(status) = status {
        query.push(" AND ci.status = ").push_bind(status.to_owned());
    }
    if let Some(before) = page.before_id {
        query.push(" AND ci.id < ").push_bind(before);
    }
    query
        .push(" ORDER BY ci.id DESC LIMIT ")
        .push_bind(i64::from(page.limit) + 1);
    let rows = query.build().fetch_all(pool).await?;
    let items = rows
        .iter()
        .map(user_coupon)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paginate(items, page, |c| c.coupon_issue_id))
}

/// Filters of the policy search; all optional.
#[derive(Debug, Clone, Default)]
pub struct PolicyFilter {
    /// Only policies in this state.
    pub status: Option<CouponStatus>,
    /// Only policies whose issue window contains this instant.
    pub active_at: Option<DateTime<Utc>>,
    /// Only policies whose title contains this text (case-insensitive under the default
    /// collation).
    pub title_contains: Option<String>,
    /// Only policies whose issue window opened at or before this instant (what the public may
    /// see).
    pub opened_by: Option<DateTime<Utc>>,
}

/// Live (not deleted) policies matching `filter`, newest first.
///
/// # Errors
/// Any database error.
pub async fn search_policies(
    pool: &MySqlPool,
    filter: &PolicyFilter,
    page: Page,
) -> Result<PageOf<crate::domain::CouponPolicy>, sqlx::Error> {
    let mut query = QueryBuilder::<MySql>::new(format!(
        "SELECT {} FROM coupons WHERE deleted_at IS NULL",
        policies::POLICY_COLUMNS
    ));
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(at) = filter.opened_by {
        query
            .push(" AND issue_starts_at <= ")
            .push_bind(crate::store::db::datetime(at));
    }
    if let Some(at) = filter.active_at {
        query
            .push(" AND issue_starts_at <= ")
            .push_bind(crate::store::db::datetime(at));
        query
            .push(" AND issue_ends_at > ")
            .push_bind(crate::store::db::datetime(at));
    }
    if let Some(text) = &filter.title_contains {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        query
            .push(" AND title LIKE ")
            .push_bind(format!("%{escaped}%"));
    }
    if let Some(before) = page.before_id {
        query.push(" AND id < ").push_bind(before);
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(page.limit) + 1);
    let rows = query.build().fetch_all(pool).await?;
    let items = rows
        .iter()
        .map(policies::policy_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paginate(items, page, |p| p.id.get()))
}

/// Counts of one coupon's issued rows by state (count each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueCounts {
    /// `ISSUED` (usable).
    pub issued: i64,
    /// `RESERVED`.
    pub reserved: i64,
    /// `USED`.
    pub used: i64,
    /// `EXPIRED`.
    pub expired: i64,
}

/// Rows of `coupon` by state, read from the `(coupon_id, status)` index alone.
///
/// # Errors
/// Any database error.
pub async fn issue_counts(pool: &MySqlPool, coupon: CouponId) -> Result<IssueCounts, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT status, COUNT(*) AS n FROM coupon_issues WHERE coupon_id = ? GROUP BY status",
    )
    .bind(coupon.get())
    .fetch_all(pool)
    .await?;
    let mut counts = IssueCounts::default();
    for row in rows {
        let n: i64 = row.try_get("n")?;
        match row.try_get::<String, _>("status")?.as_str() {
            "ISSUED" => counts.issued = n,
            "RESERVED" => counts.reserved = n,
            "USED" => counts.used = n,
            "EXPIRED" => counts.expired = n,
            _ => {}
        }
    }
    Ok(counts)
}

/// Stock and persisted count of one limited coupon, for the per-coupon gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveStock {
    /// The coupon policy.
    pub coupon_id: CouponId,
    /// `total_quantity` (count).
    pub total: i64,
    /// `issued_quantity`: rows persisted (count).
    pub issued: i64,
    /// Where its admission state lives.
    pub shards: crate::issue::admission::StockShards,
}

/// The ACTIVE, not deleted, limited-stock coupons whose issue window has opened by `now` and
/// closed no earlier than `closed_since`, latest start first, at most `limit` of them (the
/// cardinality bound of monitoring/METRICS.md).
///
/// # Errors
/// Any database error.
pub async fn live_stocks(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    closed_since: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<LiveStock>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, total_quantity, issued_quantity, stock_shards FROM coupons \
         WHERE status = 'ACTIVE' AND deleted_at IS NULL AND total_quantity IS NOT NULL \
           AND issue_starts_at <= ? AND issue_ends_at >= ? \
         ORDER BY issue_starts_at DESC, id DESC LIMIT ?",
    )
    .bind(crate::store::db::datetime(now))
    .bind(crate::store::db::datetime(closed_since))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let coupon_id =
                CouponId::parse(row.try_get("id")?).map_err(|e| sqlx::Error::ColumnDecode {
                    index: "id".to_owned(),
                    source: Box::new(e),
                })?;
            Ok(LiveStock {
                coupon_id,
                shards: crate::issue::admission::StockShards::new(
                    coupon_id,
                    crate::store::db::shard_count(row.try_get("stock_shards")?)?,
                ),
                total: row.try_get("total_quantity")?,
                issued: row.try_get("issued_quantity")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_bounded_and_cursors_checked() {
        assert_eq!(
            Page::parse(None, None).unwrap(),
            Page {
                limit: 20,
                before_id: None
            }
        );
        assert!(Page::parse(Some(0), None).is_err());
        assert!(Page::parse(Some(101), None).is_err());
        assert!(Page::parse(None, Some("abc")).is_err());
        assert!(Page::parse(None, Some("-4")).is_err());
        assert_eq!(
            Page::parse(Some(5), Some("77")).unwrap().before_id,
            Some(77)
        );
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        let page = Page {
            limit: 2,
            before_id: None,
        };
        let more = paginate(vec![9, 8, 7], page, |i| *i);
        assert_eq!(more.items, vec![9, 8]);
        assert_eq!(more.next_cursor.as_deref(), Some("8"));
        let last = paginate(vec![9, 8], page, |i| *i);
        assert_eq!(last.next_cursor, None);
    }
}
