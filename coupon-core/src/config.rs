//! Typed configuration shared by both services.
//!
//! Every field is read from a command-line flag or, failing that, from the environment variable
//! named beside it; the defaults point at the local stack that `make up` starts. The doc comment
//! of each field is its `--help` text.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::store::redis::RedisMode;

/// Connections to the three stores every service talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// MySQL/MariaDB URL, e.g. `mysql://user:password@host:3306/coupon`. With
    /// `MIGRATE_ON_START`, the database is created on start-up when it does not exist. Kept
    /// secret: it may hold a password.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://coupon:coupon@127.0.0.1:3306/coupon"
    )]
    pub database_url: SecretString,

    /// Create the database when missing and apply the migrations at start-up (the user of
    /// `DATABASE_URL` then needs DDL rights). `false`: only check that every migration of this
    /// build was applied (by `coupon-api migrate`, run with a DDL-capable user), and refuse
    /// to start otherwise, so the runtime user needs only `SELECT, INSERT, UPDATE, DELETE`.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Largest number of pooled MySQL connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`; with `REDIS_MODE=cluster`, one or more seed
    /// nodes of the cluster, comma-separated. Kept secret: it may hold a password.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: SecretString,

    /// What `REDIS_URL` names: `single` (one node) or `cluster` (a Redis Cluster).
    #[arg(long, env = "REDIS_MODE", value_enum, default_value_t = RedisMode::Single)]
    pub redis_mode: RedisMode,

    /// Replicas (count) that must acknowledge an admission before coupon-api answers 202
    /// (`WAIT`, see `docs/scale.md`); 0 does not wait. With 1 on a cluster of one replica per
    /// master, an admission survives the loss of its master. An admission not acknowledged
    /// within `REDIS_WAIT_TIMEOUT_MS` is undone and answered 503.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Longest wait (ms) for `REDIS_WAIT_REPLICAS` acknowledgements of one admission.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 200)]
    pub redis_wait_timeout_ms: u64,

    /// Prefix put before every Redis key and channel, so several deployments (or test runs) can
    /// share one Redis. Empty in production.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,

    /// Upper bound on one Redis command, in milliseconds. Past it the request fails closed (503).
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,

    /// Kafka bootstrap servers, comma-separated `host:port` pairs.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Topic that carries issue messages from coupon-api to coupon-consumer.
    #[arg(long, env = "KAFKA_ISSUE_TOPIC", default_value = "coupon-issues")]
    pub kafka_issue_topic: String,

    /// Dead-letter topic for issue messages that can never be persisted.
    #[arg(
        long,
        env = "KAFKA_DEAD_LETTER_TOPIC",
        default_value = "coupon-issues-dlq"
    )]
    pub kafka_dead_letter_topic: String,

    /// Topic of payment results (`{"order_id": "...", "status": "COMPLETED" | "FAILED"}`) that
    /// confirm or release checkout holds.
    #[arg(long, env = "KAFKA_PAYMENTS_TOPIC", default_value = "payments")]
    pub kafka_payments_topic: String,

    /// Topic of coupon events (ISSUED, RESERVED, USED, RELEASED, EXPIRING_SOON, EXPIRED) for
    /// notification services.
    #[arg(long, env = "KAFKA_EVENTS_TOPIC", default_value = "coupon.events")]
    pub kafka_events_topic: String,

    /// Partitions of the issue topic when a service has to create it (count).
    #[arg(long, env = "KAFKA_ISSUE_PARTITIONS", default_value_t = 12)]
    pub kafka_issue_partitions: i32,

    /// Upper bound (ms) on one Kafka send, librdkafka's retries included. Past it the admission
    /// is undone and the client is answered 503.
    #[arg(long, env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 5000)]
    pub kafka_message_timeout_ms: u64,

    /// Create the issue, dead-letter, payments and events topics on start-up when they are
    /// missing (an existing topic is left as it is).
    #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_create_topics: bool,

    /// Replicas of each partition (count) of the topics a service creates, or `-1` (also
    /// `default`) for the broker's `default.replication.factor` (CreateTopics with -1,
    /// KIP-464, Kafka 2.4+). The default is -1 so that the broker decides: a production
    /// cluster configured with `default.replication.factor=3` gets 3, and the local single
    /// broker (`make up`) gets 1, where a fixed 3 would make every creation fail
    /// (`INVALID_REPLICATION_FACTOR`: more replicas than brokers). A 202 survives the loss of
    /// a broker only with 3 (docs/scale.md); each service warns at start-up when its issue
    /// topic has fewer than 2 (`coupon_kafka_issue_topic_durable`). Existing topics are not
    /// changed.
    #[arg(
        long,
        env = "KAFKA_TOPIC_REPLICATION_FACTOR",
        default_value = "-1",
        allow_hyphen_values = true,
        value_parser = parse_replication_factor
    )]
    pub kafka_topic_replication_factor: ReplicationFactor,

    /// `min.insync.replicas` (count, at least 1) of the topics a service creates: how many
    /// replicas must hold a message before an `acks=all` send is acknowledged. Unset: the
    /// topic takes the broker's `min.insync.replicas` (1 unless the cluster sets it), so a
    /// cluster configured with 2 gets 2 and the local single broker keeps accepting writes; a
    /// fixed 2 on one broker would refuse every send (`NOT_ENOUGH_REPLICAS`). Set 2 with a
    /// replication factor of 3 (docs/scale.md); it may not exceed
    /// `KAFKA_TOPIC_REPLICATION_FACTOR` when that is a count. Existing topics are not changed.
    #[arg(
        long,
        env = "KAFKA_TOPIC_MIN_INSYNC_REPLICAS",
        value_parser = parse_replica_count
    )]
    pub kafka_topic_min_insync_replicas: Option<NonZeroU16>,
}

