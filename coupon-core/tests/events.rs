//! The event outbox against a real MySQL/MariaDB, with the clock passed in.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use chrono::{Duration, Utc};
use coupon_core::domain::UserId;
use coupon_core::events::{CouponEvent, EventType};
use coupon_core::issue::message::IssueMessage;
use coupon_core::redemption::{self, OrderId};
use coupon_core::testing;
use sqlx::MySqlPool;

async fn issued(users: i64) -> (MySqlPool, Vec<IssueMessage>, Vec<i64>) {
    testing::issued_to_users(users).await
}

async fn events_of(pool: &MySqlPool, event_type: &str) -> Vec<CouponEvent> {
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM coupon_events WHERE event_type = ? ORDER BY id")
            .bind(event_type)
            .fetch_all(pool)
            .await
            .unwrap();
    payloads
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

#[tokio::test]
async fn an_issue_is_announced_once_even_when_its_message_is_redelivered() {
    let (pool, batch, ids) = issued(5).await;

    coupon_core::issue::persistence::persist_batch(&pool, &batch)
        .await
        .unwrap();

    let issued = events_of(&pool, "ISSUED").await;
    assert_eq!(issued.len(), 5);
    let mut announced: Vec<i64> = issued.iter().map(|e| e.coupon_issue_id).collect();
    announced.sort_unstable();
    assert_eq!(announced, ids);
    assert!(issued
        .iter()
        .all(|e| e.schema_version == 1 && e.expires_at.is_some()));
}

#[tokio::test]
async fn holds_uses_and_releases_are_announced_with_their_order() {
    let (pool, _, ids) = issued(3).await;
    let now = Utc::now();
    let order = |n: i64| OrderId::parse(&format!("order-{n}")).unwrap();
    let user = |n: i64| UserId::parse(n).unwrap();

    redemption::reserve(
        &pool,
        ids[0],
        user(1),
        &order(1),
        10_000,
        Duration::minutes(10),
        now,
    )
    .await
    .unwrap();
    redemption::release_reservation(&pool, ids[0], user(1), &order(1), now)
        .await
        .unwrap();
    redemption::reserve(
        &pool,
        ids[1],
        user(2),
        &order(2),
        10_000,
        Duration::minutes(10),
        now,
    )
    .await
    .unwrap();
    redemption::confirm_reservation(&pool, ids[1], user(2), &order(2), now)
        .await
        .unwrap();
    redemption::redeem(&pool, ids[2], user(3), &order(3), 10_000, now)
        .await
        .unwrap();
    redemption::cancel_redemption(&pool, ids[2], user(3), &order(3), now)
        .await
        .unwrap();

    let reserved = events_of(&pool, "RESERVED").await;
    let used = events_of(&pool, "USED").await;
    let released = events_of(&pool, "RELEASED").await;
    assert_eq!(
        reserved
            .iter()
            .map(|e| e.coupon_issue_id)
            .collect::<Vec<_>>(),
        vec![ids[0], ids[1]]
    );
    assert_eq!(
        used.iter().map(|e| e.coupon_issue_id).collect::<Vec<_>>(),
        vec![ids[1], ids[2]]
    );
    assert_eq!(
        released
            .iter()
            .map(|e| e.coupon_issue_id)
            .collect::<Vec<_>>(),
        vec![ids[0], ids[2]]
    );
    assert_eq!(
        released[0].order_id.as_deref(),
        Some("order-1"),
        "a release names the order it ends"
    );
    assert_eq!(used[0].event_type, EventType::Used);
}

#[tokio::test]
async fn expiring_soon_is_sent_once_and_only_inside_the_window() {
    let (pool, _, _) = issued(4).await;
    let now = Utc::now();
    let window = Duration::days(7);

    let too_early = coupon_core::expiry::notice_expiring(&pool, now, window, 100)
        .await
        .unwrap();
    let in_window =
        coupon_core::expiry::notice_expiring(&pool, now + Duration::days(24), window, 100)
            .await
            .unwrap();
    let again = coupon_core::expiry::notice_expiring(&pool, now + Duration::days(25), window, 100)
        .await
        .unwrap();

    assert_eq!((too_early, in_window, again), (0, 4, 0));
    assert_eq!(events_of(&pool, "EXPIRING_SOON").await.len(), 4);
}

#[tokio::test]
async fn coupons_past_their_validity_expire_unless_used() {
    let (pool, _, ids) = issued(3).await;
    let now = Utc::now();
    let order = OrderId::parse("order-1").unwrap();
    redemption::redeem(
        &pool,
        ids[0],
        UserId::parse(1).unwrap(),
        &order,
        10_000,
        now,
    )
    .await
    .unwrap();

    assert_eq!(
        coupon_core::expiry::expire(&pool, now + Duration::days(29), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        coupon_core::expiry::expire(&pool, now + Duration::days(31), 100)
            .await
            .unwrap(),
        2
    );

    let states: Vec<String> =
        sqlx::query_scalar("SELECT status FROM coupon_issues ORDER BY user_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, vec!["USED", "EXPIRED", "EXPIRED"]);
    assert_eq!(events_of(&pool, "EXPIRED").await.len(), 2);
}

#[tokio::test]
async fn expiring_notices_read_only_unnoticed_rows() {
    let (pool, _, _) = issued(50).await;
    let now = Utc::now();
    let window = Duration::days(400);
    // Notice some, so there are noticed rows in the window to walk past.
    assert_eq!(
        coupon_core::expiry::notice_expiring(&pool, now, window, 20)
            .await
            .unwrap(),
        20
    );
    let plan = sqlx::query(&format!(
        "EXPLAIN {}",
        coupon_core::expiry::EXPIRING_BATCH_SQL
    ))
    .bind(now)
    .bind(now + window)
    .bind(20)
    .fetch_all(&pool)
    .await
    .unwrap();
    let key: Option<String> = sqlx::Row::try_get(&plan[0], "key").unwrap();
    assert_eq!(key.as_deref(), Some("idx_coupon_issues_expiring"));
    let extra: Option<String> = sqlx::Row::try_get(&plan[0], "Extra").unwrap();
    assert!(
        !extra.unwrap_or_default().contains("filesort"),
        "the index gives expiry order"
    );
    // The rest are noticed exactly once.
    assert_eq!(
        coupon_core::expiry::notice_expiring(&pool, now, window, 100)
            .await
            .unwrap(),
        30
    );
    assert_eq!(
        coupon_core::expiry::notice_expiring(&pool, now, window, 100)
            .await
            .unwrap(),
        0
    );
}
