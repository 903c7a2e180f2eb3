//! Using an issued coupon: `POST /api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem` and
//! its cancellation `…/redeem/cancel`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use coupon_core::redemption::{self, OrderId, Redemption};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{ApiJson, UserIssuePath};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem",
            post(redeem),
        )
        .route(
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem/cancel",
            post(cancel),
        )
}

/// Body of a redeem: `{"order_id": "order-1", "order_amount": 30000}` (smallest currency unit).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    order_id: String,
    order_amount: i64,
}

/// Uses the coupon for an order: 200 with the discount and the final amount. Refusals:
/// 404 `COUPON_NOT_FOUND`, 409 `ALREADY_USED` / `COUPON_RESERVED` / `COUPON_EXPIRED` /
/// `COUPON_NOT_YET_VALID` / `COUPON_SUSPENDED`, 422 `MIN_ORDER_AMOUNT_NOT_MET`.
#[tracing::instrument(name = "redeem", skip_all, fields(user_id = %user, coupon_issue_id = issue))]
async fn redeem(
    State(state): State<AppState>,
    UserIssuePath(user, issue): UserIssuePath,
    ApiJson(body): ApiJson<RedeemBody>,
) -> Result<Json<Redemption>, ApiError> {
    let order_id = OrderId::parse(&body.order_id)?;
    if body.order_amount <= 0 {
        return Err(ApiError::Validation(
            "order_amount must be a positive amount".into(),
        ));
    }
    let redemption = redemption::redeem(
        &state.pool,
        issue,
        user,
        &order_id,
        body.order_amount,
        Utc::now(),
    )
    .await?;
    Ok(Json(redemption))
}

/// Body of a cancellation: `{"order_id": "order-1"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    order_id: String,
}

/// Answer of a cancellation: `{"coupon_issue_id": 9, "status": "ISSUED"}`.
#[derive(Debug, Serialize)]
struct Restored {
    coupon_issue_id: i64,
    status: &'static str,
}

/// The order was cancelled: gives the coupon back (when the policy allows), once. Refusals:
/// 404 `COUPON_NOT_FOUND` / `REDEMPTION_NOT_FOUND`, 409 `ALREADY_CANCELLED` /
/// `RESTORE_NOT_ALLOWED`.
#[tracing::instrument(name = "cancel_redemption", skip_all, fields(user_id = %user, coupon_issue_id = issue))]
async fn cancel(
    State(state): State<AppState>,
    UserIssuePath(user, issue): UserIssuePath,
    ApiJson(body): ApiJson<CancelBody>,
) -> Result<Json<Restored>, ApiError> {
    let order_id = OrderId::parse(&body.order_id)?;
    redemption::cancel_redemption(&state.pool, issue, user, &order_id, Utc::now()).await?;
    Ok(Json(Restored {
        coupon_issue_id: issue,
        status: "ISSUED",
    }))
}
