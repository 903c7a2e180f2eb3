//! Coupon policies: `POST /api/v1/coupons` and `GET /api/v1/coupons/{coupon_id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use coupon_core::domain::{CouponId, CouponStatus};
use coupon_core::domain::{CouponPolicy, NewCouponPolicy, ValidPolicy};
use coupon_core::issue::admission::{Invalidation, InvalidationReason};
use coupon_core::policies;
use coupon_core::policies::PolicyUpdate;
use coupon_core::queries::{self, Page, PageOf, PolicyFilter};
use serde::Deserialize;
use serde::Serialize;

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, CouponPath};
use crate::state::AppState;
use crate::stats::StatsView;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/coupons", get(search_policies).post(create_policy))
        .route("/api/v1/coupons/{coupon_id}/stats", get(policy_stats))
        .route(
            "/api/v1/coupons/{coupon_id}",
            get(get_policy).patch(update_policy).delete(delete_policy),
        )
        .route("/api/v1/coupons/{coupon_id}/suspend", post(suspend_policy))
        .route("/api/v1/coupons/{coupon_id}/resume", post(resume_policy))
}

/// Creates a policy and prepares its Redis state (stock bound and policy copy) before the
/// MySQL transaction commits, so no committed policy lacks its stock bound.
///
/// 201 with the stored policy; 422 `VALIDATION_FAILED` for a policy that breaks a rule;
/// 503 `UNAVAILABLE` when MySQL or Redis cannot take it (nothing is stored then).
#[tracing::instrument(name = "create_policy", skip_all)]
#[utoipa::path(
    post,
    path = "/api/v1/coupons",
    tag = "policies",
    request_body = NewCouponPolicy,
    responses(
        (status = 201, body = CouponPolicy),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 400, description = "VALIDATION_FAILED: unreadable body or path", body = ErrorBody),
        (status = 422, description = "VALIDATION_FAILED: a field breaks a rule", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: a store cannot serve now; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn create_policy(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(new): ApiJson<NewCouponPolicy>,
) -> Result<(StatusCode, Json<CouponPolicy>), ApiError> {
    let new = ValidPolicy::try_from(new)?;
    let mut tx = state.pool.begin().await?;
    let policy = policies::insert_policy(&mut tx, &new).await?;
    state.admission.prepare(&policy).await?;
    tx.commit().await?;
    tracing::info!(coupon_id = %policy.id, total = ?policy.total_quantity, "coupon policy created");
    Ok((StatusCode::CREATED, Json(policy)))
}

/// A policy with its live counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[utoipa::path(
    get,
    path = "/api/v1/coupons/{coupon_id}",
    tag = "policies",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = PolicyView),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 400, description = "VALIDATION_FAILED: unreadable body or path", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: a store cannot serve now; Retry-After", body = ErrorBody)
    )
)]
async fn get_policy(
    State(state): State<AppState>,
    CouponPath(coupon): CouponPath,
) -> Result<Json<PolicyView>, ApiError> {
    let policy = policies::find_policy(&state.pool, coupon)
        .await?
        .ok_or(ApiError::CouponNotFound)?;
    let admitted = state.admission.admitted_count(coupon).await?;
    let issued = policy.issued_quantity;
    Ok(Json(PolicyView {
        issued,
        pending: (admitted - issued).max(0),
        remaining: policy.total_quantity.map(|total| (total - admitted).max(0)),
        policy,
    }))
}

/// Refreshes the Redis policy copy (or drops it, for a deleted policy) and broadcasts
/// `POLICY_CHANGED`, so every API instance reloads the policy within the broadcast's latency.
/// A Redis failure is a 503: the MySQL change is kept, and repeating the request re-announces.
async fn announce(
    state: &AppState,
    id: CouponId,
    policy: Option<&CouponPolicy>,
) -> Result<(), ApiError> {
    match policy {
        Some(policy) => state.admission.store_policy(policy).await,
        None => state.admission.remove_policy(id).await,
    }?;
    let invalidation = Invalidation {
        coupon_id: id,
        reason: InvalidationReason::PolicyChanged,
    };
    state.admission.publish_invalidation(invalidation).await?;
    Ok(())
}

async fn change(
    state: &AppState,
    id: CouponId,
    edit: impl FnOnce(&CouponPolicy) -> Result<CouponPolicy, ApiError>,
) -> Result<Json<CouponPolicy>, ApiError> {
    let current = policies::find_policy(&state.pool, id)
        .await?
        .ok_or(ApiError::CouponNotFound)?;
    let next = edit(&current)?;
    let saved = policies::save_policy_admin_fields(&state.pool, &next)
        .await?
        .ok_or(ApiError::CouponNotFound)?;
    announce(state, id, Some(&saved)).await?;
    tracing::info!(coupon_id = %id, status = saved.status.as_str(), "coupon policy changed");
    Ok(Json(saved))
}

