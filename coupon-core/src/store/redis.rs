//! The Redis connection both services use. Today a single node; this is the one place that will
//! choose between a single node and a cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Opens a multiplexed, self-reconnecting Redis connection whose every command is bounded by
/// `timeout`, so an unreachable Redis fails requests quickly instead of hanging them.
///
/// # Errors
/// The URL is malformed or the first connection fails.
pub async fn connect(url: &str, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config).await
}
