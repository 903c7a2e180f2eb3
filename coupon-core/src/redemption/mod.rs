//! Using an issued coupon for an order: at once (redeem), or through a checkout hold
//! (reserve, then confirm or release), and giving it back when the order is cancelled.
//!
//! One conditional `UPDATE … WHERE status = 'ISSUED'` decides a redemption: InnoDB takes the
//! row's exclusive lock for the update and re-evaluates the condition on the latest version, so
//! of any number of concurrent redeems of one coupon exactly one changes the row.
//!
//! This module redeems and cancels; [`reservation`] holds, confirms, releases and settles
//! checkout holds.

mod reservation;

pub use reservation::*;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::domain::{CouponId, CouponStatus, UserId, ValidationError};
use crate::events::{self, EventType};
use crate::policies;

/// An order reference from the shop: 1–64 characters of `A-Z a-z 0-9 - _ . :`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderId(String);

impl OrderId {
    /// Accepts a well-formed order reference.
    ///
    /// # Errors
    /// [`ValidationError`] for an empty, longer than 64 or oddly spelled reference.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError(
                "order_id must be 1 to 64 characters of letters, digits, '-', '_', '.', ':'".into(),
            ))
        }
    }

    /// The reference.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A successful redemption: `{"coupon_issue_id": 9, "coupon_id": 1, "user_id": 7,
/// "order_id": "o-1", "order_amount": 30000, "discount_amount": 5000, "final_amount": 25000,
/// "status": "USED", "redeemed_at": "…"}`. Amounts in the smallest currency unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Redemption {
    /// The issued coupon (`coupon_issues.id`).
    pub coupon_issue_id: i64,
    /// Its policy.
    pub coupon_id: CouponId,
    /// Its owner.
    pub user_id: UserId,
    /// The order it was used for.
    pub order_id: OrderId,
    /// Order amount before the discount.
    pub order_amount: i64,
    /// Discount granted.
    pub discount_amount: i64,
    /// `order_amount - discount_amount`.
    pub final_amount: i64,
    /// Always `USED`.
    pub status: &'static str,
    /// When it was used.
    pub redeemed_at: DateTime<Utc>,
}

/// Why a redemption (or its cancellation) was refused.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No such issued coupon for this user (also when it belongs to someone else).
    #[error("this user holds no such coupon")]
    NotFound,
    /// Already used for an order.
    #[error("the coupon has already been used")]
    AlreadyUsed,
    /// Held by a reservation for an order.
    #[error("the coupon is reserved for an order")]
    Reserved,
    /// Past its use validity.
    #[error("the coupon has expired")]
    Expired,
    /// Before its use validity.
    #[error("the coupon cannot be used yet")]
    NotYetValid,
    /// The order is below the policy's `min_order_amount`.
    #[error("the order must be at least {min} to use this coupon")]
    MinOrderNotMet {
        /// The policy's minimum (smallest currency unit).
        min: i64,
    },
    /// The policy is suspended or deleted.
    #[error("the coupon policy is suspended")]
    Suspended,
    /// No redemption of this coupon for this order (cancel).
    #[error("no redemption of this coupon for this order")]
    RedemptionNotFound,
    /// The redemption was already cancelled (cancel).
    #[error("this redemption has already been cancelled")]
    AlreadyCancelled,
    /// The policy does not give coupons back on cancelled orders (cancel).
    #[error("this coupon policy does not restore coupons of cancelled orders")]
    RestoreNotAllowed,
    /// No hold of this coupon for this order (confirm, cancel of a reservation).
    #[error("no reservation of this coupon for this order")]
    ReservationNotFound,
    /// The order id was first used for another user's coupon (redeem, reserve): an order
    /// belongs to one user.
    #[error("this order belongs to another user")]
    OrderOfAnotherUser,
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

struct IssueRow {
    coupon_id: CouponId,
    status: String,
    expires_at: Option<DateTime<Utc>>,
}

