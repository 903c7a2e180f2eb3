//! Typed configuration shared by both services.
//!
//! Every field is read from a command-line flag or, failing that, from the environment variable
//! named beside it; the defaults point at the local stack that `make up` starts. The doc comment
//! of each field is its `--help` text. A duration is a [`Duration`], read by [`parse_millis`],
//! [`parse_secs`] or [`parse_days`] after the unit its setting's name ends with.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::store::redis::RedisMode;

/// Connections to the three stores every service talks to, one group of settings per store.
///
/// The groups are flattened into one command line, where each setting keeps the flat flag
/// and environment variable that scripts and operators use (`--redis-timeout-ms`,
/// `REDIS_TIMEOUT_MS`): `id`, `long` and `value_name` are set where the field's name in its
/// group differs.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// The MySQL database.
    #[command(flatten)]
    pub mysql: MySqlConfig,

    /// Redis, where admissions are decided.
    #[command(flatten)]
    pub redis: RedisConfig,

    /// Kafka, which carries issue messages, payment results and coupon events.
    #[command(flatten)]
    pub kafka: KafkaConfig,
}

/// MySQL settings (`DATABASE_*`, `MIGRATE_ON_START`).
#[derive(Debug, Clone, clap::Args)]
pub struct MySqlConfig {
    /// MySQL/MariaDB URL, e.g. `mysql://user:password@host:3306/coupon`. With
    /// `MIGRATE_ON_START`, the database is created on start-up when it does not exist. Kept
    /// secret: it may hold a password.
    #[arg(
        id = "database_url",
        long = "database-url",
        value_name = "DATABASE_URL",
        env = "DATABASE_URL",
        default_value = "mysql://coupon:coupon@127.0.0.1:3306/coupon"
    )]
    pub url: SecretString,

    /// Create the database when missing and apply the migrations at start-up (the user of
    /// `DATABASE_URL` then needs DDL rights). `false`: only check that every migration of this
    /// build was applied (by `coupon-api migrate`, run with a DDL-capable user), and refuse
    /// to start otherwise, so the runtime user needs only `SELECT, INSERT, UPDATE, DELETE`.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Largest number of pooled MySQL connections.
    #[arg(
        id = "database_max_connections",
        long = "database-max-connections",
        value_name = "DATABASE_MAX_CONNECTIONS",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}

/// Redis settings (`REDIS_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct RedisConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`; with `REDIS_MODE=cluster`, one or more seed
    /// nodes of the cluster, comma-separated. Kept secret: it may hold a password.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        value_name = "REDIS_URL",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: SecretString,

    /// What `REDIS_URL` names: `single` (one node) or `cluster` (a Redis Cluster).
    #[arg(
        id = "redis_mode",
        long = "redis-mode",
        value_name = "REDIS_MODE",
        env = "REDIS_MODE",
        value_enum,
        default_value_t = RedisMode::Single
    )]
    pub mode: RedisMode,

    /// Replicas (count) that must acknowledge an admission before coupon-api answers 202
    /// (`WAIT`, see `docs/scale.md`); 0 does not wait. With 1 on a cluster of one replica per
    /// master, an admission survives the loss of its master. An admission not acknowledged
    /// within `REDIS_WAIT_TIMEOUT_MS` is undone and answered 503.
    #[arg(
        id = "redis_wait_replicas",
        long = "redis-wait-replicas",
        value_name = "REDIS_WAIT_REPLICAS",
        env = "REDIS_WAIT_REPLICAS",
        default_value_t = 0
    )]
    pub wait_replicas: u32,

    /// Longest wait (ms) for `REDIS_WAIT_REPLICAS` acknowledgements of one admission.
    #[arg(
        id = "redis_wait_timeout_ms",
        long = "redis-wait-timeout-ms",
        value_name = "REDIS_WAIT_TIMEOUT_MS",
        env = "REDIS_WAIT_TIMEOUT_MS",
        default_value = "200",
        value_parser = parse_millis
    )]
    pub wait_timeout: Duration,

    /// Prefix put before every Redis key and channel, so several deployments (or test runs) can
    /// share one Redis. Empty in production.
    #[arg(
        id = "redis_key_prefix",
        long = "redis-key-prefix",
        value_name = "REDIS_KEY_PREFIX",
        env = "REDIS_KEY_PREFIX",
        default_value = ""
    )]
    pub key_prefix: String,

    /// Upper bound on one Redis command, in milliseconds. Past it the request fails closed (503).
    #[arg(
        id = "redis_timeout_ms",
        long = "redis-timeout-ms",
        value_name = "REDIS_TIMEOUT_MS",
        env = "REDIS_TIMEOUT_MS",
        default_value = "500",
        value_parser = parse_millis
    )]
    pub timeout: Duration,
}

