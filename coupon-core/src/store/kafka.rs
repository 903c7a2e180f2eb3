//! Kafka clients shared by both services: the `acks=all` producer, topic set-up and the issue
//! publisher.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use crate::config::StoreConfig;
use crate::issue::message::IssueMessage;
use crate::telemetry::names;

/// Most messages librdkafka holds in its local queue and in flight (count); its default, set
/// here so the bound is explicit. At 202-only-after-ack, each one is a request waiting.
pub const PRODUCER_QUEUE_MAX_MESSAGES: u32 = 100_000;

/// Client settings of an `acks=all` producer.
///
/// - `enable.idempotence=false`: a send that librdkafka retries after a lost acknowledgement
///   may be written twice. That is harmless here: a duplicate issue message is one more
///   delivery of the same `(coupon, user)`, which the consumer's unique key absorbs, and
///   nothing depends on message order. Idempotence
///   (<https://kafka.apache.org/documentation/#producerconfigs_enable.idempotence>) was on
///   until `make chaos` restarted tansu 0.6 under it: the restarted broker panicked in its
///   idempotent-producer check (`tansu_storage::lite`, "more or less than one row") on the
///   first retried send, and from then on failed every produce;
/// - `acks=all`: the delivery report arrives only once every in-sync replica has the message;
/// - `message.timeout.ms`: the bound (ms) on one send, retries included, after which the
///   delivery future fails and the caller undoes the admission;
/// - `linger.ms=5`: how long a message may wait for others to share its batch. With the API
///   answering 128 connections against tansu, figure (b) of `make bench`
///   (`coupon-bench issue --only issue --runs 2`) gave 11,300–11,900 req/s at 2 ms,
///   12,600–12,700 at 5 and 8,400–8,500 at 10, with the same p99 (22–24 ms) at 2 and 5;
/// - `queue.buffering.max.messages`: [`PRODUCER_QUEUE_MAX_MESSAGES`].
pub fn producer_config(brokers: &str, message_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        .set("socket.connection.setup.timeout.ms", "3000")
        .set(
            "queue.buffering.max.messages",
            PRODUCER_QUEUE_MAX_MESSAGES.to_string(),
        );
    config
}

/// Creates the issue, dead-letter, payments and events topics when they are missing (topic already exists is not
/// an error). Some brokers (tansu, Kafka with `auto.create.topics.enable=false`) create no topic
/// on first use.
///
/// # Errors
/// The broker is unreachable, or refused a creation for a reason other than existence.
pub async fn ensure_topics(stores: &StoreConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stores.kafka_brokers)
        .create()?;
    let topics = [
        NewTopic::new(
            &stores.kafka_issue_topic,
            stores.kafka_issue_partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &stores.kafka_dead_letter_topic,
            1,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(&stores.kafka_payments_topic, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&stores.kafka_events_topic, 3, TopicReplication::Fixed(1)),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "topic creation failed");
                })
            }
        }
    }
    Ok(())
}

/// Publishes issue messages and waits for the broker's acknowledgement.
///
/// Cloning is cheap (the producer is reference-counted); concurrent `publish` calls pipeline
/// over the same connections, so the hot path never waits on another request's send.
#[derive(Clone)]
pub struct IssuePublisher {
    producer: FutureProducer,
    topic: String,
    /// Longest wait for room in librdkafka's local queue (the message timeout).
    queue_timeout: Duration,
}

impl IssuePublisher {
    /// Builds the producer of [`producer_config`] for `topic`.
    ///
    /// # Errors
    /// librdkafka refused the configuration.
    pub fn new(brokers: &str, topic: &str, message_timeout: Duration) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: producer_config(brokers, message_timeout).create()?,
            topic: topic.to_owned(),
            queue_timeout: message_timeout,
        })
    }

    /// Sends `message` keyed by [`IssueMessage::key`] and resolves once the broker acknowledged
    /// it (`acks=all`), or failed to within `message.timeout.ms`. Records the wait in
    /// `coupon_kafka_produce_duration_seconds` and a failure in
    /// `coupon_kafka_produce_errors_total`.
    ///
    /// A full local queue ([`PRODUCER_QUEUE_MAX_MESSAGES`]) is waited on for at most the message
    /// timeout, then the send fails (`QueueFull`): a broker outage never piles up an unbounded
    /// backlog of admitted requests.
    ///
    /// # Errors
    /// The message was not acknowledged: the caller must treat it as not sent.
    pub async fn publish(&self, message: &IssueMessage) -> Result<(), KafkaError> {
        let key = message.key();
        let payload = message.to_json();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        let started = Instant::now();
        let sent = self
            .producer
            .send(record, Timeout::After(self.queue_timeout))
            .await
            .map(drop)
            .map_err(|(err, _)| err);
        metrics::histogram!(names::KAFKA_PRODUCE_DURATION).record(started.elapsed());
        if sent.is_err() {
            metrics::counter!(names::KAFKA_PRODUCE_ERRORS).increment(1);
        }
        sent
    }

    /// Messages in librdkafka's queue or in flight to the broker (count).
    pub fn queue_depth(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Registers the producer's series, then sets `coupon_kafka_producer_queue_messages` to
    /// [`Self::queue_depth`] every second until `stop` fires.
    pub async fn sample_queue_depth(self, stop: tokio_util::sync::CancellationToken) {
        let _ = metrics::histogram!(names::KAFKA_PRODUCE_DURATION);
        metrics::counter!(names::KAFKA_PRODUCE_ERRORS).increment(0);
        let depth = metrics::gauge!(names::KAFKA_PRODUCER_QUEUE);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => depth.set(f64::from(self.queue_depth())),
            }
        }
    }

    /// Asks the broker for the topic's metadata, for readiness checks.
    ///
    /// # Errors
    /// The broker did not answer within `timeout`.
    pub async fn check_broker(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(drop)
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// Waits up to `timeout` for messages still in flight, at shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.producer.flush(timeout) {
            tracing::warn!(%err, "producer flush at shutdown did not complete");
        }
    }
}
