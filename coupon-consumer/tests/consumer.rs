//! coupon-consumer against a real Kafka-protocol broker, MySQL/MariaDB and Redis.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use coupon_consumer::config::ConsumerConfig;
use coupon_consumer::{ConsumerStats, IssueConsumer};
use coupon_core::admission::{Invalidation, InvalidationReason, RedisKeys};
use coupon_core::config::StoreConfig;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::kafka::producer_config;
use coupon_core::message::IssueMessage;
use coupon_core::redemption::{self, OrderId};
use coupon_core::{db, repository, testing};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::MySqlPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    consumer: ConsumerConfig,
}

struct Running {
    stores: StoreConfig,
    group: String,
    pool: MySqlPool,
    producer: FutureProducer,
    stats: Arc<ConsumerStats>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Running {
    let (consumer, config) = build(|_| {}).await;
    run(consumer, config).await
}

/// A consumer on fresh stores (database, topics and group of its own), built but not running:
/// its database and topics exist, so a test can fill them first.
async fn build(configure: impl FnOnce(&mut ConsumerConfig)) -> (IssueConsumer, ConsumerConfig) {
    let mut config = Cli::parse_from(["coupon-consumer", "--metrics-listen", "off"]).consumer;
    config.stores = testing::isolated_stores();
    config.group_id = format!("group-{}", Uuid::new_v4().simple());
    config.retry_max_delay_ms = 200;
    configure(&mut config);
    let consumer = IssueConsumer::build(&config)
        .await
        .expect("building the consumer (is `make up` running?)");
    (consumer, config)
}

async fn run(consumer: IssueConsumer, config: ConsumerConfig) -> Running {
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(consumer.run_until_stopped(async move { stopped.cancelled().await }));
    let stores = config.stores.clone();
    Running {
        pool: db::connect(stores.database_url(), 4).await.unwrap(),
        producer: producer_config(&stores.kafka_brokers, Duration::from_secs(10))
            .create()
            .unwrap(),
        group: config.group_id,
        stores,
        stats,
        stop,
        task,
    }
}

impl Running {
    async fn coupon(&self, total: i64) -> CouponId {
        let mut tx = self.pool.begin().await.unwrap();
        let policy = repository::insert_policy(&mut tx, &testing::open_policy(total))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        policy.id
    }

    async fn send_raw(&self, key: &str, payload: &[u8]) {
        let record = FutureRecord::to(&self.stores.kafka_issue_topic)
            .key(key)
            .payload(payload);
        self.producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    async fn send(&self, message: &IssueMessage) {
        self.send_raw(&message.key(), &message.to_json()).await;
    }

    /// Waits until the group's committed offsets cover `messages` messages: the broker's word
    /// that every one of them is durable (a local counter could count a redelivery twice).
    async fn wait_committed(&self, messages: i64) {
        testing::eventually("messages committed", WAIT, || async {
            (self.committed_total() >= messages).then_some(())
        })
        .await;
    }

    /// Offsets the group committed on the issue topic, summed over partitions (0 if none).
    fn committed_total(&self) -> i64 {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stores.kafka_brokers)
            .set("group.id", &self.group)
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        for p in 0..self.stores.kafka_issue_partitions {
            partitions.add_partition(&self.stores.kafka_issue_topic, p);
        }
        let committed = reader
            .committed_offsets(partitions, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }

    async fn issued_quantity(&self, coupon: CouponId) -> i64 {
        repository::find_policy(&self.pool, coupon)
            .await
            .unwrap()
            .unwrap()
            .issued_quantity
    }
}

fn issue(coupon: CouponId, user: i64) -> IssueMessage {
    testing::issue_message(coupon, user)
}

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

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &consumer.stores.kafka_brokers)
        .set(
            "group.id",
            format!("dlq-reader-{}", Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&consumer.stores.kafka_dead_letter_topic])
        .unwrap();
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(WAIT, reader.recv())
            .await
            .expect("a dead letter")
            .unwrap();
        let headers = message.headers().expect("dead letters carry headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "x-dead-letter-reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("a reason header");
        reasons.push((reason, message.payload().unwrap().to_vec()));
    }
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
    let (built, config) = build(|c| c.stores.database_url = url.into()).await;
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
    let client = redis::Client::open(consumer.stores.redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    let channel = RedisKeys::new(consumer.stores.redis_key_prefix.clone()).invalidation_channel();
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
        Invalidation {
            coupon_id: coupon,
            reason: InvalidationReason::SoldOut
        }
    );
}

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

