//! Topic creation and the start-up durability check against the real local broker (`make up`:
//! one Apache Kafka broker, `default.replication.factor` and `min.insync.replicas` left at 1),
//! each test on topics of its own.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use coupon_core::config::{ReplicationFactor, StoreConfig};
use coupon_core::store::kafka::{
    self, DurabilityRisk, IssueTopicVerdict, TopicCheckError, ISSUE_TOPIC_CHECK_TIMEOUT,
};
use coupon_core::testing;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

const WAIT: Duration = Duration::from_secs(10);

fn count(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

async fn create_topics(stores: &StoreConfig) -> Result<(), KafkaError> {
    kafka::ensure_topics(stores, stores.kafka.new_topic_replication().unwrap()).await
}

#[tokio::test]
async fn a_topic_created_with_one_replica_is_reported_not_durable_with_the_reason() {
    let mut stores = testing::isolated_stores();
    stores.kafka.topic_replication_factor = ReplicationFactor::Fixed(count(1));
    create_topics(&stores)
        .await
        .expect("the local broker must run on KAFKA_BROKERS (make up)");

    let durability =
        kafka::topic_durability(&stores.kafka.brokers, &stores.kafka.issue_topic, WAIT)
            .await
            .unwrap();
    let verdict = kafka::check_issue_topic(&stores).await;

    assert_eq!(durability.replicas, 1);
    assert!(!durability.is_durable());
    let risks = durability.risks();
    assert_eq!(risks[0], DurabilityRisk::TooFewReplicas { replicas: 1 });
    assert!(risks[0]
        .to_string()
        .contains("give the topic a replication factor of 3"));
    assert_eq!(verdict, IssueTopicVerdict::NotDurable);
}

#[tokio::test]
async fn created_topics_get_the_min_insync_replicas_asked_for() {
    let mut stores = testing::isolated_stores();
    // The broker's replication factor (1 here) with a min.insync.replicas of 2: accepted by
    // the broker, and read back from the topic's own configuration.
    stores.kafka.topic_min_insync_replicas = Some(count(2));
    create_topics(&stores).await.unwrap();

    for topic in [
        &stores.kafka.issue_topic,
        &stores.kafka.dead_letter_topic,
        &stores.kafka.payments_topic,
        &stores.kafka.events_topic,
    ] {
        let durability = kafka::topic_durability(&stores.kafka.brokers, topic, WAIT)
            .await
            .unwrap();

        assert_eq!(durability.min_insync_replicas, 2, "{topic}");
        assert_eq!(
            durability.risks(),
            vec![DurabilityRisk::TooFewReplicas { replicas: 1 }],
            "{topic}"
        );
    }
}

#[tokio::test]
async fn more_replicas_than_brokers_is_refused_by_the_broker() {
    let mut stores = testing::isolated_stores();
    stores.kafka.topic_replication_factor = ReplicationFactor::Fixed(count(3));

    let created = create_topics(&stores).await;

    assert!(
        matches!(
            created,
            Err(KafkaError::AdminOp(
                RDKafkaErrorCode::InvalidReplicationFactor
            ))
        ),
        "{created:?}"
    );
}

#[tokio::test]
async fn checking_a_topic_the_broker_does_not_know_says_so() {
    let stores = testing::isolated_stores();

    let checked = kafka::topic_durability(
        &stores.kafka.brokers,
        &stores.kafka.issue_topic,
        Duration::from_secs(1),
    )
    .await;

    assert!(
        matches!(checked, Err(TopicCheckError::UnknownTopic(_))),
        "{checked:?}"
    );
}

#[tokio::test]
async fn an_unreachable_broker_leaves_the_verdict_unknown_within_the_bound() {
    let mut stores = testing::isolated_stores();
    stores.kafka.brokers = "127.0.0.1:1".into();
    let started = Instant::now();

    let verdict = kafka::check_issue_topic(&stores).await;

    assert_eq!(verdict, IssueTopicVerdict::Unknown);
    assert!(
        started.elapsed() < ISSUE_TOPIC_CHECK_TIMEOUT + Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_service_starting_on_the_local_single_broker_learns_its_issue_topic_is_not_durable() {
    let stores = testing::isolated_stores();

    let connections = coupon_core::store::connect(&stores).await.unwrap();

    assert_eq!(connections.issue_topic, IssueTopicVerdict::NotDurable);
}

#[tokio::test]
async fn start_up_refuses_a_min_insync_replicas_above_the_replication_factor() {
    let mut stores = testing::isolated_stores();
    stores.kafka.topic_replication_factor = ReplicationFactor::Fixed(count(1));
    stores.kafka.topic_min_insync_replicas = Some(count(2));

    let err = coupon_core::store::connect(&stores).await.err().unwrap();

    assert!(
        format!("{err:#}")
            .contains("KAFKA_TOPIC_MIN_INSYNC_REPLICAS=2 exceeds KAFKA_TOPIC_REPLICATION_FACTOR=1"),
        "{err:#}"
    );
}