async fn issue_of(pool: &MySqlPool, issue_id: i64, user: UserId) -> Result<IssueRow, RedeemError> {
    let row = sqlx::query(
        "SELECT coupon_id, status, expires_at FROM coupon_issues WHERE id = ? AND user_id = ?",
    )
    .bind(issue_id)
    .bind(user.get())
    .fetch_optional(pool)
    .await?
    .ok_or(RedeemError::NotFound)?;
    Ok(IssueRow {
        coupon_id: CouponId::parse(row.try_get("coupon_id")?).map_err(|_| RedeemError::NotFound)?,
        status: row.try_get("status")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// The refusal for an issue that is not in the `ISSUED` state, or `None` when it is usable.
fn state_refusal(issue: &IssueRow, now: DateTime<Utc>) -> Option<RedeemError> {
    match issue.status.as_str() {
        "USED" => Some(RedeemError::AlreadyUsed),
        "RESERVED" => Some(RedeemError::Reserved),
        "EXPIRED" => Some(RedeemError::Expired),
        _ if issue.expires_at.is_some_and(|end| end <= now) => Some(RedeemError::Expired),
        _ => None,
    }
}

/// The issue and its policy when `user` may use coupon `issue_id` on an order of
/// `order_amount` now: policy active, coupon `ISSUED` and inside its use validity, order at
/// least `min_order_amount`.
async fn usable(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_amount: i64,
    now: DateTime<Utc>,
) -> Result<(IssueRow, crate::domain::CouponPolicy), RedeemError> {
    let issue = issue_of(pool, issue_id, user).await?;
    let policy = policies::find_policy(pool, issue.coupon_id)
        .await?
        .ok_or(RedeemError::Suspended)?;
    if policy.status != CouponStatus::Active {
        return Err(RedeemError::Suspended);
    }
    if let Some(refusal) = state_refusal(&issue, now) {
        return Err(refusal);
    }
    if policy.valid_from.is_some_and(|from| now < from) {
        return Err(RedeemError::NotYetValid);
    }
    if order_amount < policy.min_order_amount {
        return Err(RedeemError::MinOrderNotMet {
            min: policy.min_order_amount,
        });
    }
    Ok((issue, policy))
}

/// Uses `user`'s issued coupon `issue_id` for an order of `order_amount` at instant `now`.
///
/// Checks, in order: ownership, policy active, state (used, reserved, expired), use validity,
/// minimum order; then, in one transaction, the order is tied to `user` ([`bind_order`]), one
/// conditional `UPDATE` to `USED` decides among concurrent requests, and a
/// `coupon_redemptions` row records the amounts.
///
/// Repeatable per order: a redeem of a coupon already used for this same `order_id` (a retry
/// whose first answer was lost, or two copies racing) returns that redemption as stored,
/// whatever `order_amount` the repeat names; another order gets [`RedeemError::AlreadyUsed`].
///
/// # Errors
/// A [`RedeemError`] naming the rule the request broke, or [`RedeemError::Database`].
pub async fn redeem(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_id: &OrderId,
    order_amount: i64,
    now: DateTime<Utc>,
) -> Result<Redemption, RedeemError> {
    // Stored with microseconds (DATETIME(6)): the first answer and a repeat's must agree.
    let now = now.trunc_subsecs(6);
    match redeem_once(pool, issue_id, user, order_id, order_amount, now).await {
        Err(refusal @ (RedeemError::AlreadyUsed | RedeemError::Suspended)) => {
            match redemption_for(pool, issue_id, user, order_id).await? {
                Some(redemption) => Ok(redemption),
                None => Err(refusal),
            }
        }
        outcome => outcome,
    }
}

/// The live redemption of `user`'s coupon `issue_id` for `order_id`, if the coupon is used for
/// that order.
async fn redemption_for(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_id: &OrderId,
) -> Result<Option<Redemption>, RedeemError> {
    let Some(row) = sqlx::query(
        "SELECT r.coupon_id, r.order_amount, r.discount_amount, r.final_amount, r.redeemed_at \
         FROM coupon_redemptions r JOIN coupon_issues i ON i.id = r.coupon_issue_id \
         WHERE r.coupon_issue_id = ? AND r.order_id = ? AND r.user_id = ? AND r.status = 'USED' \
         AND i.status = 'USED' AND i.order_id = r.order_id",
    )
    .bind(issue_id)
    .bind(order_id.as_str())
    .bind(user.get())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Redemption {
        coupon_issue_id: issue_id,
        coupon_id: CouponId::parse(row.try_get("coupon_id")?).map_err(|_| RedeemError::NotFound)?,
        user_id: user,
        order_id: order_id.clone(),
        order_amount: row.try_get("order_amount")?,
        discount_amount: row.try_get("discount_amount")?,
        final_amount: row.try_get("final_amount")?,
        status: "USED",
        redeemed_at: row.try_get("redeemed_at")?,
    }))
}

async fn redeem_once(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_id: &OrderId,
    order_amount: i64,
    now: DateTime<Utc>,
) -> Result<Redemption, RedeemError> {
    let (issue, policy) = usable(pool, issue_id, user, order_amount, now).await?;
    let discount = policy.discount_for(order_amount);

    let mut tx = pool.begin().await?;
    bind_order(&mut tx, order_id, user, now).await?;
    let claimed = sqlx::query(
        "UPDATE coupon_issues SET status = 'USED', used_at = ?, order_id = ? \
         WHERE id = ? AND user_id = ? AND status = 'ISSUED' AND (expires_at IS NULL OR expires_at > ?)",
    )
    .bind(crate::store::db::datetime(now))
    .bind(order_id.as_str())
    .bind(issue_id)
    .bind(user.get())
    .bind(crate::store::db::datetime(now))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        // Someone else changed the row between the read and the update: say what it became.
        let now_state = issue_of(pool, issue_id, user).await?;
        return Err(state_refusal(&now_state, now).unwrap_or(RedeemError::AlreadyUsed));
    }
    let redemption = Redemption {
        coupon_issue_id: issue_id,
        coupon_id: issue.coupon_id,
        user_id: user,
        order_id: order_id.clone(),
        order_amount,
        discount_amount: discount,
        final_amount: order_amount - discount,
        status: "USED",
        redeemed_at: now,
    };
    record(&mut tx, &redemption).await?;
    events::record(&mut tx, EventType::Used, &[issue_id], now).await?;
    tx.commit().await?;
    Ok(redemption)
}