/// Kafka settings (`KAFKA_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, comma-separated `host:port` pairs.
    #[arg(
        id = "kafka_brokers",
        long = "kafka-brokers",
        value_name = "KAFKA_BROKERS",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Topic that carries issue messages from coupon-api to coupon-consumer.
    #[arg(
        id = "kafka_issue_topic",
        long = "kafka-issue-topic",
        value_name = "KAFKA_ISSUE_TOPIC",
        env = "KAFKA_ISSUE_TOPIC",
        default_value = "coupon-issues"
    )]
    pub issue_topic: String,

    /// Dead-letter topic for issue messages that can never be persisted.
    #[arg(
        id = "kafka_dead_letter_topic",
        long = "kafka-dead-letter-topic",
        value_name = "KAFKA_DEAD_LETTER_TOPIC",
        env = "KAFKA_DEAD_LETTER_TOPIC",
        default_value = "coupon-issues-dlq"
    )]
    pub dead_letter_topic: String,

    /// Topic of payment results (`{"order_id": "...", "status": "COMPLETED" | "FAILED"}`) that
    /// confirm or release checkout holds.
    #[arg(
        id = "kafka_payments_topic",
        long = "kafka-payments-topic",
        value_name = "KAFKA_PAYMENTS_TOPIC",
        env = "KAFKA_PAYMENTS_TOPIC",
        default_value = "payments"
    )]
    pub payments_topic: String,

    /// Topic of coupon events (ISSUED, RESERVED, USED, RELEASED, EXPIRING_SOON, EXPIRED) for
    /// notification services.
    #[arg(
        id = "kafka_events_topic",
        long = "kafka-events-topic",
        value_name = "KAFKA_EVENTS_TOPIC",
        env = "KAFKA_EVENTS_TOPIC",
        default_value = "coupon.events"
    )]
    pub events_topic: String,

    /// Partitions of the issue topic when a service has to create it (count).
    #[arg(
        id = "kafka_issue_partitions",
        long = "kafka-issue-partitions",
        value_name = "KAFKA_ISSUE_PARTITIONS",
        env = "KAFKA_ISSUE_PARTITIONS",
        default_value_t = 12
    )]
    pub issue_partitions: i32,

    /// Upper bound (ms) on one Kafka send, librdkafka's retries included. Past it the admission
    /// is undone and the client is answered 503.
    #[arg(
        id = "kafka_message_timeout_ms",
        long = "kafka-message-timeout-ms",
        value_name = "KAFKA_MESSAGE_TIMEOUT_MS",
        env = "KAFKA_MESSAGE_TIMEOUT_MS",
        default_value = "5000",
        value_parser = parse_millis
    )]
    pub message_timeout: Duration,

    /// Create the issue, dead-letter, payments and events topics on start-up when they are
    /// missing (an existing topic is left as it is).
    #[arg(
        id = "kafka_create_topics",
        long = "kafka-create-topics",
        value_name = "KAFKA_CREATE_TOPICS",
        env = "KAFKA_CREATE_TOPICS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub create_topics: bool,

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
        id = "kafka_topic_replication_factor",
        long = "kafka-topic-replication-factor",
        value_name = "KAFKA_TOPIC_REPLICATION_FACTOR",
        env = "KAFKA_TOPIC_REPLICATION_FACTOR",
        default_value = "-1",
        allow_hyphen_values = true,
        value_parser = parse_replication_factor
    )]
    pub topic_replication_factor: ReplicationFactor,

    /// `min.insync.replicas` (count, at least 1) of the topics a service creates: how many
    /// replicas must hold a message before an `acks=all` send is acknowledged. Unset: the
    /// topic takes the broker's `min.insync.replicas` (1 unless the cluster sets it), so a
    /// cluster configured with 2 gets 2 and the local single broker keeps accepting writes; a
    /// fixed 2 on one broker would refuse every send (`NOT_ENOUGH_REPLICAS`). Set 2 with a
    /// replication factor of 3 (docs/scale.md); it may not exceed
    /// `KAFKA_TOPIC_REPLICATION_FACTOR` when that is a count. Existing topics are not changed.
    #[arg(
        id = "kafka_topic_min_insync_replicas",
        long = "kafka-topic-min-insync-replicas",
        value_name = "KAFKA_TOPIC_MIN_INSYNC_REPLICAS",
        env = "KAFKA_TOPIC_MIN_INSYNC_REPLICAS",
        value_parser = parse_replica_count
    )]
    pub topic_min_insync_replicas: Option<NonZeroU16>,
}

