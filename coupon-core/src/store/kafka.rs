//! Kafka clients shared by both services: the `acks=all` idempotent producer, topic set-up,
//! the start-up check that the issue topic survives the loss of a broker, and the issue
//! publisher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use crate::config::{NewTopicReplication, StoreConfig};
use crate::issue::message::IssueMessage;
use crate::telemetry::names;

/// Most messages librdkafka holds in its local queue and in flight (count); its default, set
/// here so the bound is explicit. At 202-only-after-ack, each one is a request waiting.
pub const PRODUCER_QUEUE_MAX_MESSAGES: u32 = 100_000;

/// Client settings of an `acks=all` producer.
///
/// - `enable.idempotence=true`: the producer numbers its messages per partition (producer id
///   and sequence number, KIP-98) and the broker refuses a number it already wrote or one out
///   of order, so a send that librdkafka retries after a lost acknowledgement is written once,
///   not twice, and the messages of one partition stay in the order they were sent even across
///   retries (librdkafka then keeps at most 5 requests in flight per connection and retries
///   without limit within `message.timeout.ms`). Apache
///   Kafka's own producer has it on by default with `acks=all` since 3.0
///   (<https://kafka.apache.org/documentation/#producerconfigs_enable.idempotence>);
///   librdkafka's default is off, hence the setting. It does not cover a message sent again
///   by the application (the reconciliation's re-publish): the consumer's unique key absorbs
///   those;
/// - `acks=all`: the delivery report arrives only once every in-sync replica has the message
///   (how many that is, is the topic's replication and `min.insync.replicas`: see
///   [`check_issue_topic`]);
/// - `message.timeout.ms`: the bound (ms) on one send, retries included, after which the
///   delivery future fails and the caller undoes the admission;
/// - `linger.ms=5`: how long a message may wait for others to share its batch. Chosen against
///   tansu 0.6, the broker of the local stack before Apache Kafka: with the API answering 128
///   connections, figure (b) of `make bench` (`coupon-bench issue --only issue --runs 2`)
///   gave 11,300–11,900 req/s at 2 ms, 12,600–12,700 at 5 and 8,400–8,500 at 10, with the
///   same p99 (22–24 ms) at 2 and 5. Those figures are tansu's, not Kafka's; the setting
///   stays until they are re-measured on Kafka (a later benchmark issue);
/// - `queue.buffering.max.messages`: [`PRODUCER_QUEUE_MAX_MESSAGES`].
pub fn producer_config(brokers: &str, message_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
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

/// Creates the issue, dead-letter, payments and events topics when they are missing (topic
/// already exists is not an error, and an existing topic is left as it is), each with the
/// replication factor and `min.insync.replicas` of `replication`. A broker with
/// `auto.create.topics.enable=false` (the local one, and any careful production cluster)
/// creates no topic on first use.
///
/// # Errors
/// The broker is unreachable, or refused a creation for a reason other than existence (e.g.
/// `InvalidReplicationFactor`: more replicas asked for than there are brokers).
pub async fn ensure_topics(
    stores: &StoreConfig,
    replication: NewTopicReplication,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stores.kafka.brokers)
        .create()?;
    let factor = replication.factor().as_create_topics_value();
    let min_isr = replication.min_insync_replicas().map(|n| n.to_string());
    let topic = |name, partitions| {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(factor));
        match &min_isr {
            Some(min_isr) => topic.set("min.insync.replicas", min_isr),
            None => topic,
        }
    };
    let topics = [
        topic(&stores.kafka.issue_topic, stores.kafka.issue_partitions),
        topic(&stores.kafka.dead_letter_topic, 1),
        topic(&stores.kafka.payments_topic, 3),
        topic(&stores.kafka.events_topic, 3),
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

/// Bound (5 s) on the start-up check of the issue topic ([`check_issue_topic`]): the broker's
/// metadata and the topic's configuration, retries included. A broker that does not answer
/// delays a service's start-up by at most this; the check never stops it.
pub const ISSUE_TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between attempts of [`topic_durability`] while the broker does not know the topic
/// yet (a topic created a moment ago may not be in the answering broker's metadata).
const TOPIC_CHECK_RETRY: Duration = Duration::from_millis(200);

/// What decides whether a message acknowledged with `acks=all` survives the loss of one broker,
/// as the broker reports it for one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDurability {
    /// Replicas (count) of the topic's least replicated partition, from the broker's metadata.
    pub replicas: usize,
    /// The topic's effective `min.insync.replicas` (its own, else the broker's), from
    /// DescribeConfigs.
    pub min_insync_replicas: i32,
    /// The topic's effective `unclean.leader.election.enable`, from DescribeConfigs (false,
    /// Kafka's default, when the broker does not report it).
    pub unclean_leader_election: bool,
}

