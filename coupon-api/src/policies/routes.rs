//! Coupon policies: `POST /api/v1/coupons` and `GET /api/v1/coupons/{coupon_id}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use coupon_core::domain::{CouponId, CouponStatus};
use coupon_core::domain::{CouponPolicy, NewCouponPolicy, ValidPolicy};
use coupon_core::issue::admission::Invalidation;
use coupon_core::policies;
use coupon_core::policies::{PolicyUpdate, Saved};
use coupon_core::queries::{self, Page, PageOf, PolicyFilter};
use serde::Deserialize;
use serde::Serialize;

use crate::http::auth::{Admin, Viewer};
use crate::http::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::extract::{ApiJson, ApiQuery, CouponPath};
use axum::extract::FromRef;

use crate::policies::stats::StatsView;
use crate::policies::PolicyState;

/// Routes of this module.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<PolicyState>: FromRef<S>,
{
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

/// Create a coupon policy
///
/// Needs an admin token. Amounts are integers in the smallest currency unit (KRW); a
/// `FIRST_COME_FIRST_SERVED` policy has a `total_quantity`, an `UNLIMITED` one has none. Times
/// are UTC; users may ask for the coupon from `issue_starts_at` (inclusive) to `issue_ends_at`
/// (exclusive), and `valid_days` and/or `valid_until` bound how long an issued coupon can be
/// used.
///
/// Answers 201 with the stored policy. 422 `VALIDATION_FAILED` names the first field that breaks
/// a rule (for example an issue window that ends before it starts). After a 503 nothing was
/// stored: send the request again.
// The Redis state (stock bound and policy copy) is prepared before the MySQL transaction
// commits, so no committed policy lacks its stock bound.
#[tracing::instrument(name = "create_policy", skip_all)]
#[utoipa::path(
    post,
    path = "/api/v1/coupons",
    tag = "coupons",
    request_body = NewCouponPolicy,
    responses(
        (status = 201, body = CouponPolicy)
    ),
    security(("bearer" = ["admin"]))
)]
async fn create_policy(
    State(state): State<Arc<PolicyState>>,
    _admin: Admin,
    ApiJson(new): ApiJson<NewCouponPolicy>,
) -> Result<(StatusCode, Json<CouponPolicy>), ApiError> {
    let new = ValidPolicy::try_from(new)?;
    let mut tx = state.pool.begin().await?;
    let policy = policies::insert_policy(&mut tx, &new).await?;
    state.admission.prepare(&policy).await?;
    tx.commit().await?;
    tracing::info!(coupon_id = %policy.id, total = ?policy.total_quantity(), "coupon policy created");
    Ok((StatusCode::CREATED, Json(policy)))
}

/// A policy with its live counts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// Read a coupon policy with its live counts
///
/// Public: no token needed. Answers 200 with the policy and how many coupons are `issued`
/// (stored), `pending` (granted, being stored) and `remaining` (still to be had; `null` for an
/// unlimited coupon). 404 `COUPON_NOT_FOUND` for an unknown or deleted policy, and, unless the
/// caller has an admin token, for a suspended one or one whose issue window has not opened yet
/// (a drop is not shown before it opens, so nobody can prepare for its id). The answer is at
/// most one second old (each instance reads the stores at most once a second per coupon), so
/// shoppers refreshing the page during a drop do not load MySQL and Redis.
// The policy from MySQL, `issued` from MySQL, `pending` and `remaining` from the Redis
// admission set, cached by crate::policies::public_reads.
#[tracing::instrument(name = "get_policy", skip_all, fields(coupon_id = %coupon))]
#[utoipa::path(
    get,
    path = "/api/v1/coupons/{coupon_id}",
    tag = "coupons",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = PolicyView),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    )
)]
async fn get_policy(
    State(state): State<Arc<PolicyState>>,
    viewer: Viewer,
    CouponPath(coupon): CouponPath,
) -> Result<Json<PolicyView>, ApiError> {
    let view = state
        .public_reads
        .policies
        .try_get_with(coupon, read_policy(&state, coupon))
        .await
        .map_err(|err| ApiError::unavailable(anyhow::anyhow!("reading the policy: {err}")))?;
    let view = view
        .filter(|view| viewer == Viewer::Operator || public(&view.policy, Utc::now()))
        .ok_or(ApiError::CouponNotFound)?;
    Ok(Json((*view).clone()))
}

/// Whether the public may see `policy` at `now`: active, and its issue window opened.
fn public(policy: &CouponPolicy, now: chrono::DateTime<Utc>) -> bool {
    policy.status == CouponStatus::Active && policy.issue_starts_at <= now
}

