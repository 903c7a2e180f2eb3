//! Issuance, from the request's admission to the row in MySQL, and the repairs after faults:
//!
//! - [`admission`]: the atomic Redis admission script (duplicate check, stock check, admit),
//!   its undo, the per-coupon Redis keys, the policy copy in Redis and the invalidation
//!   channel;
//! - [`message`]: the issue message coupon-api publishes to Kafka once admitted;
//! - [`persistence`]: coupon-consumer's idempotent, batched write of those messages;
//! - [`recovery`]: rebuilding a coupon's admission state after Redis lost it;
//! - [`reconciliation`]: comparing admissions, messages in flight and rows, and repairing them.

pub mod admission;
pub mod message;
pub mod persistence;
pub mod reconciliation;
pub mod recovery;

/// User ids read as integers (rows, the issue log) as [`crate::domain::UserId`]s, for the admission store.
///
/// # Errors
/// An id that is not positive (no row or message holds one).
pub(crate) fn user_ids(raw: &[i64]) -> anyhow::Result<Vec<crate::domain::UserId>> {
    raw.iter()
        .map(|&id| crate::domain::UserId::parse(id).map_err(|e| anyhow::anyhow!(e.0)))
        .collect()
}
