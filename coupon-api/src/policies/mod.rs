//! Coupon policies over HTTP ([`routes`]: create, read, search, change, suspend, delete, and
//! their stats), with each instance's policy cache ([`cache`]), the invalidation broadcasts
//! that keep the caches of every instance fresh ([`invalidation`]), and the public reads and
//! stats kept for one second ([`public_reads`], [`stats`]).

pub mod cache;
pub mod invalidation;
pub mod public_reads;
pub mod routes;
pub mod stats;

use coupon_core::issue::admission::{AdmissionStore, InvalidationBroadcast, PolicyCopies};
use sqlx::MySqlPool;

pub use routes::router;

/// What the policy routes use (`State<Arc<PolicyState>>`).
pub struct PolicyState {
    /// MySQL pool (policies, counts).
    pub pool: MySqlPool,
    /// Redis admission state (a new policy's is prepared; stats read it).
    pub admission: AdmissionStore,
    /// The policy copies kept in Redis.
    pub copies: PolicyCopies,
    /// The invalidation channel that tells every instance of a change.
    pub broadcast: InvalidationBroadcast,
    /// This instance's policy cache.
    pub policies: cache::PolicyCache,
    /// Per-coupon stats, each kept for one second.
    pub stats: stats::StatsCache,
    /// The public policy reads, each kept for one second.
    pub public_reads: public_reads::PolicyReads,
}
