//! Code coupons over HTTP. A topic ties printed codes to one coupon policy; this module routes
//! the topic's life (`topics`: create, list, read), the codes' (`generation`: a background job
//! with progress, CSV export; `manage`: bulk suspend, activate and delete, search, the
//! archive) and the user's redeem by code (`redeem`).

mod generation;
pub mod jobs;
mod manage;
mod redeem;
mod topics;

use axum::routing::{get, post};
use axum::Router;
use coupon_core::codes::{self, Topic};

use crate::http::error::ApiError;
use std::sync::Arc;

use axum::extract::FromRef;

/// What the code routes use (`State<Arc<CodeState>>`).
pub struct CodeState {
    /// MySQL pool (topics, codes, jobs, the redeem's transaction).
    pub pool: sqlx::MySqlPool,
    /// Runner of code generation jobs.
    pub code_jobs: jobs::CodeJobs,
    /// Redis admission state (a redeem of a limited policy admits through it).
    pub admission: coupon_core::issue::admission::AdmissionStore,
    /// The issue path's circuit breaker, which a redeem's admission goes through too.
    pub breaker: crate::issue::breaker::RedisBreaker,
    /// Rebuilds of lost admission state (a redeem may find it lost).
    pub rebuilds: crate::issue::rebuild::Rebuilds,
    /// Owner of the redeem's task (it runs to its end when the client goes away).
    pub tasks: crate::tasks::Tasks,
}

/// Routes of this module.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<CodeState>: FromRef<S>,
{
    Router::new()
        .route("/api/v1/codes/{code}/redeem", post(redeem::redeem_code))
        .route(
            "/api/v1/topics",
            post(topics::create_topic).get(topics::list_topics),
        )
        .route("/api/v1/topics/{topic_id}", get(topics::get_topic))
        .route(
            "/api/v1/topics/{topic_id}/codes",
            post(generation::generate_codes)
                .get(manage::search_codes)
                .delete(manage::delete_codes),
        )
        .route(
            "/api/v1/topics/{topic_id}/codes/suspend",
            post(manage::suspend_codes),
        )
        .route(
            "/api/v1/topics/{topic_id}/codes/activate",
            post(manage::activate_codes),
        )
        .route(
            "/api/v1/topics/{topic_id}/codes.csv",
            get(generation::export_codes),
        )
        .route(
            "/api/v1/topics/{topic_id}/code-jobs/{job_id}",
            get(generation::generation_job),
        )
        .route("/api/v1/archive/codes/{code}", get(manage::archived_code))
}

/// The topic id of a path, or 422 `VALIDATION_FAILED` when it is not a positive integer.
fn topic_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::Validation("topic_id must be a positive integer".into()))
}

/// The topic a path names, or 404 `TOPIC_NOT_FOUND`.
async fn topic_of(state: &CodeState, raw: &str) -> Result<Topic, ApiError> {
    codes::find_topic(&state.pool, topic_id(raw)?)
        .await?
        .ok_or(ApiError::TopicNotFound)
}

/// The OpenAPI description of this module's routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    topics::create_topic,
    topics::list_topics,
    topics::get_topic,
    generation::generate_codes,
    generation::generation_job,
    generation::export_codes,
    redeem::redeem_code,
    manage::suspend_codes,
    manage::activate_codes,
    manage::delete_codes,
    manage::search_codes,
    manage::archived_code
))]
pub(crate) struct Doc;
