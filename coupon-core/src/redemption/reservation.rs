//! Checkout holds: reserve a coupon for an order, then confirm it (the order was paid) or
//! release it (the order failed or the hold expired); the payment results coupon-consumer
//! reads settle holds by order.
//!
//! Every hold is also recorded in `coupon_holds` with how it ended ([`HoldOutcome`]), because
//! a payment result may arrive after its hold was released (a payment slower than the hold, or
//! a `FAILED` followed by a retried `COMPLETED`): [`settle_order`] then confirms the coupon if
//! it is still free, and otherwise reports it ([`Settlement::after_release`]) so the payment is
//! dead-lettered and alerted on, never dropped.

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
    sqlx::query(
        "INSERT INTO coupon_holds (order_id, coupon_issue_id, user_id, order_amount, \
         reserved_at, reserved_until, outcome, ended_at) VALUES (?, ?, ?, ?, ?, ?, 'HELD', NULL) \
         ON DUPLICATE KEY UPDATE user_id = VALUES(user_id), order_amount = VALUES(order_amount), \
         reserved_at = VALUES(reserved_at), reserved_until = VALUES(reserved_until), \
         outcome = 'HELD', ended_at = NULL",
    )
    .bind(order_id.as_str())
    .bind(issue_id)
    .bind(user.get())
    .bind(order_amount)
    .bind(crate::store::db::datetime(now))
    .bind(crate::store::db::datetime(reserved_until))
    .execute(&mut *tx)
    .await?;
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
    end_holds(
        tx,
        &[(issue_id, order_id.as_str().to_owned())],
        HoldOutcome::Confirmed,
        now,
    )
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
    release_ids(
        &mut tx,
        &of_order(&held, order_id),
        HoldOutcome::Released,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How a checkout hold ended (`coupon_holds.outcome`; `HELD` while it lasts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Turned into a use: the order was paid (a confirm or a `COMPLETED` payment result).
    Confirmed,
    /// Given back: the checkout was abandoned or the payment `FAILED`.
    Released,
    /// Given back by the sweeper when the hold's time ran out.
    Expired,
}

impl HoldOutcome {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "CONFIRMED",
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
        }
    }
}

/// `(coupon_issue_id, order)` of each of `ids`, all held by `order_id`.
fn of_order(ids: &[i64], order_id: &OrderId) -> Vec<(i64, String)> {
    ids.iter()
        .map(|id| (*id, order_id.as_str().to_owned()))
        .collect()
}

