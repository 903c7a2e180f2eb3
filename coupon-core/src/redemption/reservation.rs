//! Checkout holds: reserve a coupon for an order, then confirm it (the order was paid) or
//! release it (the order failed or the hold expired); the payment results coupon-consumer
//! reads settle holds by order.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::domain::{CouponId, UserId};
use crate::events::{self, EventType};
use crate::policies;

use super::*;

/// A checkout hold: `{"coupon_issue_id": 9, "coupon_id": 1, "user_id": 7, "order_id": "o-1",
/// "order_amount": 30000, "discount_amount": 5000, "final_amount": 25000,
/// "status": "RESERVED", "reserved_until": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    /// The held coupon.
    pub coupon_issue_id: i64,
    /// Its policy.
    pub coupon_id: CouponId,
    /// Its owner.
    pub user_id: UserId,
    /// The order holding it.
    pub order_id: OrderId,
    /// Order amount the discount was computed on.
    pub order_amount: i64,
    /// Discount that confirming will grant.
    pub discount_amount: i64,
    /// `order_amount - discount_amount`.
    pub final_amount: i64,
    /// Always `RESERVED`.
    pub status: &'static str,
    /// When the hold ends unless confirmed; the sweeper then releases it.
    pub reserved_until: DateTime<Utc>,
}

/// Holds `user`'s coupon `issue_id` for an order until `now + hold`. The same checks as
/// [`redeem`] apply, the order is tied to `user` ([`bind_order`]); one conditional `UPDATE … WHERE status = 'ISSUED'` decides among
/// concurrent holds, so a coupon is held for at most one order, and a held coupon cannot be
/// redeemed directly ([`RedeemError::Reserved`]).
///
/// # Errors
/// A [`RedeemError`] naming the broken rule, or a database error.
pub async fn reserve(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_id: &OrderId,
    order_amount: i64,
    hold: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Reservation, RedeemError> {
    let (issue, policy) = usable(pool, issue_id, user, order_amount, now).await?;
    let reserved_until = now + hold;
    let mut tx = pool.begin().await?;
    bind_order(&mut tx, order_id, user, now).await?;
    let claimed = sqlx::query(
        "UPDATE coupon_issues SET status = 'RESERVED', order_id = ?, order_amount = ?, \
         reserved_until = ? WHERE id = ? AND user_id = ? AND status = 'ISSUED' \
         AND (expires_at IS NULL OR expires_at > ?)",
    )
    .bind(order_id.as_str())
    .bind(order_amount)
    .bind(crate::store::db::datetime(reserved_until))
    .bind(issue_id)
    .bind(user.get())
    .bind(crate::store::db::datetime(now))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        let now_state = issue_of(pool, issue_id, user).await?;
        return Err(state_refusal(&now_state, now).unwrap_or(RedeemError::Reserved));
    }
    events::record(&mut tx, EventType::Reserved, &[issue_id], now).await?;
    tx.commit().await?;
    let discount = policy.discount_for(order_amount);
    Ok(Reservation {
        coupon_issue_id: issue_id,
        coupon_id: issue.coupon_id,
        user_id: user,
        order_id: order_id.clone(),
        order_amount,
        discount_amount: discount,
        final_amount: order_amount - discount,
        status: "RESERVED",
        reserved_until,
    })
}

