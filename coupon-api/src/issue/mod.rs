//! The FCFS issue path: `POST /api/v1/coupons/{coupon_id}/issues` and the issue status
//! ([`routes`]), with what only it uses: the admissions this instance made
//! ([`admitted_here`]), the sold-out marks ([`sold_out`]), the batched clearing of pending
//! marks ([`settle`]), the circuit breaker in front of Redis ([`breaker`]) and the rebuild of
//! lost admission state ([`rebuild`]).

pub mod admitted_here;
pub mod breaker;
pub mod rebuild;
pub mod routes;
pub mod settle;
pub mod sold_out;

use coupon_core::issue::admission::AdmissionStore;
use coupon_core::store::kafka::IssuePublisher;
use sqlx::MySqlPool;

use crate::policies::cache::PolicyCache;
pub use routes::router;

/// What the issue routes use, shared behind one `Arc` (`State<Arc<IssuingState>>`): the
/// per-request clone is one reference-count increment.
pub struct IssuingState {
    /// MySQL pool (the issue status reads the row).
    pub pool: MySqlPool,
    /// Redis admission state.
    pub admission: AdmissionStore,
    /// Kafka producer of issue messages (`acks=all`).
    pub publisher: IssuePublisher,
    /// Local policy cache.
    pub policies: PolicyCache,
    /// The sell-outs the consumer announced, with their holders.
    pub sold_out: sold_out::SoldOutMarks,
    /// The admissions this instance made and published.
    pub admitted_here: admitted_here::AdmittedHere,
    /// Clears the pending marks of acknowledged admissions, in batches.
    pub settler: settle::Settler,
    /// Circuit breaker of the issue path's Redis calls.
    pub breaker: breaker::RedisBreaker,
    /// Rebuilds of lost admission state started here.
    pub rebuilds: rebuild::Rebuilds,
    /// Owner of the tasks a request leaves behind (the admission and publish, an undo).
    pub tasks: crate::tasks::Tasks,
}
