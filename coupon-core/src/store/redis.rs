//! The Redis connection both services use: one node, or a Redis Cluster, chosen by
//! [`RedisMode`] (`REDIS_MODE`). Everything above this module speaks to a [`RedisConnection`]
//! and never knows which.
//!
//! On a cluster every command is routed to the master of its key's hash slot by the `redis`
//! crate's cluster client, which follows `MOVED`/`ASK` redirects and refreshes its slot map
//! after a failover (<https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/>).
//! A command that names keys of several slots is refused by Redis with `CROSSSLOT`; couponrush
//! sends none: every multi-key script and `MULTI` names the keys of one coupon, which share the
//! hash tag `{id}` ([`crate::issue::admission`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// What kind of Redis deployment `REDIS_URL` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One node (or a primary behind a proxy): `REDIS_URL` is one `redis://host:port[/db]`.
    #[default]
    Single,
    /// A Redis Cluster: `REDIS_URL` is one or more seed nodes, comma-separated
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`); the client discovers the rest with
    /// `CLUSTER SLOTS`. A cluster has only database 0.
    Cluster,
}

/// A multiplexed, self-reconnecting connection to a single node or to a cluster; cheap to
/// clone (clones share the sockets). Implements [`ConnectionLike`], so every command, script
/// and pipeline of the `redis` crate runs on it.
#[derive(Clone)]
pub enum RedisConnection {
    /// One node, through a [`ConnectionManager`] that reconnects after a failure.
    Single(ConnectionManager),
    /// A Redis Cluster: one multiplexed connection per node, routed by hash slot.
    Cluster(ClusterConnection),
}

/// The seed URLs of `urls`: comma-separated, blanks ignored.
pub fn node_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// `urls` (comma-separated Redis URLs) fit for a log or an error: each URL's credentials
/// (`user:password@`) become `***@`, so a message never carries the password of `REDIS_URL`.
pub fn redact(urls: &str) -> String {
    node_urls(urls)
        .into_iter()
        .map(|url| {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let Some((_credentials, address)) = rest.rsplit_once('@') else {
                return url.to_owned();
            };
            let scheme = if scheme.is_empty() {
                String::new()
            } else {
                format!("{scheme}://")
            };
            format!("{scheme}***@{address}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Opens a connection to the `mode` deployment at `urls` (see [`RedisMode`]) whose every
/// command is bounded by `timeout`, so an unreachable Redis fails requests quickly instead of
/// hanging them.
///
/// On a cluster, a command whose connection dropped is re-sent once to the slot's current
/// master (after a failover, the promoted replica): every write couponrush sends is safe to
/// repeat (the admission script answers "admitted" again to the request that made the
/// admission, see `admission/admit.lua`).
///
/// # Errors
/// A URL is malformed, single mode was given several URLs, or the first connection fails.
pub async fn connect(
    mode: RedisMode,
    urls: &str,
    timeout: Duration,
) -> redis::RedisResult<RedisConnection> {
    let nodes = node_urls(urls);
    match mode {
        RedisMode::Single => {
            let [url] = nodes[..] else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "REDIS_MODE=single takes exactly one URL in REDIS_URL",
                    redact(urls),
                )));
            };
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            Ok(RedisConnection::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
        RedisMode::Cluster => {
            let client = ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .overall_response_timeout(Some(timeout.saturating_mul(2)))
                .retries(2)
                .build()?;
            Ok(RedisConnection::Cluster(
                client.get_async_connection().await?,
            ))
        }
    }
}

/// The URLs a pub/sub subscriber may use, best first: in single mode the one node; on a cluster
/// every node the cluster reports healthy (`CLUSTER NODES`, masters and replicas) and then the
/// seeds. Classic `PUBLISH` on a Redis Cluster reaches the subscribers of every node
/// (<https://redis.io/docs/latest/develop/interactive/pubsub/#pubsub-and-redis-cluster>), so a
/// subscriber needs one live node, any node; asking the cluster (not only the seeds) lets it
/// move to a node that was not a seed when its node dies. Credentials and scheme are those of
/// the first seed. It cannot fail: when the cluster does not answer, the seeds remain.
pub async fn subscriber_urls(conn: &RedisConnection, urls: &str) -> Vec<String> {
    let seeds: Vec<String> = node_urls(urls).into_iter().map(str::to_owned).collect();
    let RedisConnection::Cluster(_) = conn else {
        return seeds;
    };
    let listing: Option<String> = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn.clone())
        .await
        .ok();
    let Some(first) = seeds.first() else {
        return seeds;
    };
    let mut found: Vec<String> = listing
        .as_deref()
        .map(healthy_nodes)
        .unwrap_or_default()
        .into_iter()
        .map(|addr| with_address(first, &addr))
        .collect();
    found.extend(seeds.iter().cloned());
    found.dedup();
    found
}

/// The `host:port` of each node of a `CLUSTER NODES` reply not flagged failing, in order
/// (<https://redis.io/docs/latest/commands/cluster-nodes/>: `<id> <ip:port@cport[,hostname]>
/// <flags> …`).
fn healthy_nodes(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, addr, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let bad = flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
            let host_port = addr.split(['@', ',']).next()?;
            (!bad && !host_port.starts_with(':')).then(|| host_port.to_owned())
        })
        .collect()
}

