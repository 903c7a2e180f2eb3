//! A user's coupons: `GET /api/v1/users/{user_id}/coupons?status=&cursor=&limit=`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use coupon_core::queries::{self, Page, PageOf, UserCoupon, ISSUE_STATES};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiQuery, UserPath};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/users/{user_id}/coupons", get(list_user_coupons))
}

/// Query parameters of the list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The user's coupons, newest first, with the policy's display fields:
/// `{"items": [{"coupon_issue_id": 9, "coupon_id": 1, "status": "ISSUED", …}], "next_cursor": "9"}`.
/// `status` is one of `ISSUED`, `RESERVED`, `USED`, `EXPIRED`; `limit` 1–100 (default 20).
#[tracing::instrument(name = "list_user_coupons", skip_all, fields(user_id = %user))]
async fn list_user_coupons(
    State(state): State<AppState>,
    UserPath(user): UserPath,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<PageOf<UserCoupon>>, ApiError> {
    if let Some(status) = &params.status {
        if !ISSUE_STATES.contains(&status.as_str()) {
            return Err(ApiError::Validation(format!(
                "status must be one of {}",
                ISSUE_STATES.join(", ")
            )));
        }
    }
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let coupons = queries::user_coupons(&state.pool, user, params.status.as_deref(), page).await?;
    Ok(Json(coupons))
}
