//! Reconciliation through the admin API: `POST /api/v1/admin/reconciliations` starts a pass
//! ([`coupon_core::issue::reconciliation`], the same as `coupon-api reconcile`) as a background job and
//! answers 202 at once, since a pass waits out its grace period and may take longer than
//! `REQUEST_TIMEOUT_MS`; `GET /api/v1/admin/reconciliations/{job_id}` reports it. Jobs are
//! rows of `reconciliation_jobs`, so any instance can report a job another one started.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use coupon_core::domain::CouponId;
use coupon_core::issue::reconciliation::{self, Reconciler, ReconciliationJob};
use coupon_core::policies;
use serde::Deserialize;

use crate::http::auth::Admin;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath};
use std::sync::Arc;

use axum::extract::FromRef;

use crate::operations::OperationsState;

/// Longest grace period a job may ask for (s).
const MAX_GRACE_SECS: u64 = 3_600;

/// Routes of this module.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<OperationsState>: FromRef<S>,
{
    Router::new()
        .route("/api/v1/admin/reconciliations", post(start_reconciliation))
        .route(
            "/api/v1/admin/reconciliations/{job_id}",
            get(reconciliation_job),
        )
}

/// Body of a reconciliation request; every field is optional (`{}`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationRequest {
    /// Only this coupon; absent: every coupon not soft-deleted.
    #[schema(value_type = Option<i64>)]
    pub coupon_id: Option<CouponId>,
    /// Wait between the two reads that must both show an admission as lost (s): at least the
    /// producer's message timeout, so no publish is still in flight; at most 3,600. Absent:
    /// twice the message timeout.
    pub grace_secs: Option<u64>,
    /// Report only; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Start a reconciliation
///
/// Needs an admin token. Compares, per coupon, who was granted the coupon with what was
/// stored, and repairs what a failure left behind: a grant whose message never reached the
/// broker is sent again (the coupon is then stored), a stored coupon missing from the grants is
/// added back, and a drifted issued count is set to the stored rows. Runs in the background:
/// answers 202 with the `RUNNING` job and a `Location` to poll. `dry_run` reports without
/// changing anything. 404 `COUPON_NOT_FOUND` for an unknown `coupon_id`; 422 for a
/// `grace_secs` shorter than the broker's message timeout or longer than an hour.
#[tracing::instrument(name = "start_reconciliation", skip_all)]
#[utoipa::path(
    post,
    path = "/api/v1/admin/reconciliations",
    tag = "admin",
    request_body = ReconciliationRequest,
    responses(
        (status = 202, description = "pass started; poll the Location", body = ReconciliationJob),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
async fn start_reconciliation(
    State(state): State<Arc<OperationsState>>,
    _admin: Admin,
    ApiJson(body): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<impl IntoResponse, ApiError> {
    // Read through a JSON object: serde would also build this all-optional struct from an
    // array (`[null, null]`), which the schemathesis run rightly flagged as accepted.
    let request: ReconciliationRequest =
        serde_json::from_value(body.into()).map_err(|e| ApiError::Validation(e.to_string()))?;
    let minimum = state.rebuilds.settle().as_secs_f64().ceil() as u64;
    let grace = match request.grace_secs {
        None => state.rebuilds.settle() * 2,
        Some(secs) if (minimum..=MAX_GRACE_SECS).contains(&secs) => {
            std::time::Duration::from_secs(secs)
        }
        Some(_) => {
            return Err(ApiError::Validation(format!(
                "grace_secs must be from {minimum} (the producer's message timeout) to \
                 {MAX_GRACE_SECS}"
            )))
        }
    };
    if let Some(coupon) = request.coupon_id {
        if policies::find_policy(&state.pool, coupon).await?.is_none() {
            return Err(ApiError::CouponNotFound);
        }
    }
    let job_id =
        reconciliation::create_job(&state.pool, request.coupon_id, grace, request.dry_run).await?;
    let job = reconciliation::find_job(&state.pool, job_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("job {job_id} vanished")))?;
    let (coupon, dry_run) = (request.coupon_id, request.dry_run);
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let reconciler = Reconciler {
            pool: &state.pool,
            admission: &state.admission,
            log: state.rebuilds.log(),
            publisher: &state.publisher,
            grace,
            dry_run,
        };
        let outcome = reconciler.run(coupon).await;
        match &outcome {
            Ok(reports) => tracing::info!(job_id, coupons = reports.len(), "reconciliation done"),
            Err(err) => tracing::error!(job_id, err = %format!("{err:#}"), "reconciliation failed"),
        }
        if let Err(err) = reconciliation::finish_job(&state.pool, job_id, &outcome).await {
            tracing::error!(job_id, %err, "recording the reconciliation's end failed");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        [(LOCATION, format!("/api/v1/admin/reconciliations/{job_id}"))],
        Json(job),
    ))
}

/// Read a reconciliation job
///
/// Needs an admin token. Answers 200 with the job: `RUNNING`, `DONE` with one report per coupon,
/// or `FAILED` with the reason. 404 `NOT_FOUND` for an unknown job.
#[utoipa::path(
    get,
    path = "/api/v1/admin/reconciliations/{job_id}",
    tag = "admin",
    params(("job_id" = i64, Path, description = "reconciliation job id")),
    responses(
        (status = 200, body = ReconciliationJob),
        (status = 404, description = "NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
async fn reconciliation_job(
    State(state): State<Arc<OperationsState>>,
    _admin: Admin,
    ApiPath(job_id): ApiPath<i64>,
) -> Result<Json<ReconciliationJob>, ApiError> {
    reconciliation::find_job(&state.pool, job_id)
        .await?
        .map(Json)
        .ok_or(ApiError::JobNotFound)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(start_reconciliation, reconciliation_job))]
pub(crate) struct Doc;