/// Replication factor of a topic a service creates
/// ([`StoreConfig::kafka_topic_replication_factor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationFactor {
    /// The broker's `default.replication.factor` (`-1` in CreateTopics, KIP-464).
    BrokerDefault,
    /// This many replicas of each partition; at most `i16::MAX` (the protocol's field is an
    /// INT16).
    Fixed(NonZeroU16),
}

impl ReplicationFactor {
    /// The value CreateTopics carries: the count, or -1 for the broker's default.
    pub fn as_create_topics_value(self) -> i32 {
        match self {
            Self::BrokerDefault => -1,
            Self::Fixed(count) => i32::from(count.get()),
        }
    }
}

impl std::fmt::Display for ReplicationFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BrokerDefault => f.write_str("-1 (the broker's default.replication.factor)"),
            Self::Fixed(count) => write!(f, "{count}"),
        }
    }
}

/// Parses `KAFKA_TOPIC_REPLICATION_FACTOR`: `-1` or `default` for the broker's default, else a
/// count of replicas.
///
/// # Errors
/// Anything else: 0, a negative number other than -1, text, or more than `i16::MAX`.
pub fn parse_replication_factor(text: &str) -> Result<ReplicationFactor, String> {
    let text = text.trim();
    if text == "-1" || text.eq_ignore_ascii_case("default") {
        return Ok(ReplicationFactor::BrokerDefault);
    }
    parse_replica_count(text)
        .map(ReplicationFactor::Fixed)
        .map_err(|e| format!("{e}, or -1 for the broker's default.replication.factor"))
}

/// Parses a replica count: a whole number from 1 to `i16::MAX` (Kafka's replication factor
/// and `min.insync.replicas` are INT16 counts).
///
/// # Errors
/// The text is not such a number.
pub fn parse_replica_count(text: &str) -> Result<NonZeroU16, String> {
    text.trim()
        .parse::<i16>()
        .ok()
        .and_then(|n| u16::try_from(n).ok())
        .and_then(NonZeroU16::new)
        .ok_or_else(|| format!("{text:?} is not a replica count (a whole number from 1 to 32767)"))
}

/// Replication of the topics a service creates, checked against each other: the
/// `min.insync.replicas` never exceeds a fixed replication factor. Built by
/// [`StoreConfig::new_topic_replication`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewTopicReplication {
    factor: ReplicationFactor,
    min_insync_replicas: Option<NonZeroU16>,
}