/// Replication factor of a topic a service creates
/// ([`KafkaConfig::topic_replication_factor`]).
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
/// [`KafkaConfig::new_topic_replication`].
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

impl MySqlConfig {
    /// The MySQL URL, exposed for connecting only.
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

impl RedisConfig {
    /// The Redis URL, exposed for connecting only.
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

impl KafkaConfig {
    /// The replication of topics a service creates, from [`Self::topic_replication_factor`]
    /// and [`Self::topic_min_insync_replicas`].
    ///
    /// # Errors
    /// The two contradict each other ([`TopicSettingsError`]).
    pub fn new_topic_replication(&self) -> Result<NewTopicReplication, TopicSettingsError> {
        NewTopicReplication::new(
            self.topic_replication_factor,
            self.topic_min_insync_replicas,
        )
    }
}

impl StoreConfig {
    /// Opens the Redis connection these settings name, commands bounded by `timeout`
    /// ([`crate::store::redis::connect`]).
    ///
    /// # Errors
    /// As [`crate::store::redis::connect`].
    pub async fn connect_redis(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<crate::store::redis::RedisConnection> {
        crate::store::redis::connect(self.redis.mode, self.redis.url(), timeout).await
    }
}

/// Parses a `_MS` setting. A bare whole number counts milliseconds, as the setting's name
/// says (`REDIS_TIMEOUT_MS=500`); a duration with its unit is accepted too (`2s`, `1m 30s`:
/// the `humantime` crate's format). Either way the result is a whole number of milliseconds,
/// the values the bare number always gave, so nothing is lost where a value goes on in
/// milliseconds (librdkafka's `message.timeout.ms`).
///
/// # Errors
/// The text is neither, or is finer than a millisecond (`1500us`).
pub fn parse_millis(text: &str) -> Result<Duration, String> {
    parse_whole(Unit::Millis, text)
}

/// Parses a `_SECS` setting: a bare whole number of seconds (`IDEMPOTENCY_TTL_SECS=86400`)
/// or a duration with its unit (`24h`), a whole number of seconds either way (as
/// [`parse_millis`]).
///
/// # Errors
/// The text is neither, or is not a whole number of seconds (`1500ms`).
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    parse_whole(Unit::Secs, text)
}

/// Parses a `_DAYS` setting: a bare whole number of days (`ARCHIVE_AFTER_DAYS=183`) or a
/// duration with its unit (`1week`, `48h`), a whole number of days either way (as
/// [`parse_millis`]).
///
/// # Errors
/// The text is neither, is not a whole number of days (`36h`), or is past [`Duration`]'s
/// range.
pub fn parse_days(text: &str) -> Result<Duration, String> {
    parse_whole(Unit::Days, text)
}

/// The unit a duration setting's name ends with (`_MS`, `_SECS`, `_DAYS`).
#[derive(Debug, Clone, Copy)]
enum Unit {
    Millis,
    Secs,
    Days,
}

impl Unit {
    const SECS_PER_DAY: u64 = 86_400;

