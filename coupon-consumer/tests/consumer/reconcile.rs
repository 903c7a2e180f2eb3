//! The periodic reconciliation: an admission whose message never reached the broker is
//! repaired without an operator, by one instance at a time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use coupon_core::domain::UserId;
use coupon_core::issue::admission::StockShards;
use coupon_core::testing;
use uuid::Uuid;

use crate::helpers::{build, run, WAIT};

#[tokio::test]
async fn an_admission_whose_message_was_lost_is_republished_by_the_consumer_itself() {
    let (consumer, config) = build(|config| {
        config.reconcile_interval = Some(Duration::from_millis(300));
        config.reconcile_grace = Some(Duration::from_millis(200));
    })
    .await;
    let consumer = run(consumer, config).await;
    let (policy, store) = consumer.prepared_coupon(10).await;

    // Another instance is reconciling: this one skips its turns meanwhile.
    let mut holder = consumer.pool.acquire().await.unwrap().detach();
    let taken: Option<i64> = sqlx::query_scalar(coupon_consumer::reconcile::TAKE_LOCK)
        .bind(coupon_consumer::reconcile::LOCK_PREFIX)
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert_eq!(taken, Some(1));

    // User 7 was admitted (and answered 202 by an API whose publish went nowhere): a slot
    // held without a message.
    let admitted = store
        .admit(
            StockShards::single(policy.id),
            UserId::parse(7).unwrap(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    assert_eq!(
        admitted,
        coupon_core::issue::admission::AdmitOutcome::Admitted
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        testing::count_rows(&consumer.pool, policy.id.get()).await,
        0,
        "no pass ran while another instance held the lock"
    );
    assert_eq!(
        consumer
            .stats
            .reconciliation_repairs
            .load(Ordering::Relaxed),
        0
    );

    sqlx::Connection::close(holder).await.unwrap();
    testing::eventually("the lost admission persisted", WAIT, || async {
        (testing::count_rows(&consumer.pool, policy.id.get()).await == 1).then_some(())
    })
    .await;
    assert_eq!(consumer.issued_quantity(policy.id).await, 1);
    assert!(
        consumer
            .stats
            .reconciliation_repairs
            .load(Ordering::Relaxed)
            >= 1
    );
    let holder: i64 = sqlx::query_scalar("SELECT user_id FROM coupon_issues WHERE coupon_id = ?")
        .bind(policy.id.get())
        .fetch_one(&consumer.pool)
        .await
        .unwrap();
    assert_eq!(holder, 7);
    consumer.stop.cancel();
}
