//! The probes: `GET /health` (liveness: the process serves), `GET /ready` (the issue path can
//! answer: Redis and Kafka answer) and `GET /ready/full` (every store answers, MySQL too).
//!
//! A load balancer routes by `/ready`: issuing needs no MySQL per request (policies come from
//! the local cache and Redis copies, admissions go to Redis and Kafka), and MySQL is shared by
//! every instance, so taking every instance out of rotation when only MySQL is down would stop
//! issuing and help nobody; the order routes and reads answer 503 meanwhile. `/ready/full` is
//! the gate for a deployment or a drop's preflight.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use axum::extract::FromRef;

use crate::operations::OperationsState;
use crate::policies::public_reads::PUBLIC_READ_TTL;

/// How long each dependency gets to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes of this module.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<OperationsState>: FromRef<S>,
{
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/ready/full", get(ready_full))
}

/// Liveness
///
/// Answers 200 `{"status":"UP"}` while the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "the process serves HTTP")
    )
)]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "UP"}))
}

/// The last readiness report, at most [`PUBLIC_READ_TTL`] old, so a load balancer probing
/// every instance often lands on memory, not on the stores (one probe at a time).
#[derive(Clone)]
pub struct ReadinessCache(moka::future::Cache<(), Arc<Readiness>>);

impl Default for ReadinessCache {
    fn default() -> Self {
        Self(
            moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(PUBLIC_READ_TTL)
                .build(),
        )
    }
}

/// Readiness report: each dependency `true` when it answered in time.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// MySQL answered `SELECT 1`.
    pub mysql: bool,
    /// Redis answered `PING`.
    pub redis: bool,
    /// A broker answered a metadata request.
    pub kafka: bool,
}

impl Readiness {
    fn issue_path_up(&self) -> bool {
        self.redis && self.kafka
    }

    fn all_up(&self) -> bool {
        self.mysql && self.issue_path_up()
    }
}

/// Readiness of the issue path (the load balancer's probe)
///
/// Answers 200 when Redis and Kafka answered within 2 seconds, else 503; both carry the report
/// per dependency, MySQL included (not required here: see `/ready/full`). Send traffic only to
/// an instance that answers 200. The report is at most one second old: each instance probes at
/// most once a second, however often it is asked.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, body = Readiness),
        (status = 503, description = "Redis or Kafka did not answer", body = Readiness)
    )
)]
async fn ready(State(state): State<Arc<OperationsState>>) -> (StatusCode, Json<Readiness>) {
    answer(&state, Readiness::issue_path_up).await
}

/// Readiness of every route
///
/// Answers 200 when MySQL, Redis and Kafka all answered within 2 seconds, else 503, with the
/// same report as `/ready`: the gate before a deployment or a drop, not a load balancer's
/// probe.
#[utoipa::path(
    get,
    path = "/ready/full",
    tag = "health",
    responses(
        (status = 200, body = Readiness),
        (status = 503, description = "a dependency did not answer", body = Readiness)
    )
)]
async fn ready_full(State(state): State<Arc<OperationsState>>) -> (StatusCode, Json<Readiness>) {
    answer(&state, Readiness::all_up).await
}

async fn answer(
    state: &OperationsState,
    up: fn(&Readiness) -> bool,
) -> (StatusCode, Json<Readiness>) {
    // One probe per second and instance, shared by concurrent callers.
    let report = state.readiness.0.get_with((), probe(state)).await;
    let status = if up(&report) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json((*report).clone()))
}

/// Probes the three stores at once, each bounded by the probe timeout.
async fn probe(state: &OperationsState) -> Arc<Readiness> {
    let mysql = async {
        tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool))
            .await
            .is_ok_and(|r| r.is_ok())
    };
    let redis = async {
        tokio::time::timeout(PROBE_TIMEOUT, state.admission.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    };
    let kafka = async { state.publisher.check_broker(PROBE_TIMEOUT).await.is_ok() };
    let (mysql, redis, kafka) = tokio::join!(mysql, redis, kafka);
    Arc::new(Readiness {
        mysql,
        redis,
        kafka,
    })
}

/// The OpenAPI description of this module's routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(health, ready, ready_full))]
pub(crate) struct Doc;
