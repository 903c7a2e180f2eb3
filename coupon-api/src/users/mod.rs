//! A user's coupons: `GET /api/v1/users/{user_id}/coupons?status=&cursor=&limit=`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use coupon_core::queries::{self, Page, PageOf, UserCoupon, ISSUE_STATES};
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::extract::{ApiQuery, UserPath};
use std::sync::Arc;

use axum::extract::FromRef;

/// What the user routes use (`State<Arc<UserState>>`).
pub struct UserState {
    /// MySQL pool.
    pub pool: sqlx::MySqlPool,
}

/// Routes of this module.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<UserState>: FromRef<S>,
{
    Router::new().route("/api/v1/users/{user_id}/coupons", get(list_user_coupons))
}

/// Query parameters of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only coupons in this status: `ISSUED`, `RESERVED`, `USED` or `EXPIRED`.
    status: Option<String>,
    /// The `next_cursor` of the previous page; absent for the first page.
    cursor: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    limit: Option<u32>,
}

/// List a user's coupons
///
/// Needs a user token for that user (or an admin token). Newest first, with the coupon's title
/// and discount; `status` filters by `ISSUED`, `RESERVED`, `USED` or `EXPIRED`. 20 per page
/// unless `limit` says otherwise (1 to 100); pass the answer's `next_cursor` as `cursor` for the
/// next page.
#[tracing::instrument(name = "list_user_coupons", skip_all, fields(user_id = %user))]
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/coupons",
    tag = "users",
    params(("user_id" = i64, Path, description = "user id; must be the token's subject unless the token is admin"), ListParams),
    responses(
        (status = 200, body = PageOf<UserCoupon>)
    ),
    security(("bearer" = ["user", "admin"]))
)]
async fn list_user_coupons(
    State(state): State<Arc<UserState>>,
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

/// The OpenAPI description of this module's routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_user_coupons))]
pub(crate) struct Doc;