/// The policy's view from the stores; `None` for an unknown or deleted policy.
async fn read_policy(
    state: &PolicyState,
    coupon: CouponId,
) -> Result<Option<Arc<PolicyView>>, anyhow::Error> {
    let Some(policy) = policies::find_policy(&state.pool, coupon).await? else {
        return Ok(None);
    };
    let admitted = state
        .admission
        .admitted_count(policy.stock_shards())
        .await?;
    let issued = policy.issued_quantity;
    Ok(Some(Arc::new(PolicyView {
        issued,
        pending: (admitted - issued).max(0),
        remaining: policy
            .total_quantity()
            .map(|total| (total - admitted).max(0)),
        policy,
    })))
}

/// Refreshes the Redis policy copy (or drops it, for a deleted policy) and broadcasts
/// `POLICY_CHANGED`, so every API instance reloads the policy within the broadcast's latency.
/// A Redis failure is a 503: the MySQL change is kept, and repeating the request re-announces.
async fn announce(
    state: &PolicyState,
    id: CouponId,
    policy: Option<&CouponPolicy>,
) -> Result<(), ApiError> {
    match policy {
        Some(policy) => state.copies.store(policy).await,
        None => state.copies.remove(id).await,
    }?;
    let invalidation = Invalidation::policy_changed(id);
    state.broadcast.publish(invalidation).await?;
    // This instance's issue path and public read see the change at once, without waiting for
    // its own broadcast (after a gap in the subscription, as when Redis froze, the broadcast
    // may never reach it; the invalidate-all on resubscribing may come later than the next
    // request); the others' within a second.
    state.policies.invalidate(id).await;
    state.public_reads.policies.invalidate(&id).await;
    Ok(())
}

/// Applies `edit` to the current policy as one conditional write ([`Saved`]): 409
/// `POLICY_CHANGED` when another admin change was written between the read and the write (the
/// caller may read the policy again and retry), so a PATCH racing a suspend can never put the
/// policy back to `ACTIVE`. A change that changes nothing writes nothing and re-announces, so a
/// repeat after a failed Redis step repairs the copy.
async fn change(
    state: &PolicyState,
    id: CouponId,
    edit: impl FnOnce(&CouponPolicy) -> Result<CouponPolicy, ApiError>,
) -> Result<Json<CouponPolicy>, ApiError> {
    let current = policies::find_policy(&state.pool, id)
        .await?
        .ok_or(ApiError::CouponNotFound)?;
    let next = edit(&current)?;
    let saved = if next == current {
        current
    } else {
        match policies::save_policy_admin_fields(&state.pool, &next).await? {
            Saved::Changed(saved) => saved,
            Saved::NotFound => return Err(ApiError::CouponNotFound),
            Saved::Conflict => {
                return Err(ApiError::refused(
                    StatusCode::CONFLICT,
                    ErrorCode::PolicyChanged,
                    "the policy was changed by another request meanwhile; read it and retry".into(),
                ))
            }
        }
    };
    announce(state, id, Some(&saved)).await?;
    tracing::info!(coupon_id = %id, status = saved.status.as_str(), version = saved.version, "coupon policy changed");
    Ok(Json(saved))
}

/// Change a coupon policy
///
/// Needs an admin token. Send any of `title`, `issue_ends_at`, `valid_days` and `valid_until`;
/// the others keep their values. Answers 200 with the changed policy. A change to how long
/// coupons stay valid applies to coupons issued from then on. 422 `VALIDATION_FAILED` for a
/// change that breaks a rule; 404 `COUPON_NOT_FOUND` for an unknown or deleted policy; 409
/// `POLICY_CHANGED` when another change (a suspend, another PATCH) was written between this
/// one's read and its write: nothing was changed, read the policy (its `version`) and retry.
#[tracing::instrument(name = "update_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    patch,
    path = "/api/v1/coupons/{coupon_id}",
    tag = "coupons",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    request_body = PolicyUpdate,
    responses(
        (status = 200, body = CouponPolicy),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "POLICY_CHANGED: another change was written meanwhile; read the policy and retry", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
async fn update_policy(
    State(state): State<Arc<PolicyState>>,
    _admin: Admin,
    CouponPath(id): CouponPath,
    ApiJson(update): ApiJson<PolicyUpdate>,
) -> Result<Json<CouponPolicy>, ApiError> {
    change(&state, id, |current| Ok(update.apply(current)?)).await
}

/// Suspend a coupon policy
///
/// Needs an admin token. While suspended, nobody can be issued the coupon (409
/// `COUPON_SUSPENDED`) and issued coupons cannot be used. Answers 200 with the policy; repeating
/// it changes nothing.
#[tracing::instrument(name = "suspend_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    post,
    path = "/api/v1/coupons/{coupon_id}/suspend",
    tag = "coupons",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = CouponPolicy),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "POLICY_CHANGED: another change was written meanwhile; read the policy and retry", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
