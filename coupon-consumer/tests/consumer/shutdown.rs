//! Stopping: the work in hand finishes, within the grace period, and the member leaves its groups.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use coupon_core::testing;

use crate::helpers::{build, issue, run, start, Running, WAIT};

#[tokio::test]
async fn shutdown_finishes_and_leaves_the_group() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    consumer.send(&issue(coupon, 1)).await;
    consumer.wait_committed(1).await;

    consumer.stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), consumer.task).await;

    assert!(result.expect("stops within 30 s").expect("task").is_ok());
}

/// Renames the issue table away, so every persist attempt fails until [`put_back`].
async fn take_table_away(consumer: &Running) {
    sqlx::query("RENAME TABLE coupon_issues TO coupon_issues_away")
        .execute(&consumer.pool)
        .await
        .unwrap();
}

async fn put_back(consumer: &Running) {
    sqlx::query("RENAME TABLE coupon_issues_away TO coupon_issues")
        .execute(&consumer.pool)
        .await
        .unwrap();
}

async fn wait_failing(consumer: &Running) {
    testing::eventually("a failed persist attempt", WAIT, || async {
        (consumer.stats.failed_attempts.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_batch_in_hand_when_the_stop_comes_is_still_persisted_and_committed() {
    let mut consumer = start().await;
    let coupon = consumer.coupon(10).await;
    take_table_away(&consumer).await;
    consumer.send(&issue(coupon, 1)).await;
    wait_failing(&consumer).await;

    consumer.stop.cancel();
    let failed_before = consumer.stats.failed_attempts.load(Ordering::Relaxed);
    testing::eventually("retries after the stop", WAIT, || async {
        (consumer.stats.failed_attempts.load(Ordering::Relaxed) > failed_before).then_some(())
    })
    .await;
    put_back(&consumer).await;
    let result = tokio::time::timeout(Duration::from_secs(30), &mut consumer.task).await;

    assert!(result.expect("stops within 30 s").expect("task").is_ok());
    assert_eq!(testing::count_rows(&consumer.pool, coupon.get()).await, 1);
    let committed = consumer.committed_on(&consumer.group, &consumer.stores.kafka.issue_topic);
    assert_eq!(
        committed, 1,
        "the batch in hand was committed before the exit"
    );
}

#[tokio::test]
async fn a_batch_still_failing_when_the_grace_period_ends_is_left_uncommitted() {
    let (built, config) = build(|c| c.shutdown_grace = Duration::from_millis(1_000)).await;
    let mut consumer = run(built, config).await;
    let coupon = consumer.coupon(10).await;
    take_table_away(&consumer).await;
    consumer.send(&issue(coupon, 1)).await;
    wait_failing(&consumer).await;

    let stopped_at = Instant::now();
    consumer.stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), &mut consumer.task).await;
    let took = stopped_at.elapsed();

    assert!(result.expect("stops within 30 s").expect("task").is_ok());
    assert!(
        took >= Duration::from_millis(900),
        "gave up before the grace period ended ({took:?})"
    );
    assert_eq!(
        consumer.committed_total(),
        0,
        "nothing committed past MySQL"
    );
    assert_eq!(consumer.stats.messages_committed.load(Ordering::Relaxed), 0);
}
