//! Typed configuration shared by both services.
//!
//! Every field is read from a command-line flag or, failing that, from the environment variable
//! named beside it; the defaults point at the local stack that `make up` starts. The doc comment
//! of each field is its `--help` text.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::store::redis::RedisMode;

/// Connections to the three stores every service talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// MySQL/MariaDB URL, e.g. `mysql://user:password@host:3306/coupon`. The database is created
    /// on start-up when it does not exist. Kept secret: it may hold a password.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://coupon:coupon@127.0.0.1:3306/coupon"
    )]
    pub database_url: SecretString,

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

    /// Create the issue and dead-letter topics on start-up when they are missing.
    #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_create_topics: bool,
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
    fn metrics_can_be_switched_off() {
        assert_eq!(parse_optional_addr("off"), Ok(None));
        assert!(parse_optional_addr("nonsense").is_err());
    }
}
