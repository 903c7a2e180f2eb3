//! The outbox relay: events reach the events topic, after a drop's backlog.

use std::sync::atomic::Ordering;
use std::time::Duration;

use coupon_core::store::kafka::producer_config;
use coupon_core::{policies, store::db, testing};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use uuid::Uuid;

use crate::helpers::{build, issue, run, start, WAIT};

#[tokio::test]
async fn issued_coupons_are_announced_on_the_events_topic() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    for user in 1..=3 {
        consumer.send(&issue(coupon, user)).await;
    }
    testing::eventually("events published", WAIT, || async {
        (consumer.stats.events_published.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &consumer.stores.kafka.brokers)
        .set(
            "group.id",
            format!("events-reader-{}", Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&consumer.stores.kafka.events_topic])
        .unwrap();
    let mut users = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(WAIT, reader.recv())
            .await
            .expect("an event")
            .unwrap();
        let event: coupon_core::events::CouponEvent =
            serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(event.event_type, coupon_core::events::EventType::Issued);
        assert_eq!(event.coupon_id, coupon.get());
        assert_eq!(
            message.key(),
            Some(event.coupon_issue_id.to_string().as_bytes())
        );
        users.push(event.user_id);
    }
    users.sort_unstable();
    assert_eq!(users, vec![1, 2, 3]);
    let unpublished: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM coupon_events WHERE published_at IS NULL")
            .fetch_one(&consumer.pool)
            .await
            .unwrap();
    assert_eq!(unpublished, 0);
}

#[tokio::test]
async fn the_event_relay_waits_until_the_issue_backlog_is_persisted() {
    // 300 issue messages wait in the topic before the consumer starts: 30 full batches of 10.
    let (consumer, config) = build(|config| {
        config.batch_max_messages = 10;
        config.relay_interval = Duration::from_millis(20);
        config.relay_max_defer = Duration::from_millis(60_000);
    })
    .await;
    let pool = db::connect(config.stores.mysql.url(), 2).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let coupon = policies::insert_policy(&mut tx, &testing::open_policy(300).try_into().unwrap())
        .await
        .unwrap()
        .id;
    tx.commit().await.unwrap();
    let producer: FutureProducer = producer_config(&config.stores.kafka.brokers, WAIT)
        .create()
        .unwrap();
    let sends = (1..=300).map(|user| {
        let message = issue(coupon, user);
        let (key, payload) = (message.key(), message.to_json());
        let producer = producer.clone();
        let topic = config.stores.kafka.issue_topic.clone();
        async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer.send(record, Timeout::Never).await.map(drop)
        }
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(e, _)| e).unwrap();
    }

    let consumer = run(consumer, config).await;
    testing::eventually("the backlog persisted", WAIT, || async {
        (consumer.stats.messages_committed.load(Ordering::Relaxed) >= 300).then_some(())
    })
    .await;
    // The relay yielded to the backlog: its ISSUED events were all still in the outbox.
    assert_eq!(consumer.stats.events_published.load(Ordering::Relaxed), 0);

    // A second after the last full batch it relays them all.
    testing::eventually("the events relayed", WAIT, || async {
        (consumer.stats.events_published.load(Ordering::Relaxed) >= 300).then_some(())
    })
    .await;
}
