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
    let topic = consumer.stores.kafka_payments_topic.clone();
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
}