async fn suspend_policy(
    State(state): State<Arc<PolicyState>>,
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

/// Resume a suspended coupon policy
///
/// Needs an admin token. The coupon can be issued and used again. Answers 200 with the policy;
/// repeating it changes nothing.
#[tracing::instrument(name = "resume_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    post,
    path = "/api/v1/coupons/{coupon_id}/resume",
    tag = "coupons",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = CouponPolicy),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "POLICY_CHANGED: another change was written meanwhile; read the policy and retry", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
async fn resume_policy(
    State(state): State<Arc<PolicyState>>,
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

/// Delete a coupon policy
///
/// Needs an admin token. Answers 204. The policy then reads as 404 `COUPON_NOT_FOUND` and can no
/// longer be issued; coupons already issued are kept on record but cannot be used. Repeating it
/// answers 204 again (and repeats the delete's announcement to every instance, so a retry after
/// a 503 completes it); 404 `COUPON_NOT_FOUND` only for an id no policy ever had.
#[tracing::instrument(name = "delete_policy", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    delete,
    path = "/api/v1/coupons/{coupon_id}",
    tag = "coupons",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 204, description = "soft-deleted"),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
async fn delete_policy(
    State(state): State<Arc<PolicyState>>,
    _admin: Admin,
    CouponPath(id): CouponPath,
) -> Result<StatusCode, ApiError> {
    // A repeat of a delete whose Redis step failed finds the row deleted and announces again.
    if !policies::delete_policy(&state.pool, id, Utc::now()).await?
        && !policies::is_deleted(&state.pool, id).await?
    {
        return Err(ApiError::CouponNotFound);
    }
    announce(&state, id, None).await?;
    tracing::info!(coupon_id = %id, "coupon policy deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Longest search text `q` (characters): a title has at most 200, and a longer `q` would only
/// make each search's `LIKE` scan costlier.
pub const MAX_QUERY_CHARS: usize = 100;

/// Query parameters of the policy search.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    /// Only policies in this status: `ACTIVE` or `SUSPENDED`.
    status: Option<CouponStatus>,
    /// Only policies whose issue window holds this time (RFC 3339).
    active_at: Option<chrono::DateTime<Utc>>,
    /// Only policies whose title contains this text (at most 100 characters).
    q: Option<String>,
    /// The `next_cursor` of the previous page; absent for the first page.
    cursor: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    limit: Option<u32>,
}

/// List coupon policies
///
/// Public: no token needed. Newest first, 20 per page unless `limit` says otherwise (1 to 100);
/// pass the answer's `next_cursor` as `cursor` for the next page (`null` on the last). Filters:
/// `status` (`ACTIVE` or `SUSPENDED`), `active_at` (an RFC 3339 time inside the issue window)
/// and `q` (text in the title, at most 100 characters; longer is 422 `VALIDATION_FAILED`).
/// Deleted policies are never listed; unless the caller has an admin token, neither are
/// suspended ones nor those whose issue window has not opened yet.
#[tracing::instrument(name = "search_policies", skip_all)]
#[utoipa::path(
    get,
    path = "/api/v1/coupons",
    tag = "coupons",
    params(SearchParams),
    responses(
        (status = 200, body = PageOf<CouponPolicy>)
    )
)]
async fn search_policies(
    State(state): State<Arc<PolicyState>>,
    viewer: Viewer,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<PageOf<CouponPolicy>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    if params
        .q
        .as_ref()
        .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
    {
        return Err(ApiError::Validation(format!(
            "q must be at most {MAX_QUERY_CHARS} characters"
        )));
    }
    let mut filter = PolicyFilter {
        status: params.status,
        active_at: params.active_at,
        title_contains: params.q.filter(|q| !q.trim().is_empty()),
        opened_by: None,
    };
    if viewer == Viewer::Public {
        if filter
            .status
            .is_some_and(|status| status != CouponStatus::Active)
        {
            return Ok(Json(PageOf {
                items: Vec::new(),
                next_cursor: None,
            }));
        }
        filter.status = Some(CouponStatus::Active);
        filter.opened_by = Some(Utc::now());
    }
    Ok(Json(
        queries::search_policies(&state.pool, &filter, page).await?,
    ))
}

/// Read a coupon's statistics
///
/// Needs an admin token. Answers 200 with the coupon's counts by state and its remaining stock,
/// at most one second old, so a dashboard can poll it every second during a drop.
// Each API instance computes them at most once a second per coupon (concurrent pollers share
// one computation), from the `(coupon_id, status)` index and one `SCARD`.
#[tracing::instrument(name = "policy_stats", skip_all, fields(coupon_id = %id))]
#[utoipa::path(
    get,
    path = "/api/v1/coupons/{coupon_id}/stats",
    tag = "coupons",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    responses(
        (status = 200, body = StatsView),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
async fn policy_stats(
    State(state): State<Arc<PolicyState>>,
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
