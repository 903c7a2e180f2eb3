//! The issue loop: batches of issue messages into rows, dead letters, sold-out broadcasts.

use std::sync::atomic::Ordering;

use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::{Invalidation, RedisKeys, StockShards};
use coupon_core::testing;
use futures::StreamExt;
use uuid::Uuid;

use crate::helpers::{build, issue, run, start, WAIT};

#[tokio::test]
async fn messages_delivered_twice_persist_once_and_count_once() {
    let consumer = start().await;
    let coupon = consumer.coupon(100).await;
    let messages: Vec<_> = (1..=40).map(|u| issue(coupon, u)).collect();

    for message in messages.iter().chain(messages.iter()) {
        consumer.send(message).await;
    }
    consumer.wait_committed(80).await;

    assert_eq!(testing::count_rows(&consumer.pool, coupon.get()).await, 40);
    assert_eq!(consumer.issued_quantity(coupon).await, 40);
    assert_eq!(
        consumer.committed_total(),
        80,
        "every offset committed once durable"
    );
}

#[tokio::test]
async fn poison_messages_land_in_the_dead_letter_topic_with_their_reason() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    let unknown = issue(CouponId::parse(coupon.get() + 10_000).unwrap(), 1);

    consumer.send_raw("junk", b"{not json").await;
    consumer.send(&unknown).await;
    consumer.send(&issue(coupon, 2)).await;
    consumer.wait_committed(3).await;

    let mut reasons = consumer.dead_letters(2).await;
    reasons.sort();
    assert_eq!(reasons[0], ("malformed".to_owned(), b"{not json".to_vec()));
    assert_eq!(reasons[1], ("unknown_coupon".to_owned(), unknown.to_json()));
    assert_eq!(
        testing::count_rows(&consumer.pool, coupon.get()).await,
        1,
        "the good message persisted"
    );
    assert_eq!(consumer.committed_total(), 3);
}