    /// `count` of this unit; `None` past [`Duration`]'s range.
    fn times(self, count: u64) -> Option<Duration> {
        match self {
            Self::Millis => Some(Duration::from_millis(count)),
            Self::Secs => Some(Duration::from_secs(count)),
            Self::Days => count
                .checked_mul(Self::SECS_PER_DAY)
                .map(Duration::from_secs),
        }
    }

    /// Whether `duration` is a whole number of this unit.
    fn divides(self, duration: Duration) -> bool {
        let one = match self {
            Self::Millis => Duration::from_millis(1),
            Self::Secs => Duration::from_secs(1),
            Self::Days => Duration::from_secs(Self::SECS_PER_DAY),
        };
        duration.as_nanos() % one.as_nanos() == 0
    }

    fn name(self) -> &'static str {
        match self {
            Self::Millis => "milliseconds",
            Self::Secs => "seconds",
            Self::Days => "days",
        }
    }
}

/// A whole number of `unit`: a bare number of it, or a `humantime` duration that is one.
fn parse_whole(unit: Unit, text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(count) => unit
            .times(count)
            .ok_or_else(|| format!("{text} {} is too long", unit.name()))?,
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!(
                "{text:?} is not a duration ({e}): give a whole number of {} or a number with \
                 its unit, e.g. 2s, 1m 30s, 12h",
                unit.name()
            )
        })?,
    };
    if !unit.divides(duration) {
        return Err(format!("{text:?} is not a whole number of {}", unit.name()));
    }
    Ok(duration)
}

/// A duration or none: a periodic job's pause, `None` when the job is off. An alias, so clap
/// parses the `Option` as one value instead of treating the flag as optional.
pub type OptionalDuration = Option<Duration>;