/// Turns the hold of `issue_id` by `order_id` into a use (payment succeeded), inside `tx`.
/// `None` when no such hold exists (never held, released, or already confirmed).
async fn confirm_in(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    issue_id: i64,
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<Option<Redemption>, RedeemError> {
    let Some(row) = sqlx::query(
        "SELECT coupon_id, user_id, order_amount FROM coupon_issues \
         WHERE id = ? AND status = 'RESERVED' AND order_id = ? FOR UPDATE",
    )
    .bind(issue_id)
    .bind(order_id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    let coupon = CouponId::parse(row.try_get("coupon_id")?).map_err(|_| RedeemError::NotFound)?;
    let user = UserId::parse(row.try_get("user_id")?).map_err(|_| RedeemError::NotFound)?;
    let order_amount: i64 = row.try_get::<Option<i64>, _>("order_amount")?.unwrap_or(0);
    let policy = sqlx::query(&format!(
        "SELECT {} FROM coupons WHERE id = ?",
        policies::POLICY_COLUMNS
    ))
    .bind(coupon.get())
    .fetch_one(&mut **tx)
    .await?;
    let discount = policies::policy_from_row(&policy)?.discount_for(order_amount);
    sqlx::query(
        "UPDATE coupon_issues SET status = 'USED', used_at = ?, reserved_until = NULL \
         WHERE id = ? AND status = 'RESERVED'",
    )
    .bind(crate::store::db::datetime(now))
    .bind(issue_id)
    .execute(&mut **tx)
    .await?;
    let redemption = Redemption {
        coupon_issue_id: issue_id,
        coupon_id: coupon,
        user_id: user,
        order_id: order_id.clone(),
        order_amount,
        discount_amount: discount,
        final_amount: order_amount - discount,
        status: "USED",
        redeemed_at: now,
    };
    record(tx, &redemption).await?;
    events::record(tx, EventType::Used, &[issue_id], now).await?;
    Ok(Some(redemption))
}

/// Confirms `user`'s hold of `issue_id` for `order_id` (payment succeeded): the coupon is used,
/// with the discount computed on the held order amount. A hold past its end that the sweeper
/// has not released yet is still confirmed: the payment went through.
///
/// # Errors
/// [`RedeemError::ReservationNotFound`] when this user holds no such reservation, or a
/// database error.
pub async fn confirm_reservation(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<Redemption, RedeemError> {
    issue_of(pool, issue_id, user).await?;
    let mut tx = pool.begin().await?;
    let redemption = confirm_in(&mut tx, issue_id, order_id, now)
        .await?
        .ok_or(RedeemError::ReservationNotFound)?;
    tx.commit().await?;
    Ok(redemption)
}

const RELEASE: &str = "UPDATE coupon_issues SET status = 'ISSUED', order_id = NULL, \
     order_amount = NULL, reserved_until = NULL WHERE status = 'RESERVED' AND ";

/// Releases `user`'s hold of `issue_id` for `order_id` (checkout abandoned): the coupon is
/// usable again.
///
/// # Errors
/// [`RedeemError::ReservationNotFound`] when there is no such hold, or a database error.
pub async fn release_reservation(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<(), RedeemError> {
    let mut tx = pool.begin().await?;
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM coupon_issues WHERE id = ? AND user_id = ? AND order_id = ? \
         AND status = 'RESERVED' FOR UPDATE",
    )
    .bind(issue_id)
    .bind(user.get())
    .bind(order_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    if held.is_empty() {
        return Err(RedeemError::ReservationNotFound);
    }
    release_ids(&mut tx, &held, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Records `RELEASED` for `ids` (while the rows still name their order), then makes them
/// usable again, inside `tx`.
async fn release_ids(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    events::record(tx, EventType::Released, ids, now).await?;
    for chunk in ids.chunks(500) {
        let mut release = sqlx::QueryBuilder::<sqlx::MySql>::new(RELEASE);
        release.push("id IN ");
        policies::push_id_list(&mut release, chunk);
        release.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Applies a payment result to every coupon held by `order_id`: `paid` confirms them (used),
/// otherwise releases them. Idempotent: a repeated result finds no hold left and changes
/// nothing. Returns how many coupons changed.
///
/// # Errors
/// Any database error.
pub async fn settle_order(
    pool: &MySqlPool,
    order_id: &OrderId,
    paid: bool,
    now: DateTime<Utc>,
) -> Result<u64, RedeemError> {
    let mut tx = pool.begin().await?;
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM coupon_issues WHERE order_id = ? AND status = 'RESERVED' FOR UPDATE",
    )
    .bind(order_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    if !paid {
        release_ids(&mut tx, &held, now).await?;
        tx.commit().await?;
        return Ok(held.len() as u64);
    }
    let mut confirmed = 0;
    for issue_id in held {
        if confirm_in(&mut tx, issue_id, order_id, now)
            .await?
            .is_some()
        {
            confirmed += 1;
        }
    }
    tx.commit().await?;
    Ok(confirmed)
}

/// Releases up to `batch` holds that ended at or before `now`, oldest first, and returns their
/// ids. Rows are locked with `FOR UPDATE SKIP LOCKED` (MySQL 8, MariaDB 10.6+), so several
/// sweepers running at once take disjoint rows and never wait on each other. `now` is a
/// parameter so tests can move the clock.
///
/// # Errors
/// Any database error.
pub async fn release_expired_holds(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    batch: u32,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM coupon_issues WHERE status = 'RESERVED' AND reserved_until <= ? \
         ORDER BY reserved_until LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(crate::store::db::datetime(now))
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    release_ids(&mut tx, &ids, now).await?;
    tx.commit().await?;
    Ok(ids)
}
