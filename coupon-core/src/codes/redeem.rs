//! Redeem by code: one MySQL transaction that locks the code row, checks it, issues the
//! topic's coupon to the user and marks the code redeemed (the guarantees are in
//! [`crate::codes`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::domain::{CouponStatus, UserId};
use crate::events::{self, EventType};
use crate::policies;

use super::*;

/// Why a code could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// No such code (or it was deleted).
    #[error("no such code")]
    NotFound,
    /// Already redeemed.
    #[error("this code has already been used")]
    AlreadyUsed,
    /// Suspended by an operator.
    #[error("this code is suspended")]
    Suspended,
    /// The user already redeemed a code of this topic, or already holds the coupon.
    #[error("this user has already been issued this coupon")]
    AlreadyIssued,
    /// The topic's policy is suspended or deleted.
    #[error("the coupon policy is suspended")]
    PolicySuspended,
    /// The topic's policy has no stock left.
    #[error("the coupon is sold out")]
    SoldOut,
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// A successful redeem by code: `{"code": "…", "topic_id": 3, "coupon_id": 1,
/// "coupon_issue_id": 9, "user_id": 7, "status": "ISSUED", "expires_at": "…"}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CodeRedemption {
    /// The code used.
    pub code: Code,
    /// Its topic.
    pub topic_id: i64,
    /// The policy issued.
    pub coupon_id: i64,
    /// The issued coupon.
    pub coupon_issue_id: i64,
    /// Its owner.
    pub user_id: UserId,
    /// Always `ISSUED`.
    pub status: &'static str,
    /// End of validity, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

pub(super) fn is_deadlock(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001"))
}

/// Redeems `code` for `user`: marks the code used and issues the topic's coupon, in one
/// transaction. A deadlock between concurrent redeems (InnoDB may pick a victim when they
/// touch the same unique-index ranges) is retried a few times.
///
/// # Errors
/// A [`CodeError`] naming the refusal, or a database error.
pub async fn redeem_code(
    pool: &MySqlPool,
    code: &Code,
    user: UserId,
    now: DateTime<Utc>,
) -> Result<CodeRedemption, CodeError> {
    let mut attempts = 0;
    loop {
        match redeem_once(pool, code, user, now).await {
            Err(CodeError::Database(err)) if is_deadlock(&err) && attempts < 5 => attempts += 1,
            other => return other,
        }
    }
}

async fn redeem_once(
    pool: &MySqlPool,
    code: &Code,
    user: UserId,
    now: DateTime<Utc>,
) -> Result<CodeRedemption, CodeError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT cc.id, cc.topic_id, cc.status, cc.redeemed_by, ct.coupon_id \
         FROM coupon_codes cc JOIN coupon_topics ct ON ct.id = cc.topic_id \
         WHERE cc.code = ? FOR UPDATE",
    )
    .bind(code.as_str())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(CodeError::NotFound)?;
    let code_id: i64 = row.try_get("id")?;
    let topic_id: i64 = row.try_get("topic_id")?;
    let coupon_id: i64 = row.try_get("coupon_id")?;
    match row.try_get::<String, _>("status")?.as_str() {
        "DELETED" => return Err(CodeError::NotFound),
        "SUSPENDED" => return Err(CodeError::Suspended),
        _ => {}
    }
    if row.try_get::<Option<i64>, _>("redeemed_by")?.is_some() {
        return Err(CodeError::AlreadyUsed);
    }
    let policy = sqlx::query(&format!(
        "SELECT {} FROM coupons WHERE id = ? AND deleted_at IS NULL FOR UPDATE",
        policies::POLICY_COLUMNS
    ))
    .bind(coupon_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(CodeError::PolicySuspended)?;
    let policy = policies::policy_from_row(&policy)?;
    if policy.status != CouponStatus::Active {
        return Err(CodeError::PolicySuspended);
    }
    if policy
        .total_quantity
        .is_some_and(|total| policy.issued_quantity >= total)
    {
        return Err(CodeError::SoldOut);
    }
    let claim =
        sqlx::query("UPDATE coupon_codes SET redeemed_by = ?, redeemed_at = ? WHERE id = ?")
            .bind(user.get())
            .bind(crate::store::db::datetime(now))
            .bind(code_id)
            .execute(&mut *tx)
            .await;
    if let Err(err) = claim {
        return Err(if is_unique_violation(&err) {
            CodeError::AlreadyIssued
        } else {
            err.into()
        });
    }
    let expires_at = policy.expires_at(now);
    let issued = sqlx::query(
        "INSERT INTO coupon_issues (coupon_id, user_id, issued_at, expires_at, status, request_id) \
         VALUES (?, ?, ?, ?, 'ISSUED', ?)",
    )
    .bind(coupon_id)
    .bind(user.get())
    .bind(crate::store::db::datetime(now))
    .bind(crate::store::db::datetime(expires_at))
    .bind(uuid::Uuid::now_v7().to_string())
    .execute(&mut *tx)
    .await;
    let issue_id = match issued {
        Err(err) if is_unique_violation(&err) => return Err(CodeError::AlreadyIssued),
        other => i64::try_from(other?.last_insert_id()).unwrap_or(i64::MAX),
    };
    sqlx::query("UPDATE coupon_codes SET coupon_issue_id = ? WHERE id = ?")
        .bind(issue_id)
        .bind(code_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE coupons SET issued_quantity = issued_quantity + 1 WHERE id = ?")
        .bind(coupon_id)
        .execute(&mut *tx)
        .await?;
    events::record(&mut tx, EventType::Issued, &[issue_id], now).await?;
    tx.commit().await?;
    Ok(CodeRedemption {
        code: code.clone(),
        topic_id,
        coupon_id,
        coupon_issue_id: issue_id,
        user_id: user,
        status: "ISSUED",
        expires_at,
    })
}