impl TopicDurability {
    /// Why an acknowledged message of this topic may not survive the loss of one broker;
    /// empty when it does. That takes at least 2 replicas, `min.insync.replicas` of at least
    /// 2 (so an acknowledged message is on two brokers) and no unclean leader election;
    /// docs/scale.md asks for 3 replicas and 2, so that writes also go on while one broker is
    /// missing. (2 replicas with `min.insync.replicas=2` keep every acknowledged message, but
    /// refuse writes while one broker is down: that is availability, not durability, and not
    /// reported.)
    pub fn risks(&self) -> Vec<DurabilityRisk> {
        let mut risks = Vec::new();
        if self.replicas < 2 {
            risks.push(DurabilityRisk::TooFewReplicas {
                replicas: self.replicas,
            });
        }
        if self.min_insync_replicas < 2 {
            risks.push(DurabilityRisk::MinInsyncReplicasBelowTwo {
                min_insync_replicas: self.min_insync_replicas,
            });
        }
        if self.unclean_leader_election {
            risks.push(DurabilityRisk::UncleanLeaderElection);
        }
        risks
    }

    /// Whether every message acknowledged with `acks=all` survives the loss of one broker.
    pub fn is_durable(&self) -> bool {
        self.risks().is_empty()
    }
}

/// A reason why a topic's acknowledged (`acks=all`) messages may not survive the loss of one
/// broker. Its text says what to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityRisk {
    /// Some partition has fewer than 2 replicas: losing the broker that holds its only copy
    /// loses every message it acknowledged.
    TooFewReplicas {
        /// Replicas of the least replicated partition (count).
        replicas: usize,
    },
    /// `min.insync.replicas` below 2: once the other replicas fall behind, `acks=all` is
    /// satisfied by the leader alone, and the leader's loss then loses what it acknowledged.
    MinInsyncReplicasBelowTwo {
        /// The topic's effective `min.insync.replicas`.
        min_insync_replicas: i32,
    },
    /// `unclean.leader.election.enable=true`: a replica that missed acknowledged messages may
    /// be elected leader and drop them.
    UncleanLeaderElection,
}

impl std::fmt::Display for DurabilityRisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooFewReplicas { replicas } => write!(
                f,
                "a partition has {replicas} replica(s): the loss of its broker loses every \
                 message it acknowledged; give the topic a replication factor of 3"
            ),
            Self::MinInsyncReplicasBelowTwo {
                min_insync_replicas,
            } => write!(
                f,
                "min.insync.replicas={min_insync_replicas}: acks=all is satisfied by the \
                 leader alone once the other replicas fall behind, and the leader's loss then \
                 loses what it acknowledged; set min.insync.replicas=2"
            ),
            Self::UncleanLeaderElection => f.write_str(
                "unclean.leader.election.enable=true: a replica that missed acknowledged \
                 messages may become leader and drop them; set it to false",
            ),
        }
    }
}

/// Why [`topic_durability`] could not tell.
#[derive(Debug, thiserror::Error)]
pub enum TopicCheckError {
    /// The broker did not answer in time.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The client could not be built or a request failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The broker's metadata has no partitions of the topic.
    #[error("the broker does not know the topic ({0})")]
    UnknownTopic(String),
    /// DescribeConfigs answered with an error for the topic.
    #[error("describing the topic's configuration failed: {0}")]
    DescribeConfigs(RDKafkaErrorCode),
    /// A configuration the check needs is missing or cannot be read.
    #[error("the broker reports {name}={value:?}, which cannot be read")]
    UnreadableConfig {
        /// The configuration's name.
        name: &'static str,
        /// Its value as reported, if any.
        value: Option<String>,
    },
}

impl TopicCheckError {
    /// Whether the broker answered that it does not know the topic (yet).
    fn is_unknown_topic(&self) -> bool {
        matches!(
            self,
            Self::UnknownTopic(_)
                | Self::DescribeConfigs(RDKafkaErrorCode::UnknownTopicOrPartition)
        )
    }
}

