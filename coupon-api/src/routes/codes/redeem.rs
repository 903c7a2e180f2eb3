//! Redeem by code: a user trades a printed code for the topic's coupon.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use coupon_core::codes::{self, Code, CodeRedemption};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, Caller, IssueRequestBody};
use crate::state::AppState;

/// `POST /api/v1/codes/{code}/redeem`: issues the topic's coupon to the user; 200 with the
/// issued coupon; acts for the token's user ([`Caller`]: 401, 403). 400 `INVALID_CODE`; 404 `CODE_NOT_FOUND`; 409 `CODE_ALREADY_USED`,
/// `CODE_SUSPENDED`, `ALREADY_ISSUED`, `COUPON_SUSPENDED`, `SOLD_OUT`. Runs on MySQL alone.
#[tracing::instrument(name = "redeem_code", skip_all)]
#[utoipa::path(
    post,
    path = "/api/v1/codes/{code}/redeem",
    tag = "codes",
    params(("code" = String, Path, description = "16 letters and digits; any case, with - _ or space separators")),
    request_body(content = Option<IssueRequestBody>, description = "none, {}, or {\"user_id\": n}"),
    responses(
        (status = 200, body = CodeRedemption),
        (status = 400, description = "INVALID_CODE or VALIDATION_FAILED", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token may not act for this user", body = ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "CODE_ALREADY_USED, CODE_SUSPENDED, ALREADY_ISSUED, COUPON_SUSPENDED or SOLD_OUT", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn redeem_code(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    caller: Caller,
) -> Result<Json<CodeRedemption>, ApiError> {
    let code = Code::parse(&raw).map_err(|e| ApiError::InvalidCode(e.0))?;
    Ok(Json(
        codes::redeem_code(&state.pool, &code, caller.user_id, Utc::now()).await?,
    ))
}