impl NewTopicReplication {
    /// Checks `min_insync_replicas` against `factor`.
    ///
    /// # Errors
    /// `min_insync_replicas` exceeds a fixed `factor`: no `acks=all` send to such a topic could
    /// ever be acknowledged.
    pub fn new(
        factor: ReplicationFactor,
        min_insync_replicas: Option<NonZeroU16>,
    ) -> Result<Self, TopicSettingsError> {
        if let (ReplicationFactor::Fixed(replicas), Some(min_isr)) = (factor, min_insync_replicas) {
            if min_isr > replicas {
                return Err(
                    TopicSettingsError::MinInsyncReplicasAboveReplicationFactor {
                        min_insync_replicas: min_isr,
                        replication_factor: replicas,
                    },
                );
            }
        }
        Ok(Self {
            factor,
            min_insync_replicas,
        })
    }

    /// The replication factor.
    pub fn factor(&self) -> ReplicationFactor {
        self.factor
    }

    /// The `min.insync.replicas` a created topic is given; `None`: the broker's.
    pub fn min_insync_replicas(&self) -> Option<NonZeroU16> {
        self.min_insync_replicas
    }
}

/// Topic settings that contradict each other; the service refuses to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicSettingsError {
    /// More in-sync replicas required than the topic would have.
    #[error(
        "KAFKA_TOPIC_MIN_INSYNC_REPLICAS={min_insync_replicas} exceeds \
         KAFKA_TOPIC_REPLICATION_FACTOR={replication_factor}: no acks=all send to such a topic \
         could ever be acknowledged (use a replication factor of 3 and min.insync.replicas=2)"
    )]
    MinInsyncReplicasAboveReplicationFactor {
        /// The `min.insync.replicas` asked for.
        min_insync_replicas: NonZeroU16,
        /// The replication factor asked for.
        replication_factor: NonZeroU16,
    },
}

impl StoreConfig {
    /// The MySQL URL, exposed for connecting only.
    pub fn database_url(&self) -> &str {
        self.database_url.expose_secret()
    }

    /// The Redis URL, exposed for connecting only.
    pub fn redis_url(&self) -> &str {
        self.redis_url.expose_secret()
    }

    /// [`Self::kafka_message_timeout_ms`] as a [`Duration`].
    pub fn kafka_message_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_message_timeout_ms)
    }

    /// The replication of topics a service creates, from
    /// [`Self::kafka_topic_replication_factor`] and [`Self::kafka_topic_min_insync_replicas`].
    ///
    /// # Errors
    /// The two contradict each other ([`TopicSettingsError`]).
    pub fn new_topic_replication(&self) -> Result<NewTopicReplication, TopicSettingsError> {
        NewTopicReplication::new(
            self.kafka_topic_replication_factor,
            self.kafka_topic_min_insync_replicas,
        )
    }

    /// [`Self::redis_timeout_ms`] as a [`Duration`].
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// [`Self::redis_wait_timeout_ms`] as a [`Duration`].
    pub fn redis_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_wait_timeout_ms)
    }

    /// Opens the Redis connection these settings name, commands bounded by `timeout`
    /// ([`crate::store::redis::connect`]).
    ///
    /// # Errors
    /// As [`crate::store::redis::connect`].
    pub async fn connect_redis(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<crate::store::redis::RedisConnection> {
        crate::store::redis::connect(self.redis_mode, self.redis_url(), timeout).await
    }
}

/// A socket address or none (`off`). An alias, so clap parses the `Option` as one value
/// instead of treating the flag as optional.
pub type OptionalAddr = Option<SocketAddr>;