/// Asks the broker at `brokers` how durable `topic` is: the replicas of each partition from
/// its metadata, the effective `min.insync.replicas` and `unclean.leader.election.enable`
/// from DescribeConfigs. While the broker does not know the topic yet (created a moment
/// ago), it asks again every 200 ms; the whole takes at most `timeout`.
///
/// # Errors
/// The broker is unreachable or did not answer within `timeout`, does not know the topic, or
/// reported a configuration that cannot be read ([`TopicCheckError`]).
pub async fn topic_durability(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<TopicDurability, TopicCheckError> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()?,
    );
    let deadline = tokio::time::Instant::now() + timeout;
    // The last "topic unknown" answer: what a check that runs out of time reports.
    let mut unknown = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(left, describe_durability(&admin, topic, left)).await;
        match attempt {
            Ok(Ok(durability)) => return Ok(durability),
            // Retried only while the next attempt still has at least TOPIC_CHECK_RETRY.
            Ok(Err(err)) if err.is_unknown_topic() && left > 2 * TOPIC_CHECK_RETRY => {
                unknown = Some(err);
                tokio::time::sleep(TOPIC_CHECK_RETRY).await;
            }
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(unknown.unwrap_or(TopicCheckError::Timeout(timeout))),
        }
    }
}

/// One attempt of [`topic_durability`], each request bounded by `timeout`.
async fn describe_durability(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
    timeout: Duration,
) -> Result<TopicDurability, TopicCheckError> {
    let metadata_client = Arc::clone(admin);
    let name = topic.to_owned();
    let replicas = tokio::task::spawn_blocking(move || {
        let metadata = metadata_client
            .inner()
            .fetch_metadata(Some(&name), timeout)?;
        let described = metadata.topics().iter().find(|t| t.name() == name);
        match described {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .min()
                .unwrap_or(0)),
            Some(t) => Err(TopicCheckError::UnknownTopic(match t.error() {
                Some(code) => RDKafkaErrorCode::from(code).to_string(),
                None => "no partitions".to_owned(),
            })),
            None => Err(TopicCheckError::UnknownTopic(
                "not in the metadata".to_owned(),
            )),
        }
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await?;
    let config = described
        .into_iter()
        .next()
        .ok_or(TopicCheckError::DescribeConfigs(RDKafkaErrorCode::Fail))?
        .map_err(TopicCheckError::DescribeConfigs)?;
    let value = |name: &str| config.get(name).and_then(|e| e.value.clone());
    let min_isr = value("min.insync.replicas");
    let min_insync_replicas = min_isr.as_deref().and_then(|v| v.parse().ok()).ok_or(
        TopicCheckError::UnreadableConfig {
            name: "min.insync.replicas",
            value: min_isr.clone(),
        },
    )?;
    let unclean = value("unclean.leader.election.enable");
    let unclean_leader_election = match unclean.as_deref() {
        None => false,
        Some(v) => v.parse().map_err(|_| TopicCheckError::UnreadableConfig {
            name: "unclean.leader.election.enable",
            value: unclean.clone(),
        })?,
    };
    Ok(TopicDurability {
        replicas,
        min_insync_replicas,
        unclean_leader_election,
    })
}

/// What the start-up check found about the issue topic: can every 202 survive the loss of
/// one broker? Exported as `coupon_kafka_issue_topic_durable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueTopicVerdict {
    /// At least 2 replicas per partition, `min.insync.replicas` of at least 2, no unclean
    /// leader election.
    Durable,
    /// Not durable; the start-up warning said why and what to set.
    NotDurable,
    /// The check could not run (broker unreachable, topic unknown); the start-up warning
    /// said why. The gauge is then not exported.
    Unknown,
}

impl IssueTopicVerdict {
    /// Sets `coupon_kafka_issue_topic_durable` to 1 (durable) or 0 (not), or nothing when
    /// unknown. Call it at least every minute: the exporter drops a gauge not set for
    /// [`crate::telemetry::GAUGE_IDLE_TIMEOUT`].
    pub fn record(self) {
        let value = match self {
            Self::Durable => 1.0,
            Self::NotDurable => 0.0,
            Self::Unknown => return,
        };
        metrics::gauge!(names::KAFKA_ISSUE_TOPIC_DURABLE).set(value);
    }
}

