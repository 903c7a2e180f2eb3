//! Coupon events for notification services, through a transactional outbox.
//!
//! Every state change of an issued coupon writes its event into `coupon_events` in the same
//! MySQL transaction as the change, so an event exists exactly when its change committed. The
//! relay in coupon-consumer publishes unpublished events to the events topic (at least once:
//! a crash between the broker's acknowledgement and the `published_at` stamp republishes, so
//! readers de-duplicate by `event_id`).
//!
//! Event (JSON, schema version 1):
//! `{"schema_version": 1, "event_id": "0193…", "event_type": "ISSUED", "occurred_at": "…",
//! "coupon_id": 1, "coupon_issue_id": 9, "user_id": 7, "order_id": null, "expires_at": "…"}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use crate::policies::push_id_list;

/// Version of the event JSON; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// What happened to an issued coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// The coupon was persisted for its user.
    Issued,
    /// Held for an order at checkout.
    Reserved,
    /// Used for an order.
    Used,
    /// Usable again: a hold was released (abandoned, payment failed, timed out) or a redeemed
    /// order was cancelled.
    Released,
    /// Its validity ends within the notice window (7 days by default); sent once per coupon.
    ExpiringSoon,
    /// Its validity ended unused.
    Expired,
}

impl EventType {
    /// The stored (and JSON) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "ISSUED",
            Self::Reserved => "RESERVED",
            Self::Used => "USED",
            Self::Released => "RELEASED",
            Self::ExpiringSoon => "EXPIRING_SOON",
            Self::Expired => "EXPIRED",
        }
    }
}

/// One event, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponEvent {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of the event; the same event published twice carries the same id.
    pub event_id: Uuid,
    /// What happened.
    pub event_type: EventType,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The coupon policy.
    pub coupon_id: i64,
    /// The issued coupon (`coupon_issues.id`).
    pub coupon_issue_id: i64,
    /// Its owner.
    pub user_id: i64,
    /// The order, for `RESERVED`, `USED` and `RELEASED`.
    pub order_id: Option<String>,
    /// End of validity, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Namespace of the name-based ids of `ISSUED` events (RFC 9562 UUIDv5): the id depends only
/// on the issued coupon, so recording it again (a redelivered issue message) stores nothing.
const ISSUED_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b0e_4d5a_4c8e_9a71_c0ff_ee00_0001);

/// Columns of `coupon_issues` an event is built from, in the order [`record_rows`] reads them.
pub(crate) const EVENT_SOURCE_COLUMNS: &str = "id, coupon_id, user_id, order_id, expires_at";

/// Records `event_type` for each of `issue_ids` inside `tx`, from each coupon's current row
/// (so a release is recorded before the row's order is cleared).
///
/// # Errors
/// Any database error.
pub async fn record(
    tx: &mut Transaction<'_, MySql>,
    event_type: EventType,
    issue_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if issue_ids.is_empty() {
        return Ok(());
    }
    let mut select = QueryBuilder::<MySql>::new(format!(
        "SELECT {EVENT_SOURCE_COLUMNS} FROM coupon_issues WHERE id IN "
    ));
    push_id_list(&mut select, issue_ids);
    let rows = select.build().fetch_all(&mut **tx).await?;
    record_rows(tx, event_type, &rows, now).await
}

/// Records `event_type` for each of `rows` (`coupon_issues` rows read with
/// [`EVENT_SOURCE_COLUMNS`]) inside `tx`. An `ISSUED` event already stored (same coupon, so
/// same id) is skipped.
///
/// # Errors
/// Any database error, or a row without those columns.
pub(crate) async fn record_rows(
    tx: &mut Transaction<'_, MySql>,
    event_type: EventType,
    rows: &[MySqlRow],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let issue_id: i64 = row.try_get("id")?;
        let event_id = match event_type {
            EventType::Issued => Uuid::new_v5(&ISSUED_NAMESPACE, issue_id.to_string().as_bytes()),
            _ => Uuid::now_v7(),
        };
        events.push(CouponEvent {
            schema_version: SCHEMA_VERSION,
            event_id,
            event_type,
            occurred_at: now,
            coupon_id: row.try_get("coupon_id")?,
            coupon_issue_id: issue_id,
            user_id: row.try_get("user_id")?,
            order_id: crate::store::db::binary_text(row, "order_id")?,
            expires_at: row.try_get("expires_at")?,
        });
    }
    let mut insert = QueryBuilder::<MySql>::new(
        "INSERT IGNORE INTO coupon_events (event_id, event_type, coupon_issue_id, payload, created_at) ",
    );
    insert.push_values(&events, |mut row, event| {
        row.push_bind(event.event_id.to_string())
            .push_bind(event.event_type.as_str())
            .push_bind(event.coupon_issue_id)
            .push_bind(serde_json::to_string(event).unwrap_or_default())
            .push_bind(crate::store::db::datetime(now));
    });
    insert.build().execute(&mut **tx).await?;
    Ok(())
}

/// Sets the column `set` names to `now` on the `coupon_issues` or `coupon_events` rows `ids`.
pub(crate) async fn update_ids(
    tx: &mut Transaction<'_, MySql>,
    set: &str,
    now: DateTime<Utc>,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut update = QueryBuilder::<MySql>::new(set);
    update
        .push_bind(crate::store::db::datetime(now))
        .push(" WHERE id IN ");
    push_id_list(&mut update, ids);
    update.build().execute(&mut **tx).await?;
    Ok(())
}

/// An event waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Outbox row id.
    pub id: i64,
    /// Message key: the issued coupon, so one coupon's events keep their order in a partition.
    pub key: String,
    /// The event JSON.
    pub payload: String,
}

/// Locks up to `batch` unpublished events, oldest first, inside `tx` (`FOR UPDATE SKIP LOCKED`:
/// concurrent relays take disjoint events).
///
/// # Errors
/// Any database error.
pub async fn take_unpublished(
    tx: &mut Transaction<'_, MySql>,
    batch: u32,
) -> Result<Vec<Pending>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, coupon_issue_id, payload FROM coupon_events WHERE published_at IS NULL \
         ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Pending {
                id: row.try_get("id")?,
                key: row.try_get::<i64, _>("coupon_issue_id")?.to_string(),
                payload: row.try_get("payload")?,
            })
        })
        .collect()
}

/// Stamps `events` published at `now`, inside `tx`.
///
/// # Errors
/// Any database error.
pub async fn mark_published(
    tx: &mut Transaction<'_, MySql>,
    events: &[Pending],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    update_ids(tx, "UPDATE coupon_events SET published_at = ", now, &ids).await
}
