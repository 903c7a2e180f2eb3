//! State shared by every handler.

use coupon_core::admission::AdmissionStore;
use coupon_core::kafka::IssuePublisher;
use sqlx::MySqlPool;

use crate::cache::PolicyCache;

/// Cheap to clone: every field is a handle on a shared pool or connection.
#[derive(Clone)]
pub struct AppState {
    /// MySQL pool (policies, issue rows).
    pub pool: MySqlPool,
    /// Redis admission state and policy copies.
    pub admission: AdmissionStore,
    /// Idempotent Kafka producer of issue messages.
    pub publisher: IssuePublisher,
    /// Local policy cache and sold-out marks.
    pub cache: PolicyCache,
}
