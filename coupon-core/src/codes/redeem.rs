//! Redeem by code: one MySQL transaction that locks the code row, checks it, issues the
//! topic's coupon to the user and marks the code redeemed; a limited policy's unit is taken
//! through the issue path's atomic admission inside that transaction (the guarantees are in
//! [`crate::codes`]).

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::domain::{CouponId, CouponStatus, UserId};
use crate::events::{self, EventType};
use crate::issue::admission::{AdmissionStore, AdmitOutcome, StockShards};
use crate::policies;
use uuid::Uuid;

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
    /// Another request of the user for this coupon was admitted and is not yet settled
    /// ([`AdmitOutcome::InProgress`]); nothing was issued, the code is unused.
    #[error("another request of this user for this coupon is still being processed")]
    InProgress,
    /// The topic's policy is suspended or deleted.
    #[error("the coupon policy is suspended")]
    PolicySuspended,
    /// The topic's policy has no stock left.
    #[error("the coupon is sold out")]
    SoldOut,
    /// The admission state (Redis) could not be reached: nothing was issued, the code is
    /// unused.
    #[error("the admission state cannot be reached")]
    AdmissionUnavailable(#[source] anyhow::Error),
    /// The policy's admission state is missing from Redis (never prepared, or lost): nothing
    /// was issued; the state must be rebuilt ([`crate::issue::recovery`]) first.
    #[error("the coupon's admission state is missing")]
    NotPrepared(CouponId),
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

/// The atomic admission a redeem by code takes a limited policy's unit through: the issue
/// endpoint's own script ([`AdmissionStore::admit`]), so code redeems and issue requests draw
/// on one unit pool and one admission set. Implemented by [`AdmissionStore`]; coupon-api puts
/// its circuit breaker in front.
pub trait CodeAdmission: Sync {
    /// Admits `user` to `coupon` under `request` (see [`AdmissionStore::admit`]).
    fn admit(
        &self,
        coupon: StockShards,
        user: UserId,
        request: Uuid,
    ) -> impl Future<Output = anyhow::Result<AdmitOutcome>> + Send;

    /// Undoes the admission `request` made, when its transaction rolled back (see
    /// [`AdmissionStore::undo`]).
    fn undo(
        &self,
        coupon: StockShards,
        user: UserId,
        request: Uuid,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;

    /// Marks the admission durable after the commit (see [`AdmissionStore::settle`]). Best
    /// effort: a mark left behind is cleared by reconciliation.
    fn settle(
        &self,
        coupon: StockShards,
        user: UserId,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Adds the holder of an unlimited policy's coupon to its admission set after the commit,
    /// so the issue endpoint answers `ALREADY_ISSUED` to them (docs/invariants.md 4). Best effort: a
    /// failure is left to reconciliation, which adds a row's missing user back.
    fn note_holder(
        &self,
        coupon: StockShards,
        user: UserId,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl CodeAdmission for AdmissionStore {
    async fn admit(
        &self,
        coupon: StockShards,
        user: UserId,
        request: Uuid,
    ) -> anyhow::Result<AdmitOutcome> {
        Ok(AdmissionStore::admit(self, coupon, user, request).await?)
    }

    async fn undo(&self, coupon: StockShards, user: UserId, request: Uuid) -> anyhow::Result<bool> {
        Ok(AdmissionStore::undo(self, coupon, user, request).await?)
    }

    async fn settle(&self, coupon: StockShards, user: UserId) -> anyhow::Result<()> {
        AdmissionStore::settle(self, coupon, &[user]).await?;
        Ok(())
    }

    async fn note_holder(&self, coupon: StockShards, user: UserId) -> anyhow::Result<()> {
        Ok(self.add_members(coupon, &[user]).await?)
    }
}

pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

pub(super) fn is_deadlock(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001"))
}

/// Redeems `code` for `user`: marks the code used and issues the topic's coupon, in one
/// transaction. For a policy with a stock (`total_quantity`), the unit is taken through
/// `admission` (the issue endpoint's script) after the MySQL checks and before the writes, so
/// code redeems and issue requests share one pool: rows = `SCARD` <= stock (docs/invariants.md 1). A
/// transaction that then rolls back undoes that admission; a commit whose outcome is unknown
/// keeps it, since the row may exist (reconciliation re-publishes an admission that has no
/// row, so its unit is never handed out twice). A deadlock between concurrent redeems (InnoDB
/// may pick a victim when they touch the same unique-index ranges) is retried a few times.
///
/// # Errors
/// A [`CodeError`] naming the refusal, the admission state being unreachable or missing, or a
/// database error.
pub async fn redeem_code(
    pool: &MySqlPool,
    admission: &impl CodeAdmission,
    code: &Code,
    user: UserId,
    now: DateTime<Utc>,
) -> Result<CodeRedemption, CodeError> {
    let mut attempts = 0;
    loop {
        match redeem_once(pool, admission, code, user, now).await {
            Err(CodeError::Database(err)) if is_deadlock(&err) && attempts < 5 => attempts += 1,
            other => return other,
        }
    }
}

async fn redeem_once(
    pool: &MySqlPool,
    admission: &impl CodeAdmission,
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
        .total_quantity()
        .is_some_and(|total| policy.issued_quantity >= total)
    {
        return Err(CodeError::SoldOut);
    }
    let limited = policy.total_quantity().is_some();
    let request = Uuid::now_v7();
    if limited {
        match admission
            .admit(policy.stock_shards(), user, request)
            .await
            .map_err(CodeError::AdmissionUnavailable)?
        {
            AdmitOutcome::Admitted => {}
            AdmitOutcome::AlreadyIssued => return Err(CodeError::AlreadyIssued),
            AdmitOutcome::InProgress => return Err(CodeError::InProgress),
            AdmitOutcome::SoldOut => return Err(CodeError::SoldOut),
            AdmitOutcome::NotPrepared => return Err(CodeError::NotPrepared(policy.id)),
        }
    }
    let expires_at = Some(policy.expires_at(now));
    let issue_id = match write(&mut tx, code_id, coupon_id, user, request, now, expires_at).await {
        Ok(issue_id) => issue_id,
        Err(err) => {
            // Rolled back (the transaction is dropped): nothing of this redeem is stored, so
            // its admission must not hold a unit.
            drop(tx);
            if limited {
                if let Err(undo_err) = admission.undo(policy.stock_shards(), user, request).await {
                    tracing::error!(
                        %undo_err, coupon_id, user_id = %user,
                        "a redeem by code rolled back AND its admission could not be undone: \
                         the unit is held until reconciliation re-publishes it"
                    );
                }
            }
            return Err(err);
        }
    };
    tx.commit().await?;
    let after_commit = if limited {
        admission.settle(policy.stock_shards(), user).await
    } else {
        admission.note_holder(policy.stock_shards(), user).await
    };
    if let Err(err) = after_commit {
        tracing::warn!(%err, coupon_id, user_id = %user, limited,
            "the admission set was not told of the commit; reconciliation repairs it");
    }
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

/// The writes of one redeem, inside its transaction: the code claimed, the issue row, the
/// code's link to it, `issued_quantity` and the issued event. Returns the issue row's id.
async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    code_id: i64,
    coupon_id: i64,
    user: UserId,
    request: Uuid,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<i64, CodeError> {
    let claim =
        sqlx::query("UPDATE coupon_codes SET redeemed_by = ?, redeemed_at = ? WHERE id = ?")
            .bind(user.get())
            .bind(crate::store::db::datetime(now))
            .bind(code_id)
            .execute(&mut **tx)
            .await;
    if let Err(err) = claim {
        return Err(if is_unique_violation(&err) {
            CodeError::AlreadyIssued
        } else {
            err.into()
        });
    }
    let issued = sqlx::query(
        "INSERT INTO coupon_issues (coupon_id, user_id, issued_at, expires_at, status, request_id) \
         VALUES (?, ?, ?, ?, 'ISSUED', ?)",
    )
    .bind(coupon_id)
    .bind(user.get())
    .bind(crate::store::db::datetime(now))
    .bind(crate::store::db::datetime(expires_at))
    .bind(request.to_string())
    .execute(&mut **tx)
    .await;
    let issue_id = match issued {
        Err(err) if is_unique_violation(&err) => return Err(CodeError::AlreadyIssued),
        other => i64::try_from(other?.last_insert_id()).unwrap_or(i64::MAX),
    };
    sqlx::query("UPDATE coupon_codes SET coupon_issue_id = ? WHERE id = ?")
        .bind(issue_id)
        .bind(code_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE coupons SET issued_quantity = issued_quantity + 1 WHERE id = ?")
        .bind(coupon_id)
        .execute(&mut **tx)
        .await?;
    events::record(tx, EventType::Issued, &[issue_id], now).await?;
    Ok(issue_id)
}
