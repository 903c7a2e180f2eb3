//! Coupon policies: `POST /api/v1/coupons` and `GET /api/v1/coupons/{coupon_id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use coupon_core::domain::{CouponPolicy, NewCouponPolicy};
use coupon_core::repository;
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, CouponPath};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/coupons", post(create_policy))
        .route("/api/v1/coupons/{coupon_id}", get(get_policy))
}

/// Creates a policy and prepares its Redis state (stock bound and policy copy) before the
/// MySQL transaction commits, so no committed policy lacks its stock bound.
///
/// 201 with the stored policy; 422 `VALIDATION_FAILED` for a policy that breaks a rule;
/// 503 `UNAVAILABLE` when MySQL or Redis cannot take it (nothing is stored then).
#[tracing::instrument(name = "create_policy", skip_all)]
async fn create_policy(
    State(state): State<AppState>,
    ApiJson(new): ApiJson<NewCouponPolicy>,
) -> Result<(StatusCode, Json<CouponPolicy>), ApiError> {
    new.validate()?;
    let mut tx = state.pool.begin().await?;
    let policy = repository::insert_policy(&mut tx, &new).await?;
    state
        .admission
        .prepare(&policy)
        .await
        .map_err(ApiError::unavailable)?;
    tx.commit().await?;
    tracing::info!(coupon_id = %policy.id, total = ?policy.total_quantity, "coupon policy created");
    Ok((StatusCode::CREATED, Json(policy)))
}

/// A policy with its live counts.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    /// The stored policy (fields as in `coupons`).
    #[serde(flatten)]
    pub policy: CouponPolicy,
    /// Rows persisted in MySQL (count).
    pub issued: i64,
    /// Admitted in Redis but not yet persisted (count).
    pub pending: i64,
    /// Stock not yet admitted (count); `null` for unlimited coupons.
    pub remaining: Option<i64>,
}

/// The policy, read fresh from MySQL, with counts from MySQL (`issued`) and the Redis admission
/// set (`pending`, `remaining`). 404 `COUPON_NOT_FOUND`; 503 when a store cannot answer.
#[tracing::instrument(name = "get_policy", skip_all, fields(coupon_id = %coupon))]
async fn get_policy(
    State(state): State<AppState>,
    CouponPath(coupon): CouponPath,
) -> Result<Json<PolicyView>, ApiError> {
    let policy = repository::find_policy(&state.pool, coupon)
        .await?
        .ok_or(ApiError::CouponNotFound)?;
    let admitted = state
        .admission
        .admitted_count(coupon)
        .await
        .map_err(ApiError::unavailable)?;
    let issued = policy.issued_quantity;
    Ok(Json(PolicyView {
        issued,
        pending: (admitted - issued).max(0),
        remaining: policy.total_quantity.map(|total| (total - admitted).max(0)),
        policy,
    }))
}