/// Parses a `_MS` pause of which 0 turns its job off: [`parse_millis`], and `None` for zero
/// (`0`, `0s`).
///
/// # Errors
/// As [`parse_millis`].
pub fn parse_millis_or_off(text: &str) -> Result<OptionalDuration, String> {
    parse_millis(text).map(|pause| (!pause.is_zero()).then_some(pause))
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
        assert_eq!(cli.stores.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(
            cli.stores.mysql.url(),
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
        let replication = cli.stores.kafka.new_topic_replication().unwrap();
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
            cli.stores.kafka.topic_replication_factor,
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
            cli.stores.kafka.topic_min_insync_replicas,
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

        let err = cli.stores.kafka.new_topic_replication().unwrap_err();

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

    #[test]
    fn every_setting_keeps_its_flag_and_environment_variable() {
        use clap::CommandFactory;
        let command = Cli::command();
        let names: Vec<(String, String)> = command
            .get_arguments()
            .filter(|arg| arg.get_id() != "help")
            .map(|arg| {
                let long = arg.get_long().unwrap_or_default().to_owned();
                let env = arg
                    .get_env()
                    .map(|env| env.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (long, env)
            })
            .collect();
        let expected = [
            ("database-url", "DATABASE_URL"),
            ("migrate-on-start", "MIGRATE_ON_START"),
            ("database-max-connections", "DATABASE_MAX_CONNECTIONS"),
            ("redis-url", "REDIS_URL"),
            ("redis-mode", "REDIS_MODE"),
            ("redis-wait-replicas", "REDIS_WAIT_REPLICAS"),
            ("redis-wait-timeout-ms", "REDIS_WAIT_TIMEOUT_MS"),
            ("redis-key-prefix", "REDIS_KEY_PREFIX"),
            ("redis-timeout-ms", "REDIS_TIMEOUT_MS"),
            ("kafka-brokers", "KAFKA_BROKERS"),
            ("kafka-issue-topic", "KAFKA_ISSUE_TOPIC"),
            ("kafka-dead-letter-topic", "KAFKA_DEAD_LETTER_TOPIC"),
            ("kafka-payments-topic", "KAFKA_PAYMENTS_TOPIC"),
            ("kafka-events-topic", "KAFKA_EVENTS_TOPIC"),
            ("kafka-issue-partitions", "KAFKA_ISSUE_PARTITIONS"),
            ("kafka-message-timeout-ms", "KAFKA_MESSAGE_TIMEOUT_MS"),
            ("kafka-create-topics", "KAFKA_CREATE_TOPICS"),
            (
                "kafka-topic-replication-factor",
                "KAFKA_TOPIC_REPLICATION_FACTOR",
            ),
            (
                "kafka-topic-min-insync-replicas",
                "KAFKA_TOPIC_MIN_INSYNC_REPLICAS",
            ),
        ]
        .map(|(long, env)| (long.to_owned(), env.to_owned()));
        assert_eq!(names, expected);
        command.debug_assert();
    }

    #[test]
    fn durations_default_to_the_milliseconds_they_always_had() {
        let stores = Cli::parse_from(["x"]).stores;
        assert_eq!(stores.redis.timeout, Duration::from_millis(500));
        assert_eq!(stores.redis.wait_timeout, Duration::from_millis(200));
        assert_eq!(stores.kafka.message_timeout, Duration::from_millis(5_000));
    }

    #[test]
    fn a_duration_flag_takes_a_bare_number_of_its_unit_or_a_unit() {
        let stores = Cli::parse_from(["x", "--redis-timeout-ms", "300"]).stores;
        assert_eq!(stores.redis.timeout, Duration::from_millis(300));
        let stores = Cli::parse_from(["x", "--redis-timeout-ms", "2s"]).stores;
        assert_eq!(stores.redis.timeout, Duration::from_secs(2));
        let err = Cli::try_parse_from(["x", "--kafka-message-timeout-ms", "soon"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("is not a duration"), "{err}");
    }

    #[test]
    fn a_bare_number_of_milliseconds_counts_milliseconds() {
        assert_eq!(parse_millis("500"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_millis("0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_millis(&u64::MAX.to_string()),
            Ok(Duration::from_millis(u64::MAX))
        );
    }

    #[test]
    fn milliseconds_may_be_given_with_a_unit() {
        assert_eq!(parse_millis("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_millis("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_millis("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_millis(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn milliseconds_refuse_what_is_not_a_whole_number_of_them() {
        for wrong in ["", "-1", "soon", "1.5", "2 parsecs", "1500us"] {
            assert!(parse_millis(wrong).is_err(), "{wrong:?}");
        }
        assert!(parse_millis("1500us")
            .unwrap_err()
            .contains("not a whole number of milliseconds"));
    }

    #[test]
    fn a_bare_number_of_seconds_counts_seconds_and_a_unit_may_be_given() {
        assert_eq!(parse_secs("86400"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_secs("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_secs("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_secs("2000ms"), Ok(Duration::from_secs(2)));
        assert!(parse_secs("1500ms")
            .unwrap_err()
            .contains("not a whole number of seconds"));
        assert!(parse_secs("a day").is_err());
    }

    #[test]
    fn a_bare_number_of_days_counts_days_and_a_unit_may_be_given() {
        let days = |n: u64| Duration::from_secs(n * 86_400);
        assert_eq!(parse_days("7"), Ok(days(7)));
        assert_eq!(parse_days("183"), Ok(days(183)));
        assert_eq!(parse_days("1week"), Ok(days(7)));
        assert_eq!(parse_days("48h"), Ok(days(2)));
        assert!(parse_days("36h")
            .unwrap_err()
            .contains("not a whole number of days"));
        assert!(parse_days(&u64::MAX.to_string())
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn a_pause_of_zero_turns_its_job_off() {
        assert_eq!(parse_millis_or_off("0"), Ok(None));
        assert_eq!(parse_millis_or_off("0s"), Ok(None));
        assert_eq!(
            parse_millis_or_off("60000"),
            Ok(Some(Duration::from_secs(60)))
        );
        assert!(parse_millis_or_off("off").is_err());
    }
}
