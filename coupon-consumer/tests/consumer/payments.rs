//! The payments loop: payment results confirm or release checkout holds.

use std::sync::atomic::Ordering;

use chrono::Utc;
use coupon_core::domain::UserId;
use coupon_core::redemption::{self, OrderId};
use coupon_core::testing;

use crate::helpers::{issue, start, WAIT};

#[tokio::test]
async fn payment_results_confirm_or_release_holds_once_even_when_repeated() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    coupon_core::issue::persistence::persist_batch(
        &consumer.pool,
        &[issue(coupon, 1), issue(coupon, 2)],
    )
    .await
    .unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM coupon_issues ORDER BY user_id")
        .fetch_all(&consumer.pool)
        .await
        .unwrap();
    for (user, id) in [(1, ids[0]), (2, ids[1])] {
        let order = OrderId::parse(&format!("order-{user}")).unwrap();
        let user = UserId::parse(user).unwrap();
        redemption::reserve(
            &consumer.pool,
            id,
            user,
            &order,
            50_000,
            chrono::Duration::minutes(10),
            Utc::now(),
        )
        .await
        .unwrap();
    }
    let topic = consumer.stores.kafka.payments_topic.clone();
    let payments_group = format!("{}-payments", consumer.group);

    for payload in [
        r#"{"order_id": "order-1", "status": "COMPLETED"}"#,
        r#"{"order_id": "order-1", "status": "COMPLETED"}"#,
        r#"{"order_id": "order-2", "status": "FAILED"}"#,
        "{not json",
    ] {
        consumer.send_to(&topic, "k", payload.as_bytes()).await;
    }
    // The broker's word that all four were handled: their offsets are committed.
    testing::eventually("payment results committed", WAIT, || async {
        (consumer.committed_on(&payments_group, &topic) >= 4).then_some(())
    })
    .await;

    let states: Vec<String> =
        sqlx::query_scalar("SELECT status FROM coupon_issues ORDER BY user_id")
            .fetch_all(&consumer.pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        ["USED", "ISSUED"],
        "the order paid and the other released"
    );
    assert_eq!(
        consumer.stats.payments_applied.load(Ordering::Relaxed),
        4,
        "one count per result handled"
    );
    let redemptions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_redemptions")
        .fetch_one(&consumer.pool)
        .await
        .unwrap();
    assert_eq!(redemptions, 1, "the repeated COMPLETED changed nothing");
    let letters = consumer.dead_letters(1).await;
    assert_eq!(letters[0].0, "malformed_payment");
    assert_eq!(letters[0].1, b"{not json");
}

/// Issues a coupon to each of `users` and returns their `coupon_issues.id`s, by user.
async fn issued(consumer: &crate::helpers::Running, users: &[i64]) -> Vec<i64> {
    let coupon = consumer.coupon(10).await;
    let messages: Vec<_> = users.iter().map(|u| issue(coupon, *u)).collect();
    coupon_core::issue::persistence::persist_batch(&consumer.pool, &messages)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT id FROM coupon_issues ORDER BY user_id")
        .fetch_all(&consumer.pool)
        .await
        .unwrap()
}

async fn hold(consumer: &crate::helpers::Running, id: i64, user: i64, order: &str, ago_mins: i64) {
    redemption::reserve(
        &consumer.pool,
        id,
        UserId::parse(user).unwrap(),
        &OrderId::parse(order).unwrap(),
        50_000,
        chrono::Duration::minutes(10),
        Utc::now() - chrono::Duration::minutes(ago_mins),
    )
    .await
    .unwrap();
}

async fn status(consumer: &crate::helpers::Running, id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, CONVERT(order_id USING utf8mb4) FROM coupon_issues WHERE id = ?")
        .bind(id)
        .fetch_one(&consumer.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_payment_after_its_hold_was_released_never_becomes_a_second_discount() {
    let consumer = start().await;
    let ids = issued(&consumer, &[1, 2, 3]).await;
    // Users 1 and 2 held their coupons 20 minutes ago for 10 minutes: the sweeper releases both.
    hold(&consumer, ids[0], 1, "order-1", 20).await;
    hold(&consumer, ids[1], 2, "order-2", 20).await;
    // User 3's payment first failed, then a retry of it went through.
    hold(&consumer, ids[2], 3, "order-3", 0).await;
    testing::eventually("both expired holds released", WAIT, || async {
        (consumer.stats.holds_released.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    // User 2's coupon, free again, is used for another order before order-2's payment arrives.
    let now = Utc::now();
    let user2 = UserId::parse(2).unwrap();
    let other = OrderId::parse("order-2b").unwrap();
    redemption::redeem(&consumer.pool, ids[1], user2, &other, 40_000, now)
        .await
        .unwrap();

    let topic = consumer.stores.kafka.payments_topic.clone();
    for payload in [
        r#"{"order_id": "order-1", "status": "COMPLETED"}"#,
        r#"{"order_id": "order-2", "status": "COMPLETED"}"#,
        r#"{"order_id": "order-3", "status": "FAILED"}"#,
        r#"{"order_id": "order-3", "status": "COMPLETED"}"#,
    ] {
        consumer.send_to(&topic, "k", payload.as_bytes()).await;
    }
    let payments_group = format!("{}-payments", consumer.group);
    testing::eventually("payment results committed", WAIT, || async {
        (consumer.committed_on(&payments_group, &topic) >= 4).then_some(())
    })
    .await;

    // Order 1 was paid after the release and its coupon was still free: it is used by order 1,
    // so the order service cannot use it for another order.
    assert_eq!(
        status(&consumer, ids[0]).await,
        ("USED".into(), Some("order-1".into()))
    );
    let again = redemption::redeem(
        &consumer.pool,
        ids[0],
        UserId::parse(1).unwrap(),
        &OrderId::parse("order-1b").unwrap(),
        40_000,
        Utc::now(),
    )
    .await;
    assert!(
        matches!(again, Err(redemption::RedeemError::AlreadyUsed)),
        "{again:?}"
    );
    // Order 2 was paid after its coupon went to order 2b: dead-lettered, never a second use.
    assert_eq!(
        status(&consumer, ids[1]).await,
        ("USED".into(), Some("order-2b".into()))
    );
    let letters = consumer.dead_letters(1).await;
    assert_eq!(letters[0].0, "payment_after_release");
    assert!(String::from_utf8_lossy(&letters[0].1).contains("order-2"));
    // Order 3: FAILED released the hold, the retried COMPLETED confirmed it.
    assert_eq!(
        status(&consumer, ids[2]).await,
        ("USED".into(), Some("order-3".into()))
    );
    let redemptions: Vec<(i64, String)> = sqlx::query_as(
        "SELECT coupon_issue_id, CONVERT(order_id USING utf8mb4) FROM coupon_redemptions \
         ORDER BY coupon_issue_id",
    )
    .fetch_all(&consumer.pool)
    .await
    .unwrap();
    assert_eq!(
        redemptions,
        [
            (ids[0], "order-1".to_owned()),
            (ids[1], "order-2b".to_owned()),
            (ids[2], "order-3".to_owned())
        ],
        "one discount per coupon"
    );
}