#[tokio::test]
async fn payment_results_confirm_or_release_holds_once_even_when_repeated() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    repository::persist_batch(&consumer.pool, &[issue(coupon, 1), issue(coupon, 2)])
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
    let consumer = &consumer;
    let send = |payload: &'static str| async move {
        let record = FutureRecord::to(&consumer.stores.kafka_payments_topic)
            .key("k")
            .payload(payload);
        consumer
            .producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    };

    send(r#"{"order_id": "order-1", "status": "COMPLETED"}"#).await;
    send(r#"{"order_id": "order-1", "status": "COMPLETED"}"#).await;
    send(r#"{"order_id": "order-2", "status": "FAILED"}"#).await;
    send("{not json").await;
    // Wait for the effect, then for every message to be handled: a redelivery (a commit lost
    // in a rebalance) may count a message twice, which is exactly what must change nothing.
    let expected = vec!["USED".to_owned(), "ISSUED".to_owned()];
    testing::eventually("the order paid and the other released", WAIT, || async {
        let states: Vec<String> =
            sqlx::query_scalar("SELECT status FROM coupon_issues ORDER BY user_id")
                .fetch_all(&consumer.pool)
                .await
                .unwrap();
        (states == expected).then_some(())
    })
    .await;
    testing::eventually("payment results applied", WAIT, || async {
        (consumer.stats.payments_applied.load(Ordering::Relaxed) >= 4).then_some(())
    })
    .await;

    let redemptions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_redemptions")
        .fetch_one(&consumer.pool)
        .await
        .unwrap();
    assert_eq!(redemptions, 1, "the repeated COMPLETED changed nothing");
}

#[tokio::test]
async fn the_sweeper_releases_expired_holds_by_itself() {
    let consumer = start().await;
    let coupon = consumer.coupon(10).await;
    repository::persist_batch(&consumer.pool, &[issue(coupon, 1)])
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
        .set("bootstrap.servers", &consumer.stores.kafka_brokers)
        .set(
            "group.id",
            format!("events-reader-{}", Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&consumer.stores.kafka_events_topic])
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
        config.relay_interval_ms = 20;
        config.relay_max_defer_ms = 60_000;
    })
    .await;
    let pool = db::connect(config.stores.database_url(), 2).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let coupon = repository::insert_policy(&mut tx, &testing::open_policy(300))
        .await
        .unwrap()
        .id;
    tx.commit().await.unwrap();
    let producer: FutureProducer = producer_config(&config.stores.kafka_brokers, WAIT)
        .create()
        .unwrap();
    let sends = (1..=300).map(|user| {
        let message = issue(coupon, user);
        let (key, payload) = (message.key(), message.to_json());
        let producer = producer.clone();
        let topic = config.stores.kafka_issue_topic.clone();
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

/// A message whose admission was undone (the API's publish timed out after the broker had
/// written it: a broker killed mid-request, `make chaos` scenario 1) must not become a row:
/// that user heard 503, and the unit belongs to a user who heard 202.
#[tokio::test]
async fn a_message_whose_admission_was_undone_is_dead_lettered_not_persisted() {
    use coupon_core::admission::{self, AdmissionStore};

    let consumer = start().await;
    let mut tx = consumer.pool.begin().await.unwrap();
    let policy = repository::insert_policy(&mut tx, &testing::open_policy(10))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let store = AdmissionStore::new(
        admission::connect(consumer.stores.redis_url(), Duration::from_secs(2))
            .await
            .unwrap(),
        RedisKeys::new(consumer.stores.redis_key_prefix.clone()),
    );
    store.prepare(&policy).await.unwrap();
    // Users 1 and 2 are admitted; user 3's admission was undone after its message was written.
    store.add_members(policy.id, &[1, 2]).await.unwrap();
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

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &consumer.stores.kafka_brokers)
        .set(
            "group.id",
            format!("dlq-reader-{}", Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&consumer.stores.kafka_dead_letter_topic])
        .unwrap();
    let message = tokio::time::timeout(WAIT, reader.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    let reason = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "x-dead-letter-reason"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(reason.as_deref(), Some("admission_undone"));
    assert_eq!(message.payload().unwrap(), messages[2].to_json());
}
