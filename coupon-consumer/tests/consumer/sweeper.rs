//! The hold sweeper: expired checkout holds are released without a request.

use std::sync::atomic::Ordering;

use chrono::Utc;
use coupon_core::domain::UserId;
use coupon_core::redemption::{self, OrderId};
use coupon_core::testing;

use crate::helpers::{issue, start, WAIT};

#[tokio::test]
async fn the_sweeper_releases_expired_holds_by_itself() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    coupon_core::issue::persistence::persist_batch(&consumer.pool, &[issue(coupon, 1)])
        .await
        .unwrap();
    let id: i64 = sqlx::query_scalar("SELECT id FROM coupon_issues")
        .fetch_one(&consumer.pool)
        .await
        .unwrap();
    let order = OrderId::parse("order-1").unwrap();
    let long_ago = Utc::now() - chrono::Duration::minutes(20);
    redemption::reserve(
        &consumer.pool,
        id,
        UserId::parse(1).unwrap(),
        &order,
        50_000,
        chrono::Duration::minutes(10),
        long_ago,
    )
    .await
    .unwrap();

    testing::eventually("the hold released", WAIT, || async {
        (consumer.stats.holds_released.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;

    let status: String = sqlx::query_scalar("SELECT status FROM coupon_issues")
        .fetch_one(&consumer.pool)
        .await
        .unwrap();
    assert_eq!(status, "ISSUED");
}
