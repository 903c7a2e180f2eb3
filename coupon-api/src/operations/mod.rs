//! Health and operations: the probes (`/health`, `/ready`, `/ready/full`: [`health`]) and the
//! admin's reconciliation jobs ([`reconciliations`]).

pub mod health;
pub mod reconciliations;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::Router;
use coupon_core::issue::admission::AdmissionStore;
use coupon_core::store::kafka::IssuePublisher;
use sqlx::MySqlPool;

use crate::issue::rebuild::Rebuilds;

/// What the probes and the reconciliation routes use (`State<Arc<OperationsState>>`).
pub struct OperationsState {
    /// MySQL pool.
    pub pool: MySqlPool,
    /// Redis admission state.
    pub admission: AdmissionStore,
    /// Kafka producer of issue messages (probed; reconciliation re-publishes with it).
    pub publisher: IssuePublisher,
    /// Rebuilds of lost admission state started here.
    pub rebuilds: Rebuilds,
    /// The last readiness report, kept for one second ([`health`]).
    pub readiness: health::ReadinessCache,
    /// Owner of the reconciliation jobs' tasks.
    pub tasks: crate::tasks::Tasks,
}

/// Routes of this feature.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<OperationsState>: FromRef<S>,
{
    Router::new()
        .merge(health::router())
        .merge(reconciliations::router())
}
