//! Redeem by code: a user trades a printed code for the topic's coupon.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use coupon_core::codes::{self, Code, CodeError, CodeRedemption};

use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiPath, Caller, IssueRequestBody};
use crate::issue::breaker::GuardedAdmission;
use std::sync::Arc;

use crate::codes::CodeState;

/// Redeem a code
///
/// Needs a user token (an admin token names the user in `user_id`). Trades a printed code for
/// its topic's coupon, which is issued to the user at once: answers 200 with the issued coupon.
/// Codes are 16 letters and digits, in any case, with or without `-`, `_` or space separators.
/// Refusals: 400 `INVALID_CODE` (not a code's shape); 404 `CODE_NOT_FOUND`; 409
/// `CODE_ALREADY_USED`, `CODE_SUSPENDED`, `ALREADY_ISSUED` (the user holds the coupon already),
/// `ISSUE_IN_PROGRESS` (an issue request of the user is still being answered), `COUPON_SUSPENDED`
/// or `SOLD_OUT`; 429 `RATE_LIMITED` when trying too often. Codes of a
/// limited drop share its stock with the issue endpoint; a 503 means nothing was issued and
/// the code is unused: try again after `Retry-After`.
// A limited policy's unit goes through the issue path's admission script (behind the Redis
// breaker) inside the MySQL transaction; an unlimited one runs on MySQL alone.
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
        (status = 404, description = "CODE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "CODE_ALREADY_USED, CODE_SUSPENDED, ALREADY_ISSUED, ISSUE_IN_PROGRESS, COUPON_SUSPENDED or SOLD_OUT", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = ["user", "admin"]))
)]
pub(super) async fn redeem_code(
    State(state): State<Arc<CodeState>>,
    ApiPath(raw): ApiPath<String>,
    caller: Caller,
) -> Result<Json<CodeRedemption>, ApiError> {
    let code = Code::parse(&raw).map_err(|e| ApiError::InvalidCode(e.0))?;
    let user = caller.user_id;
    // Spawned, as the issue path's admission is: an admission made must end committed or
    // undone even if the client goes away (axum drops a handler's future on disconnect).
    let tasks = state.tasks.clone();
    let redeemed = tasks
        .spawn(async move {
            let admission = GuardedAdmission {
                breaker: &state.breaker,
                admission: &state.admission,
            };
            let redeemed =
                codes::redeem_code(&state.pool, &admission, &code, user, Utc::now()).await;
            if let Err(CodeError::NotPrepared(coupon)) = &redeemed {
                state.rebuilds.start(*coupon);
            }
            redeemed
        })
        .await
        .map_err(|join_err| ApiError::Internal(join_err.into()))?;
    Ok(Json(redeemed?))
}