/// Checks once, at start-up, whether the issue topic of `stores` keeps every message
/// acknowledged with `acks=all` (every 202) across the loss of one broker
/// ([`topic_durability`], bounded by [`ISSUE_TOPIC_CHECK_TIMEOUT`]). When it does not, logs
/// a warning that says why and what to set (replication factor 3, `min.insync.replicas=2`,
/// no unclean leader election); when the check cannot run, a warning that says so. Records
/// `coupon_kafka_issue_topic_durable` and returns the verdict, for the caller to record again
/// periodically ([`IssueTopicVerdict::record`]). Never fails: it informs, it does not stop a
/// start-up.
pub async fn check_issue_topic(stores: &StoreConfig) -> IssueTopicVerdict {
    let topic = &stores.kafka.issue_topic;
    let checked = topic_durability(&stores.kafka.brokers, topic, ISSUE_TOPIC_CHECK_TIMEOUT).await;
    let verdict = match checked {
        Ok(durability) => {
            let risks = durability.risks();
            if risks.is_empty() {
                tracing::info!(
                    %topic,
                    replicas = durability.replicas,
                    min_insync_replicas = durability.min_insync_replicas,
                    "the issue topic keeps acknowledged messages across the loss of one broker"
                );
                IssueTopicVerdict::Durable
            } else {
                let reasons: Vec<String> = risks.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    %topic,
                    replicas = durability.replicas,
                    min_insync_replicas = durability.min_insync_replicas,
                    unclean_leader_election = durability.unclean_leader_election,
                    "the issue topic cannot keep acknowledged messages (202s) across the loss of \
                     one broker: {}. For topics the services create: \
                     KAFKA_TOPIC_REPLICATION_FACTOR=3, KAFKA_TOPIC_MIN_INSYNC_REPLICAS=2; \
                     existing topics: docs/configuration.md, \"The issue topic's durability\"",
                    reasons.join("; ")
                );
                IssueTopicVerdict::NotDurable
            }
        }
        Err(err) => {
            tracing::warn!(
                %topic,
                error = %err,
                "could not check whether the issue topic survives the loss of one broker \
                 (replication factor 3 and min.insync.replicas=2 are needed); starting anyway"
            );
            IssueTopicVerdict::Unknown
        }
    };
    verdict.record();
    verdict
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

    /// Registers the producer's series, then every second until `stop` fires sets
    /// `coupon_kafka_producer_queue_messages` to [`Self::queue_depth`] and records
    /// `issue_topic`, the start-up verdict on the issue topic, again
    /// ([`IssueTopicVerdict::record`]), so the exporter keeps it.
    pub async fn sample_gauges(
        self,
        issue_topic: IssueTopicVerdict,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let _ = metrics::histogram!(names::KAFKA_PRODUCE_DURATION);
        metrics::counter!(names::KAFKA_PRODUCE_ERRORS).increment(0);
        let depth = metrics::gauge!(names::KAFKA_PRODUCER_QUEUE);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {
                    depth.set(f64::from(self.queue_depth()));
                    issue_topic.record();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The risks of a topic with these readings.
    fn durability_risks(
        replicas: usize,
        min_insync_replicas: i32,
        unclean_leader_election: bool,
    ) -> Vec<DurabilityRisk> {
        TopicDurability {
            replicas,
            min_insync_replicas,
            unclean_leader_election,
        }
        .risks()
    }

    #[test]
    fn three_replicas_with_two_in_sync_and_no_unclean_election_are_durable() {
        assert_eq!(durability_risks(3, 2, false), vec![]);
        assert_eq!(durability_risks(2, 2, false), vec![]);
    }

    #[test]
    fn one_replica_is_not_durable_whatever_the_min_insync_replicas() {
        assert_eq!(
            durability_risks(1, 2, false),
            vec![DurabilityRisk::TooFewReplicas { replicas: 1 }]
        );
        assert_eq!(
            durability_risks(1, 1, false),
            vec![
                DurabilityRisk::TooFewReplicas { replicas: 1 },
                DurabilityRisk::MinInsyncReplicasBelowTwo {
                    min_insync_replicas: 1
                },
            ]
        );
    }

    #[test]
    fn three_replicas_with_one_in_sync_are_not_durable() {
        assert_eq!(
            durability_risks(3, 1, false),
            vec![DurabilityRisk::MinInsyncReplicasBelowTwo {
                min_insync_replicas: 1
            }]
        );
    }

    #[test]
    fn unclean_leader_election_is_not_durable_even_with_enough_replicas() {
        assert_eq!(
            durability_risks(3, 2, true),
            vec![DurabilityRisk::UncleanLeaderElection]
        );
        assert_eq!(durability_risks(0, 0, true).len(), 3);
    }

    #[test]
    fn each_reason_says_what_to_set() {
        let text = |risk: DurabilityRisk| risk.to_string();
        assert!(text(DurabilityRisk::TooFewReplicas { replicas: 1 })
            .ends_with("give the topic a replication factor of 3"));
        assert!(text(DurabilityRisk::MinInsyncReplicasBelowTwo {
            min_insync_replicas: 1
        })
        .ends_with("set min.insync.replicas=2"));
        assert!(text(DurabilityRisk::UncleanLeaderElection).ends_with("set it to false"));
    }

    #[test]
    fn the_producer_is_idempotent_and_waits_for_every_in_sync_replica() {
        let config = producer_config("127.0.0.1:9092", Duration::from_secs(5));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("message.timeout.ms"), Some("5000"));
    }
}
