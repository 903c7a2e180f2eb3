//! A consumer on stores of its own, and what the tests send it and read back.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use coupon_consumer::config::ConsumerConfig;
use coupon_consumer::{Application, ConsumerStats};
use coupon_core::config::StoreConfig;
use coupon_core::domain::CouponId;
use coupon_core::issue::message::IssueMessage;
use coupon_core::store::kafka::producer_config;
use coupon_core::{policies, store::db, testing};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::MySqlPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest wait for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    consumer: ConsumerConfig,
}

/// A running consumer and the handles a test needs around it.
pub struct Running {
    pub stores: StoreConfig,
    pub group: String,
    pub pool: MySqlPool,
    pub producer: FutureProducer,
    pub stats: Arc<ConsumerStats>,
    pub stop: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// A consumer on fresh stores, running.
pub async fn start() -> Running {
    let (consumer, config) = build(|_| {}).await;
    run(consumer, config).await
}

/// A consumer on fresh stores (database, topics and group of its own), built but not running:
/// its database and topics exist, so a test can fill them first.
pub async fn build(configure: impl FnOnce(&mut ConsumerConfig)) -> (Application, ConsumerConfig) {
    let mut config = Cli::parse_from(["coupon-consumer", "--metrics-listen", "off"]).consumer;
    config.stores = testing::isolated_stores();
    config.group_id = format!("group-{}", Uuid::new_v4().simple());
    config.retry_max_delay = Duration::from_millis(200);
    configure(&mut config);
    let consumer = Application::build(&config)
        .await
        .expect("building the consumer (is `make up` running?)");
    (consumer, config)
}

/// Runs a built consumer until the test cancels [`Running::stop`].
pub async fn run(consumer: Application, config: ConsumerConfig) -> Running {
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(consumer.run_until_stopped(async move { stopped.cancelled().await }));
    let stores = config.stores.clone();
    Running {
        pool: db::connect(stores.mysql.url(), 4).await.unwrap(),
        producer: producer_config(&stores.kafka.brokers, Duration::from_secs(10))
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
    /// A fresh open policy of `total` units.
    pub async fn coupon(&self, total: i64) -> CouponId {
        self.policy(total).await.id
    }

    /// A fresh open policy of `total` units, as stored.
    async fn policy(&self, total: i64) -> coupon_core::domain::CouponPolicy {
        let mut tx = self.pool.begin().await.unwrap();
        let policy =
            policies::insert_policy(&mut tx, &testing::open_policy(total).try_into().unwrap())
                .await
                .unwrap();
        tx.commit().await.unwrap();
        policy
    }

    /// A fresh open policy of `total` units with its Redis admission state prepared, and the
    /// admission store on this consumer's Redis.
    pub async fn prepared_coupon(
        &self,
        total: i64,
    ) -> (
        coupon_core::domain::CouponPolicy,
        coupon_core::issue::admission::AdmissionStore,
    ) {
        let policy = self.policy(total).await;
        let store = coupon_core::issue::admission::AdmissionStore::new(
            self.stores
                .connect_redis(Duration::from_secs(2))
                .await
                .unwrap(),
            coupon_core::issue::admission::RedisKeys::new(self.stores.redis.key_prefix.clone()),
        );
        store.prepare(&policy).await.unwrap();
        (policy, store)
    }

    /// Sends `payload` to `topic` and waits for the broker's acknowledgement.
    pub async fn send_to(&self, topic: &str, key: &str, payload: &[u8]) {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        self.producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// Sends raw bytes to the issue topic.
    pub async fn send_raw(&self, key: &str, payload: &[u8]) {
        self.send_to(&self.stores.kafka.issue_topic, key, payload)
            .await;
    }

    /// Sends an issue message.
    pub async fn send(&self, message: &IssueMessage) {
        self.send_raw(&message.key(), &message.to_json()).await;
    }

    /// Waits until the group's committed offsets cover `messages` messages: the broker's word
    /// that every one of them is durable (a local counter could count a redelivery twice).
    pub async fn wait_committed(&self, messages: i64) {
        testing::eventually("messages committed", WAIT, || async {
            (self.committed_total() >= messages).then_some(())
        })
        .await;
    }

    /// Offsets the group committed on the issue topic, summed over partitions (0 if none).
    pub fn committed_total(&self) -> i64 {
        self.committed_on(&self.group, &self.stores.kafka.issue_topic)
    }

    /// Offsets `group` committed on `topic`, summed over its partitions (0 if none).
    pub fn committed_on(&self, group: &str, topic: &str) -> i64 {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stores.kafka.brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let metadata = reader
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            partitions.add_partition(topic, partition.id());
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

    /// `coupons.issued_quantity` of `coupon`.
    pub async fn issued_quantity(&self, coupon: CouponId) -> i64 {
        policies::find_policy(&self.pool, coupon)
            .await
            .unwrap()
            .unwrap()
            .issued_quantity
    }

    /// A reader of `topic` from its start, in a group of its own.
    pub fn reader(&self, topic: &str) -> StreamConsumer {
        let reader: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stores.kafka.brokers)
            .set("group.id", format!("reader-{}", Uuid::new_v4().simple()))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        reader.subscribe(&[topic]).unwrap();
        reader
    }

    /// The next `count` dead letters: each one's `x-dead-letter-reason` and payload.
    pub async fn dead_letters(&self, count: usize) -> Vec<(String, Vec<u8>)> {
        let reader = self.reader(&self.stores.kafka.dead_letter_topic);
        let mut letters = Vec::with_capacity(count);
        for _ in 0..count {
            let message = tokio::time::timeout(WAIT, reader.recv())
                .await
                .expect("a dead letter")
                .unwrap();
            letters.push((reason(&message), message.payload().unwrap().to_vec()));
        }
        letters
    }
}

/// The `x-dead-letter-reason` header of a dead letter.
fn reason(message: &BorrowedMessage<'_>) -> String {
    message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "x-dead-letter-reason"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("a reason header")
}

/// An issue message of `user` for `coupon`.
pub fn issue(coupon: CouponId, user: i64) -> IssueMessage {
    testing::issue_message(coupon, user)
}
