//! Using an issued coupon: `POST /api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem` and
//! its cancellation `…/redeem/cancel`; checkout holds `…/reserve`, `…/reserve/confirm`,
//! `…/reserve/cancel`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use coupon_core::redemption::{self, OrderId, Redemption, Reservation};
use serde::{Deserialize, Serialize};

use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, OrderIssuePath};
use std::sync::Arc;

use axum::extract::FromRef;

/// What the order routes use (`State<Arc<OrderState>>`).
pub struct OrderState {
    /// MySQL pool of the order routes alone (`DATABASE_ORDER_MAX_CONNECTIONS` connections):
    /// the shop's checkout never waits behind the public and user reads.
    pub order_pool: sqlx::MySqlPool,
    /// Default length of a checkout hold (`RESERVATION_HOLD_SECS`).
    pub reservation_hold: chrono::Duration,
}

/// Routes of this module.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<OrderState>: FromRef<S>,
{
    Router::new()
        .route(
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem",
            post(redeem),
        )
        .route(
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem/cancel",
            post(cancel),
        )
        .route(
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve",
            post(reserve),
        )
        .route(
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/confirm",
            post(confirm_reservation),
        )
        .route(
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/cancel",
            post(release_reservation),
        )
}

/// Body of a redeem: `{"order_id": "order-1", "order_amount": 30000}` (smallest currency unit).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    order_id: String,
    order_amount: i64,
}

/// Use a coupon for an order
///
/// Called by the shop's order service (a `service` token, or an admin token). Give the order's id
/// and amount (KRW); answers 200 with the discount and the amount to pay. Refusals: 404
/// `COUPON_NOT_FOUND`; 409 `ALREADY_USED`, `COUPON_RESERVED` (held for a checkout),
/// `COUPON_EXPIRED`, `COUPON_NOT_YET_VALID`, `COUPON_SUSPENDED` or `ORDER_OF_ANOTHER_USER` (an
/// order belongs to the user it was first used for); 422 `MIN_ORDER_AMOUNT_NOT_MET`.
/// Send an `Idempotency-Key` header to make a retry safe.
#[tracing::instrument(name = "redeem", skip_all, fields(user_id = %user, coupon_issue_id = issue))]
#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem",
    tag = "redemptions",
    params(("user_id" = i64, Path, description = "the coupon's owner"), ("coupon_issue_id" = i64, Path, description = "coupon_issues.id")),
    request_body = RedeemBody,
    responses(
        (status = 200, body = Redemption),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "ALREADY_USED, COUPON_RESERVED, COUPON_EXPIRED, COUPON_NOT_YET_VALID, COUPON_SUSPENDED, or ORDER_OF_ANOTHER_USER (the order id was first used for another user)", body = ErrorBody),
        (status = 422, description = "MIN_ORDER_AMOUNT_NOT_MET or VALIDATION_FAILED", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = ["service", "admin"]))
)]
async fn redeem(
    State(state): State<Arc<OrderState>>,
    OrderIssuePath(user, issue): OrderIssuePath,
    ApiJson(body): ApiJson<RedeemBody>,
) -> Result<Json<Redemption>, ApiError> {
    let order_id = OrderId::parse(&body.order_id)?;
    if body.order_amount <= 0 {
        return Err(ApiError::Validation(
            "order_amount must be a positive amount".into(),
        ));
    }
    let redemption = redemption::redeem(
        &state.order_pool,
        issue,
        user,
        &order_id,
        body.order_amount,
        Utc::now(),
    )
    .await?;
    Ok(Json(redemption))
}

/// Body naming an order: `{"order_id": "order-1"}` (cancel, confirm, release).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    order_id: String,
}

/// Answer of a cancellation: `{"coupon_issue_id": 9, "status": "ISSUED"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Restored {
    coupon_issue_id: i64,
    status: &'static str,
}

/// Cancel a redemption
///
/// Called by the shop's order service (a `service` token, or an admin token). For a cancelled
/// order: the coupon becomes usable again when its policy allows it (`restore_on_cancel`), once.
/// Answers 200 with the coupon's new status. Refusals: 404 `COUPON_NOT_FOUND` or
/// `REDEMPTION_NOT_FOUND` (no redemption for this order); 409 `ALREADY_CANCELLED` or
/// `RESTORE_NOT_ALLOWED`.
#[tracing::instrument(name = "cancel_redemption", skip_all, fields(user_id = %user, coupon_issue_id = issue))]
#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem/cancel",
    tag = "redemptions",
    params(("user_id" = i64, Path, description = "the coupon's owner"), ("coupon_issue_id" = i64, Path, description = "coupon_issues.id")),
    request_body = OrderBody,
    responses(
        (status = 200, body = Restored),
        (status = 404, description = "COUPON_NOT_FOUND or REDEMPTION_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "ALREADY_CANCELLED or RESTORE_NOT_ALLOWED", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = ["service", "admin"]))
)]
async fn cancel(
    State(state): State<Arc<OrderState>>,
    OrderIssuePath(user, issue): OrderIssuePath,
    ApiJson(body): ApiJson<OrderBody>,
) -> Result<Json<Restored>, ApiError> {
    let order_id = OrderId::parse(&body.order_id)?;
    redemption::cancel_redemption(&state.order_pool, issue, user, &order_id, Utc::now()).await?;
    Ok(Json(Restored {
        coupon_issue_id: issue,
        status: "ISSUED",
    }))
}