/// Records in `coupon_holds` that the open holds `(coupon_issue_id, order)` ended with
/// `outcome`, inside `tx`. The rows are found by primary key, so concurrent sweepers lock
/// only their own rows (a secondary-index range would take gap locks and deadlock them).
async fn end_holds(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    holds: &[(i64, String)],
    outcome: HoldOutcome,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for chunk in holds.chunks(500) {
        let mut end = sqlx::QueryBuilder::<sqlx::MySql>::new("UPDATE coupon_holds SET outcome = ");
        end.push_bind(outcome.as_str())
            .push(", ended_at = ")
            .push_bind(crate::store::db::datetime(now))
            .push(" WHERE outcome = 'HELD' AND (order_id, coupon_issue_id) IN ");
        end.push_tuples(chunk, |mut tuple, (id, order)| {
            tuple.push_bind(order.clone()).push_bind(*id);
        });
        end.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records `RELEASED` for the held coupons of `holds` (`(coupon_issue_id, order)`, while the
/// rows still name their order) and how their holds ended, then makes them usable again,
/// inside `tx`.
async fn release_ids(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    holds: &[(i64, String)],
    outcome: HoldOutcome,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = holds.iter().map(|(id, _)| *id).collect();
    events::record(tx, EventType::Released, &ids, now).await?;
    end_holds(tx, holds, outcome, now).await?;
    for chunk in ids.chunks(500) {
        let mut release = sqlx::QueryBuilder::<sqlx::MySql>::new(RELEASE);
        release.push("id IN ");
        policies::push_id_list(&mut release, chunk);
        release.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Why a payment result changed nothing (the `reason` label of
/// `coupon_consumer_payment_results_unchanged_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Unchanged {
    /// The order never held a coupon here (or its hold records were purged).
    NoHold,
    /// Every hold of the order was already settled (a repeated result).
    AlreadySettled,
    /// A `COMPLETED` for holds released before it arrived whose coupons are no longer free
    /// (used for another order, held again, expired): the payment is dead-lettered.
    AfterRelease,
}

impl Unchanged {
    /// Every reason, for registering the metric's series.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What one payment result did ([`settle_order`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Coupons confirmed (`COMPLETED`) or released (`FAILED`) from a live hold (count).
    pub settled: u64,
    /// Coupons whose hold had been released or had expired, confirmed because they were still
    /// free (`COMPLETED` only): `coupon_issues.id`s.
    pub confirmed_after_release: Vec<i64>,
    /// Coupons whose hold had been released and that are no longer free, so a `COMPLETED`
    /// could not confirm them: `coupon_issues.id`s. The payment went through without its
    /// discount; the caller dead-letters the result for an operator.
    pub after_release: Vec<i64>,
    /// Holds the order ever had (count), live or ended.
    pub holds: u64,
}

impl Settlement {
    /// Why this result changed nothing, or `None` when it changed something.
    pub fn unchanged(&self) -> Option<Unchanged> {
        if !self.after_release.is_empty() {
            Some(Unchanged::AfterRelease)
        } else if self.settled > 0 || !self.confirmed_after_release.is_empty() {
            None
        } else if self.holds == 0 {
            Some(Unchanged::NoHold)
        } else {
            Some(Unchanged::AlreadySettled)
        }
    }
}

/// Applies a payment result to `order_id`'s checkout holds in one transaction: `paid`
/// confirms every coupon it holds (used), otherwise releases them. A `paid` result also
/// looks at the order's ended holds (`coupon_holds` `RELEASED` or `EXPIRED`): a coupon
/// still `ISSUED` and within its validity is confirmed for the order on the held amount; one
/// that is not is reported in [`Settlement::after_release`]. Idempotent: a repeated result
/// finds every hold settled and changes nothing (a repeated `COMPLETED` reports the same
/// unfree coupons again, so its dead letter is at least once).
///
/// # Errors
/// Any database error (nothing is changed then).
pub async fn settle_order(
    pool: &MySqlPool,
    order_id: &OrderId,
    paid: bool,
    now: DateTime<Utc>,
) -> Result<Settlement, RedeemError> {
    let mut tx = pool.begin().await?;
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM coupon_issues WHERE order_id = ? AND status = 'RESERVED' FOR UPDATE",
    )
    .bind(order_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    // Every hold the order had, with whether its coupon is now used by this very order.
    let holds: Vec<(i64, i64, String, i64)> = sqlx::query_as(
        "SELECT h.coupon_issue_id, h.order_amount, h.outcome, \
         CAST(COALESCE(i.status = 'USED' AND i.order_id = h.order_id, 0) AS SIGNED) \
         FROM coupon_holds h JOIN coupon_issues i ON i.id = h.coupon_issue_id \
         WHERE h.order_id = ? FOR UPDATE",
    )
    .bind(order_id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let mut settlement = Settlement {
        holds: (holds.len() as u64).max(held.len() as u64),
        ..Settlement::default()
    };
    if !paid {
        release_ids(
            &mut tx,
            &of_order(&held, order_id),
            HoldOutcome::Released,
            now,
        )
        .await?;
        tx.commit().await?;
        settlement.settled = held.len() as u64;
        return Ok(settlement);
    }
    for issue_id in held {
        if confirm_in(&mut tx, issue_id, order_id, now)
            .await?
            .is_some()
        {
            settlement.settled += 1;
        }
    }
    let ended = holds.into_iter().filter(|(_, _, outcome, used_here)| {
        *used_here == 0
            && [HoldOutcome::Released, HoldOutcome::Expired]
                .iter()
                .any(|ended| ended.as_str() == outcome)
    });
    for (issue_id, order_amount, _, _) in ended {
        // Take the coupon back for the order if nobody else has it, then confirm as usual.
        let retaken = sqlx::query(
            "UPDATE coupon_issues SET status = 'RESERVED', order_id = ?, order_amount = ?, \
             reserved_until = NULL WHERE id = ? AND status = 'ISSUED' \
             AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(order_id.as_str())
        .bind(order_amount)
        .bind(issue_id)
        .bind(crate::store::db::datetime(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if retaken == 0 {
            settlement.after_release.push(issue_id);
            continue;
        }
        sqlx::query(
            "UPDATE coupon_holds SET outcome = 'HELD', ended_at = NULL \
             WHERE order_id = ? AND coupon_issue_id = ?",
        )
        .bind(order_id.as_str())
        .bind(issue_id)
        .execute(&mut *tx)
        .await?;
        if confirm_in(&mut tx, issue_id, order_id, now)
            .await?
            .is_some()
        {
            settlement.confirmed_after_release.push(issue_id);
        }
    }
    tx.commit().await?;
    Ok(settlement)
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
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT id, order_id FROM coupon_issues WHERE status = 'RESERVED' AND reserved_until <= ? \
         ORDER BY reserved_until LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(crate::store::db::datetime(now))
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    // `order_id` has a binary collation, read as bytes (see `store::db::binary_text`).
    let holds: Vec<(i64, String)> = rows
        .into_iter()
        .map(|(id, order)| (id, String::from_utf8_lossy(&order).into_owned()))
        .collect();
    release_ids(&mut tx, &holds, HoldOutcome::Expired, now).await?;
    let ids = holds.into_iter().map(|(id, _)| id).collect();
    tx.commit().await?;
    Ok(ids)
}
