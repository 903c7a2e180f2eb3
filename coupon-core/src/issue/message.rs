//! The issue message that travels from coupon-api to coupon-consumer over Kafka.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{CorrelationId, CouponId, ShardCount, UserId};
use crate::issue::admission::StockShards;

/// One admitted issue request, published as JSON after the admission script said yes.
///
/// Shape: `{"coupon_id": 42, "user_id": 7, "request_id": "0193…", "admitted_at": "2026-…Z"}`,
/// plus `"stock_shards": 4` when the coupon's stock is split into shards and
/// `"correlation_id": "…"` when the HTTP request had an `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueMessage {
    /// The coupon policy.
    pub coupon_id: CouponId,
    /// The admitted user.
    pub user_id: UserId,
    /// Idempotency handle of the request (UUIDv7), answered to the client and stored in the row.
    pub request_id: Uuid,
    /// When the admission script admitted the user; becomes `coupon_issues.issued_at`.
    pub admitted_at: DateTime<Utc>,
    /// The coupon's stock shards (count; absent means 1), so the consumer finds the user's
    /// home shard without reading the policy.
    #[serde(default, skip_serializing_if = "ShardCount::is_one")]
    pub stock_shards: ShardCount,
    /// The `x-request-id` of the HTTP request that was admitted (at most 128 bytes of visible
    /// ASCII, checked by coupon-api), logged by coupon-consumer with the row and stored in
    /// `coupon_issues.correlation_id`, so one id leads from the HTTP answer to the row. `None`
    /// for messages re-published by a rebuild or reconciliation, and for older messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
}

impl IssueMessage {
    /// The Kafka message key: `"{coupon_id}:{user_id}"`.
    ///
    /// Keying by coupon alone would hash every request of a hot coupon to one partition, and so
    /// to one consumer of the group. Keying by (coupon, user) spreads a drop over all partitions
    /// while a user's retries for one coupon still land on one partition. No ordering across
    /// users is needed: each message is an independent, idempotent insert.
    pub fn key(&self) -> String {
        format!("{}:{}", self.coupon_id, self.user_id)
    }

    /// Where the coupon's admission state lives ([`StockShards`]).
    pub fn shards(&self) -> StockShards {
        StockShards::new(self.coupon_id, self.stock_shards)
    }

    /// JSON bytes of the message.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain integers, a UUID and a timestamp cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a message payload.
    ///
    /// # Errors
    /// The payload is not JSON of this shape (such a message is dead-lettered).
    pub fn from_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let msg = IssueMessage {
            coupon_id: CouponId::parse(42).unwrap(),
            user_id: UserId::parse(7).unwrap(),
            request_id: Uuid::now_v7(),
            admitted_at: Utc::now(),
            stock_shards: ShardCount::ONE,
            correlation_id: None,
        };
        assert_eq!(IssueMessage::from_json(&msg.to_json()).unwrap(), msg);
        assert_eq!(msg.key(), "42:7");
        assert!(!String::from_utf8(msg.to_json())
            .unwrap()
            .contains("stock_shards"));
        assert!(!String::from_utf8(msg.to_json())
            .unwrap()
            .contains("correlation_id"));
        let sharded = IssueMessage {
            stock_shards: ShardCount::parse(4).unwrap(),
            correlation_id: Some(CorrelationId::parse("req-1").unwrap()),
            ..msg
        };
        assert_eq!(
            IssueMessage::from_json(&sharded.to_json()).unwrap(),
            sharded
        );
        assert_eq!(sharded.shards().count(), 4);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert!(IssueMessage::from_json(b"not json").is_err());
        assert!(IssueMessage::from_json(br#"{"coupon_id":0,"user_id":1}"#).is_err());
    }
}