/// Parses a socket address, or `off` for none.
///
/// # Errors
/// The text is neither `off` nor a `host:port` socket address.
pub fn parse_optional_addr(text: &str) -> Result<OptionalAddr, String> {
    if text.eq_ignore_ascii_case("off") || text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| format!("{text}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        stores: StoreConfig,
    }

    #[test]
    fn defaults_point_at_the_local_stack() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.stores.kafka_brokers, "127.0.0.1:9092");
        assert_eq!(
            cli.stores.database_url(),
            "mysql://coupon:coupon@127.0.0.1:3306/coupon"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let cli = Cli::parse_from(["x", "--database-url", "mysql://u:hunter2@db/coupon"]);
        assert!(!format!("{:?}", cli.stores).contains("hunter2"));
    }

    #[test]
    fn created_topics_take_the_brokers_replication_by_default() {
        let cli = Cli::parse_from(["x"]);
        let replication = cli.stores.new_topic_replication().unwrap();
        assert_eq!(replication.factor(), ReplicationFactor::BrokerDefault);
        assert_eq!(replication.factor().as_create_topics_value(), -1);
        assert_eq!(replication.min_insync_replicas(), None);
    }

    #[test]
    fn a_replication_factor_is_minus_one_default_or_a_count() {
        let count = |n| ReplicationFactor::Fixed(NonZeroU16::new(n).unwrap());
        assert_eq!(
            parse_replication_factor("-1"),
            Ok(ReplicationFactor::BrokerDefault)
        );
        assert_eq!(
            parse_replication_factor("default"),
            Ok(ReplicationFactor::BrokerDefault)
        );
        assert_eq!(parse_replication_factor("3"), Ok(count(3)));
        assert_eq!(parse_replication_factor("32767"), Ok(count(32767)));
        for wrong in ["0", "-2", "three", "", "32768", "1.5"] {
            let err = parse_replication_factor(wrong).unwrap_err();
            assert!(
                err.contains("-1 for the broker's default"),
                "{wrong}: {err}"
            );
        }
        let cli = Cli::parse_from(["x", "--kafka-topic-replication-factor", "-1"]);
        assert_eq!(
            cli.stores.kafka_topic_replication_factor,
            ReplicationFactor::BrokerDefault
        );
    }

    #[test]
    fn a_min_insync_replicas_of_zero_is_refused_at_start_up() {
        let err = Cli::try_parse_from(["x", "--kafka-topic-min-insync-replicas", "0"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a replica count"), "{err}");
        let cli = Cli::parse_from(["x", "--kafka-topic-min-insync-replicas", "2"]);
        assert_eq!(
            cli.stores.kafka_topic_min_insync_replicas,
            NonZeroU16::new(2)
        );
    }

    #[test]
    fn a_min_insync_replicas_above_the_replication_factor_is_refused() {
        let cli = Cli::parse_from([
            "x",
            "--kafka-topic-replication-factor",
            "2",
            "--kafka-topic-min-insync-replicas",
            "3",
        ]);

        let err = cli.stores.new_topic_replication().unwrap_err();

        assert_eq!(
            err.to_string(),
            "KAFKA_TOPIC_MIN_INSYNC_REPLICAS=3 exceeds KAFKA_TOPIC_REPLICATION_FACTOR=2: no \
             acks=all send to such a topic could ever be acknowledged (use a replication \
             factor of 3 and min.insync.replicas=2)"
        );
    }

    #[test]
    fn a_min_insync_replicas_up_to_the_replication_factor_or_with_the_brokers_factor_is_accepted() {
        let count = |n| NonZeroU16::new(n).unwrap();
        for (factor, min_isr) in [
            (ReplicationFactor::Fixed(count(3)), count(2)),
            (ReplicationFactor::Fixed(count(3)), count(3)),
            (ReplicationFactor::Fixed(count(1)), count(1)),
            // The broker's factor is unknown here; the start-up check reads the result.
            (ReplicationFactor::BrokerDefault, count(2)),
        ] {
            let replication = NewTopicReplication::new(factor, Some(min_isr)).unwrap();
            assert_eq!(replication.min_insync_replicas(), Some(min_isr));
        }
    }

    #[test]
    fn metrics_can_be_switched_off() {
        assert_eq!(parse_optional_addr("off"), Ok(None));
        assert!(parse_optional_addr("nonsense").is_err());
    }
}