/// `template` (`redis://[user:pass@]host:port[/db]`) pointing at `host_port` instead.
fn with_address(template: &str, host_port: &str) -> String {
    let (scheme, rest) = template.split_once("://").unwrap_or(("redis", template));
    let credentials = rest
        .split_once('@')
        .map_or(String::new(), |(c, _)| format!("{c}@"));
    format!("{scheme}://{credentials}{host_port}")
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A user id is sent to Redis as its integer (a set member, a hash field).
impl redis::ToRedisArgs for crate::domain::UserId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        self.get().write_redis_args(out);
    }

    fn describe_numeric_behavior(&self) -> redis::NumericBehavior {
        redis::NumericBehavior::NumberIsInteger
    }
}

/// A user id read from Redis: an integer that must be positive (a member that is not one is a
/// parsing error, never a user).
impl redis::FromRedisValue for crate::domain::UserId {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let raw = i64::from_redis_value(value)?;
        Self::parse(raw).map_err(|err| err.0.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_start_up_error_never_carries_the_redis_password() {
        assert_eq!(
            redact("redis://:hunter2@10.0.0.1:6379/0, rediss://app:hunter2@b:6380,redis://c:1"),
            "redis://***@10.0.0.1:6379/0,rediss://***@b:6380,redis://c:1"
        );
        let timeout = Duration::from_millis(200);
        for (mode, urls) in [
            (
                RedisMode::Single,
                "redis://:hunter2@127.0.0.1:1,redis://:hunter2@127.0.0.1:2",
            ),
            (RedisMode::Single, "redis://app:hunter2@127.0.0.1:1"),
            (RedisMode::Single, "redis://app:hunter2@[not a host"),
            (RedisMode::Cluster, "redis://app:hunter2@127.0.0.1:1"),
        ] {
            let err = connect(mode, urls, timeout).await.err().expect(urls);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("hunter2"), "{mode:?} {urls}: {shown}");
        }
    }

    #[test]
    fn seed_urls_are_comma_separated() {
        assert_eq!(
            node_urls(" redis://a:1, redis://b:2 ,,"),
            ["redis://a:1", "redis://b:2"]
        );
        assert!(node_urls(" ").is_empty());
    }

    #[test]
    fn healthy_nodes_skip_failing_ones() {
        let listing = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master,fail - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected
d4 :0@0 master,noaddr - 0 0 0 disconnected
";
        assert_eq!(healthy_nodes(listing), ["127.0.0.1:7000", "127.0.0.1:7002"]);
        assert_eq!(
            with_address("rediss://u:p@seed:1/0", "10.0.0.2:7000"),
            "rediss://u:p@10.0.0.2:7000"
        );
        assert_eq!(with_address("redis://seed:1", "h:2"), "redis://h:2");
    }

    #[tokio::test]
    async fn single_mode_refuses_several_urls() {
        let err = connect(
            RedisMode::Single,
            "redis://127.0.0.1:1,redis://127.0.0.1:2",
            Duration::from_millis(100),
        )
        .await
        .err()
        .expect("two URLs in single mode");
        assert_eq!(err.kind(), redis::ErrorKind::InvalidClientConfig);
    }
}