/// Ties `order_id` to `user` inside `tx` (the first redeem or reserve naming the order writes
/// the `coupon_orders` row; later ones lock and read it), so one order can never apply or
/// settle coupons of two users.
///
/// # Errors
/// [`RedeemError::OrderOfAnotherUser`] when the order is another user's, or a database error.
pub(crate) async fn bind_order(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    order_id: &OrderId,
    user: UserId,
    now: DateTime<Utc>,
) -> Result<(), RedeemError> {
    sqlx::query(
        "INSERT INTO coupon_orders (order_id, user_id, created_at) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE order_id = order_id",
    )
    .bind(order_id.as_str())
    .bind(user.get())
    .bind(crate::store::db::datetime(now))
    .execute(&mut **tx)
    .await?;
    let owner: i64 = sqlx::query_scalar("SELECT user_id FROM coupon_orders WHERE order_id = ?")
        .bind(order_id.as_str())
        .fetch_one(&mut **tx)
        .await?;
    if owner == user.get() {
        Ok(())
    } else {
        Err(RedeemError::OrderOfAnotherUser)
    }
}

/// Writes (or, for an order redeemed before and cancelled, rewrites) the redemption row.
async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    r: &Redemption,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO coupon_redemptions (coupon_issue_id, coupon_id, user_id, order_id, \
         order_amount, discount_amount, final_amount, status, redeemed_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, 'USED', ?) \
         ON DUPLICATE KEY UPDATE order_amount = VALUES(order_amount), \
         discount_amount = VALUES(discount_amount), final_amount = VALUES(final_amount), \
         status = 'USED', redeemed_at = VALUES(redeemed_at), cancelled_at = NULL",
    )
    .bind(r.coupon_issue_id)
    .bind(r.coupon_id.get())
    .bind(r.user_id.get())
    .bind(r.order_id.as_str())
    .bind(r.order_amount)
    .bind(r.discount_amount)
    .bind(r.final_amount)
    .bind(crate::store::db::datetime(r.redeemed_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Cancels the redemption of `issue_id` for `order_id` (the order was cancelled) and gives the
/// coupon back to its user when the policy's `restore_on_cancel` allows it. Only the first
/// cancellation acts; a repeat is [`RedeemError::AlreadyCancelled`].
///
/// # Errors
/// [`RedeemError::NotFound`], [`RedeemError::RedemptionNotFound`],
/// [`RedeemError::AlreadyCancelled`], [`RedeemError::RestoreNotAllowed`], or a database error.
pub async fn cancel_redemption(
    pool: &MySqlPool,
    issue_id: i64,
    user: UserId,
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<(), RedeemError> {
    let issue = issue_of(pool, issue_id, user).await?;
    let mut tx = pool.begin().await?;
    let redemption = sqlx::query(
        "SELECT id, status FROM coupon_redemptions WHERE coupon_issue_id = ? AND order_id = ? FOR UPDATE",
    )
    .bind(issue_id)
    .bind(order_id.as_str())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(RedeemError::RedemptionNotFound)?;
    let redemption_id: i64 = redemption.try_get("id")?;
    if redemption.try_get::<String, _>("status")? == "CANCELLED" {
        return Err(RedeemError::AlreadyCancelled);
    }
    let restore: bool = sqlx::query_scalar("SELECT restore_on_cancel FROM coupons WHERE id = ?")
        .bind(issue.coupon_id.get())
        .fetch_one(&mut *tx)
        .await?;
    if !restore {
        return Err(RedeemError::RestoreNotAllowed);
    }
    sqlx::query(
        "UPDATE coupon_redemptions SET status = 'CANCELLED', cancelled_at = ? WHERE id = ?",
    )
    .bind(crate::store::db::datetime(now))
    .bind(redemption_id)
    .execute(&mut *tx)
    .await?;
    events::record(&mut tx, EventType::Released, &[issue_id], now).await?;
    sqlx::query(
        "UPDATE coupon_issues SET status = 'ISSUED', used_at = NULL, order_id = NULL \
         WHERE id = ? AND status = 'USED' AND order_id = ?",
    )
    .bind(issue_id)
    .bind(order_id.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