#[tokio::test]
async fn a_mysql_error_commits_no_offset_until_the_batch_persists() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    sqlx::query("RENAME TABLE coupon_issues TO coupon_issues_away")
        .execute(&consumer.pool)
        .await
        .unwrap();

    consumer.send(&issue(coupon, 1)).await;
    testing::eventually("failed attempts", WAIT, || async {
        (consumer.stats.failed_attempts.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;

    assert_eq!(
        consumer.committed_total(),
        0,
        "nothing committed while MySQL fails"
    );
    assert_eq!(consumer.stats.messages_committed.load(Ordering::Relaxed), 0);

    sqlx::query("RENAME TABLE coupon_issues_away TO coupon_issues")
        .execute(&consumer.pool)
        .await
        .unwrap();
    consumer.wait_committed(1).await;
    assert_eq!(testing::count_rows(&consumer.pool, coupon.get()).await, 1);
    assert_eq!(consumer.issued_quantity(coupon).await, 1);
    assert_eq!(consumer.committed_total(), 1);
}

#[tokio::test]
async fn a_killed_mysql_loses_no_message_and_the_backlog_drains_after_it_restarts() {
    let mut mysql = testing::OwnMariaDb::start().await;
    let url = mysql.url(&format!(
        "{}fault_{}",
        testing::TEST_DATABASE_PREFIX,
        Uuid::new_v4().simple()
    ));
    let (built, config) = build(|c| c.stores.mysql.url = url.into()).await;
    let consumer = run(built, config).await;
    let coupon = consumer.coupon(500).await;
    for user in 1..=50 {
        consumer.send(&issue(coupon, user)).await;
    }
    consumer.wait_committed(50).await;

    mysql.stop();
    for user in 51..=150 {
        consumer.send(&issue(coupon, user)).await;
    }
    testing::eventually("failed attempts while MySQL is down", WAIT, || async {
        (consumer.stats.failed_attempts.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    assert_eq!(
        consumer.committed_total(),
        50,
        "an offset moved past what MySQL holds"
    );
    mysql.restart().await;

    consumer.wait_committed(150).await;
    assert_eq!(testing::count_rows(&consumer.pool, coupon.get()).await, 150);
    assert_eq!(consumer.issued_quantity(coupon).await, 150);
    let distinct: i64 =
        sqlx::query_scalar("SELECT COUNT(DISTINCT user_id) FROM coupon_issues WHERE coupon_id = ?")
            .bind(coupon.get())
            .fetch_one(&consumer.pool)
            .await
            .unwrap();
    assert_eq!(distinct, 150);
}

#[tokio::test]
async fn selling_out_broadcasts_an_invalidation() {
    let consumer = start().await;
    let coupon = consumer.coupon(3).await;
    // Any node of a cluster hears a classic PUBLISH; the first seed will do.
    let url = coupon_core::store::redis::node_urls(consumer.stores.redis.url())[0].to_owned();
    let client = redis::Client::open(url).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    let channel = RedisKeys::new(consumer.stores.redis.key_prefix.clone()).invalidation_channel();
    pubsub.subscribe(&channel).await.unwrap();

    for user in 1..=3 {
        consumer.send(&issue(coupon, user)).await;
    }

    let mut messages = pubsub.on_message();
    let message = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("a broadcast")
        .unwrap();
    let payload: String = message.get_payload().unwrap();
    let invalidation: Invalidation = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        invalidation,
        Invalidation::sold_out(StockShards::single(coupon))
    );
}

/// A message whose admission was undone (the API's publish timed out after the broker had
/// written it: a broker killed mid-request, `make chaos` scenario 1) must not become a row:
/// that user heard 503, and the unit belongs to a user who heard 202.
#[tokio::test]
async fn a_message_whose_admission_was_undone_is_dead_lettered_not_persisted() {
    let consumer = start().await;
    let (policy, store) = consumer.prepared_coupon(10).await;
    // Users 1 and 2 are admitted; user 3's admission was undone after its message was written.
    store
        .add_members(StockShards::single(policy.id), &ids(&[1, 2]))
        .await
        .unwrap();
    let messages: Vec<_> = (1..=3).map(|user| issue(policy.id, user)).collect();
    for message in &messages {
        consumer.send(message).await;
    }
    consumer.wait_committed(3).await;

    let mut rows: Vec<i64> = sqlx::query_scalar(
        "SELECT user_id FROM coupon_issues WHERE coupon_id = ? ORDER BY user_id",
    )
    .bind(policy.id.get())
    .fetch_all(&consumer.pool)
    .await
    .unwrap();
    rows.sort_unstable();
    assert_eq!(rows, [1, 2]);
    assert_eq!(consumer.issued_quantity(policy.id).await, 2);

    let letters = consumer.dead_letters(1).await;
    assert_eq!(
        letters,
        [("admission_undone".to_owned(), messages[2].to_json())]
    );
}

/// The same race when the user was admitted again: the first request's publish failed after
/// the broker wrote its message (the user heard 503, the admission was undone), and a later
/// request admitted the user again and is still publishing. The old message must not take that
/// admission: it is dead-lettered, and the later request keeps its own outcome (its undo
/// still removes it; its own message would become the row).
#[tokio::test]
async fn a_message_of_an_undone_admission_does_not_claim_the_users_later_admission() {
    let consumer = start().await;
    let (policy, store) = consumer.prepared_coupon(10).await;
    let shards = StockShards::single(policy.id);
    let old = issue(policy.id, 1);
    let later = Uuid::now_v7();
    store
        .admit(shards, UserId::parse(1).unwrap(), later)
        .await
        .unwrap();
    consumer.send(&old).await;
    consumer.wait_committed(1).await;

    let letters = consumer.dead_letters(1).await;
    assert_eq!(letters, [("admission_undone".to_owned(), old.to_json())]);
    assert_eq!(consumer.issued_quantity(policy.id).await, 0);
    assert!(
        store
            .undo(shards, UserId::parse(1).unwrap(), later)
            .await
            .unwrap(),
        "the later admission is still pending under its own request"
    );
}

/// User ids from integers (test data).
fn ids(raw: &[i64]) -> Vec<UserId> {
    raw.iter().map(|&id| UserId::parse(id).unwrap()).collect()
}