/// Longest hold a reserve request may ask for (seconds).
const MAX_HOLD_SECS: i64 = 86_400;

/// Body of a reserve: `{"order_id": "o-1", "order_amount": 30000, "hold_seconds": 600}`
/// (`hold_seconds` optional, 1–86400; default `RESERVATION_HOLD_SECS`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    order_id: String,
    order_amount: i64,
    hold_seconds: Option<i64>,
}

/// Reserve a coupon during checkout
///
/// Called by the shop's order service (a `service` token, or an admin token). Holds the coupon for
/// one order for `hold_seconds` (1 to 86,400; default set by the operator); answers 200 with the
/// discount it will give and `reserved_until`. Confirm the reservation when payment succeeds,
/// release it when checkout is abandoned; an unconfirmed hold is released by itself when it runs
/// out. Refusals as for a redemption; a coupon held already is 409 `COUPON_RESERVED`.
#[tracing::instrument(name = "reserve", skip_all, fields(user_id = %user, coupon_issue_id = issue))]
#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve",
    tag = "redemptions",
    params(("user_id" = i64, Path, description = "the coupon's owner"), ("coupon_issue_id" = i64, Path, description = "coupon_issues.id")),
    request_body = ReserveBody,
    responses(
        (status = 200, body = Reservation),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "the coupon cannot be held now, or ORDER_OF_ANOTHER_USER", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = ["service", "admin"]))
)]
async fn reserve(
    State(state): State<Arc<OrderState>>,
    OrderIssuePath(user, issue): OrderIssuePath,
    ApiJson(body): ApiJson<ReserveBody>,
) -> Result<Json<Reservation>, ApiError> {
    let order_id = OrderId::parse(&body.order_id)?;
    if body.order_amount <= 0 {
        return Err(ApiError::Validation(
            "order_amount must be a positive amount".into(),
        ));
    }
    let hold = match body.hold_seconds {
        None => state.reservation_hold,
        Some(secs) if (1..=MAX_HOLD_SECS).contains(&secs) => chrono::Duration::seconds(secs),
        Some(_) => {
            return Err(ApiError::Validation(format!(
                "hold_seconds must be from 1 to {MAX_HOLD_SECS}"
            )))
        }
    };
    let reservation = redemption::reserve(
        &state.order_pool,
        issue,
        user,
        &order_id,
        body.order_amount,
        hold,
        Utc::now(),
    )
    .await?;
    Ok(Json(reservation))
}

/// Confirm a reservation
///
/// Called by the shop's order service (a `service` token, or an admin token). Payment succeeded:
/// the held coupon becomes used for the order it was held for. Answers 200 with the redemption. 404
/// `RESERVATION_NOT_FOUND` when the coupon is not held for this order (released, ran out, or
/// confirmed already).
#[tracing::instrument(name = "confirm_reservation", skip_all, fields(user_id = %user, coupon_issue_id = issue))]
#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/confirm",
    tag = "redemptions",
    params(("user_id" = i64, Path, description = "the coupon's owner"), ("coupon_issue_id" = i64, Path, description = "coupon_issues.id")),
    request_body = OrderBody,
    responses(
        (status = 200, body = Redemption),
        (status = 404, description = "COUPON_NOT_FOUND or RESERVATION_NOT_FOUND", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = ["service", "admin"]))
)]
async fn confirm_reservation(
    State(state): State<Arc<OrderState>>,
    OrderIssuePath(user, issue): OrderIssuePath,
    ApiJson(body): ApiJson<OrderBody>,
) -> Result<Json<Redemption>, ApiError> {
    let order_id = OrderId::parse(&body.order_id)?;
    let redemption =
        redemption::confirm_reservation(&state.order_pool, issue, user, &order_id, Utc::now())
            .await?;
    Ok(Json(redemption))
}

/// Release a reservation
///
/// Called by the shop's order service (a `service` token, or an admin token). Checkout abandoned:
/// the hold ends and the coupon is usable again. Answers 200 with the coupon's status (`ISSUED`).
/// 404 `RESERVATION_NOT_FOUND` when the coupon is not held for this order.
#[tracing::instrument(name = "release_reservation", skip_all, fields(user_id = %user, coupon_issue_id = issue))]
#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/cancel",
    tag = "redemptions",
    params(("user_id" = i64, Path, description = "the coupon's owner"), ("coupon_issue_id" = i64, Path, description = "coupon_issues.id")),
    request_body = OrderBody,
    responses(
        (status = 200, body = Restored),
        (status = 404, description = "COUPON_NOT_FOUND or RESERVATION_NOT_FOUND", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = ["service", "admin"]))
)]
async fn release_reservation(
    State(state): State<Arc<OrderState>>,
    OrderIssuePath(user, issue): OrderIssuePath,
    ApiJson(body): ApiJson<OrderBody>,
) -> Result<Json<Restored>, ApiError> {
    let order_id = OrderId::parse(&body.order_id)?;
    redemption::release_reservation(&state.order_pool, issue, user, &order_id, Utc::now()).await?;
    Ok(Json(Restored {
        coupon_issue_id: issue,
        status: "ISSUED",
    }))
}

/// The OpenAPI description of this module's routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(redeem, cancel, reserve, confirm_reservation, release_reservation))]
pub(crate) struct Doc;