/// `PATCH /api/v1/coupons/{coupon_id}` with any of `title`, `issue_ends_at`, `valid_days`,
/// `valid_until`: 200 with the policy; 422 for a change that breaks a rule; 404 when absent.
/// Validity changes apply to coupons issued from then on.
#[tracing::instrument(name = "update_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    patch,
    path = "/api/v1/coupons/{coupon_id}",
    tag = "policies",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    request_body = PolicyUpdate,
    responses(
        (status = 200, body = CouponPolicy),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "the change is not allowed once users may hold the coupon", body = ErrorBody),
        (status = 400, description = "VALIDATION_FAILED: unreadable body or path", body = ErrorBody),
        (status = 422, description = "VALIDATION_FAILED: a field breaks a rule", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn update_policy(
    State(state): State<AppState>,
    _admin: Admin,
    CouponPath(id): CouponPath,
    ApiJson(update): ApiJson<PolicyUpdate>,
) -> Result<Json<CouponPolicy>, ApiError> {
    change(&state, id, |current| Ok(update.apply(current)?)).await
}

/// `POST /api/v1/coupons/{coupon_id}/suspend`: stops issuing and using; 200 with the policy.
#[tracing::instrument(name = "suspend_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    post,
    path = "/api/v1/coupons/{coupon_id}/suspend",
    tag = "policies",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = CouponPolicy),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn suspend_policy(
    State(state): State<AppState>,
    _admin: Admin,
    CouponPath(id): CouponPath,
) -> Result<Json<CouponPolicy>, ApiError> {
    change(&state, id, |current| {
        Ok(CouponPolicy {
            status: CouponStatus::Suspended,
            ..current.clone()
        })
    })
    .await
}

/// `POST /api/v1/coupons/{coupon_id}/resume`: issuing and using again; 200 with the policy.
#[tracing::instrument(name = "resume_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    post,
    path = "/api/v1/coupons/{coupon_id}/resume",
    tag = "policies",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = CouponPolicy),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn resume_policy(
    State(state): State<AppState>,
    _admin: Admin,
    CouponPath(id): CouponPath,
) -> Result<Json<CouponPolicy>, ApiError> {
    change(&state, id, |current| {
        Ok(CouponPolicy {
            status: CouponStatus::Active,
            ..current.clone()
        })
    })
    .await
}

/// `DELETE /api/v1/coupons/{coupon_id}`: soft delete; 204. The policy then reads as 404 and
/// issues as `COUPON_NOT_FOUND`; coupons already issued keep their rows but cannot be used.
#[tracing::instrument(name = "delete_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    delete,
    path = "/api/v1/coupons/{coupon_id}",
    tag = "policies",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 204, description = "soft-deleted"),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn delete_policy(
    State(state): State<AppState>,
    _admin: Admin,
    CouponPath(id): CouponPath,
) -> Result<StatusCode, ApiError> {
    if !policies::delete_policy(&state.pool, id, Utc::now()).await? {
        return Err(ApiError::CouponNotFound);
    }
    announce(&state, id, None).await?;
    tracing::info!(coupon_id = %id, "coupon policy deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Query parameters of the policy search.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    status: Option<CouponStatus>,
    active_at: Option<chrono::DateTime<Utc>>,
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/coupons?status=&active_at=&q=&cursor=&limit=`: live policies, newest first;
/// `status` `ACTIVE`/`SUSPENDED`, `active_at` an RFC 3339 instant inside the issue window, `q`
/// text in the title, `limit` 1–100 (default 20). `{"items": [...], "next_cursor": ...}`.
#[tracing::instrument(name = "search_policies", skip_all)]
#[utoipa::path(
    get,
    path = "/api/v1/coupons",
    tag = "policies",
    params(SearchParams),
    responses(
        (status = 200, body = PageOf<CouponPolicy>),
        (status = 422, description = "VALIDATION_FAILED: a field breaks a rule", body = ErrorBody)
    )
)]
async fn search_policies(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<PageOf<CouponPolicy>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let filter = PolicyFilter {
        status: params.status,
        active_at: params.active_at,
        title_contains: params.q.filter(|q| !q.trim().is_empty()),
    };
    Ok(Json(
        queries::search_policies(&state.pool, &filter, page).await?,
    ))
}

/// Stats of one coupon. Each API instance computes them at most once a second per coupon
/// (concurrent pollers share one computation), from the `(coupon_id, status)` index and one
/// `SCARD`, so dashboards can poll every second during a drop.
#[tracing::instrument(name = "policy_stats", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    get,
    path = "/api/v1/coupons/{coupon_id}/stats",
    tag = "policies",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = StatsView),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: a store cannot serve now; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn policy_stats(
    State(state): State<AppState>,
    _admin: Admin,
    CouponPath(id): CouponPath,
) -> Result<Json<StatsView>, ApiError> {
    let stats = state.stats.get(&state.pool, &state.admission, id).await?;
    Ok(Json((*stats).clone()))
}

/// The OpenAPI description of this module's routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_policy,
    get_policy,
    update_policy,
    suspend_policy,
    resume_policy,
    delete_policy,
    search_policies,
    policy_stats
))]
pub(crate) struct Doc;
