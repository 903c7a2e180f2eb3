//! Subscription to the consumer's cache-invalidation broadcasts (Redis pub/sub).
//!
//! Redis pub/sub is fire-and-forget: a message published while this instance is disconnected
//! is lost (<https://redis.io/docs/latest/develop/interactive/pubsub/#delivery-semantics>).
//! So after every (re)subscription the policy cache is emptied, and the cache TTL bounds how
//! stale an entry can get in any case.

use std::time::Duration;

use coupon_core::issue::admission::{Invalidation, InvalidationReason};
use coupon_core::store::redis::{subscriber_urls, RedisConnection};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::issue::sold_out::SoldOutMarks;
use crate::policies::cache::PolicyCache;

/// Pause before resubscribing after the connection dropped.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// The caches the broadcasts keep fresh.
#[derive(Clone)]
pub struct Invalidated {
    /// Policies: a changed one is dropped, all are dropped after a gap in the subscription.
    pub policies: PolicyCache,
    /// Sold-out marks: set by a sell-out, dropped by a policy change.
    pub sold_out: SoldOutMarks,
}

impl Invalidated {
    /// Applies one invalidation broadcast.
    pub async fn apply(&self, invalidation: Invalidation) {
        let coupon = invalidation.coupon_id;
        match invalidation.reason {
            InvalidationReason::SoldOut => self.sold_out.mark(invalidation.shards()).await,
            InvalidationReason::PolicyChanged => {
                self.policies.invalidate(coupon).await;
                self.sold_out.clear(coupon).await;
            }
        }
    }
}

/// Applies invalidations from `channel` to `cache` until `shutdown` fires, resubscribing after
/// any failure. `subscribed` is cancelled once the first subscription is active (tests wait on it).
///
/// The subscriber holds its own connection to one node: on a cluster any node will do (classic
/// `PUBLISH` reaches every node's subscribers; sharded pub/sub would tie the subscription to
/// the channel's slot owner and need re-subscribing on every failover, for a few messages a
/// minute), and each (re)subscription tries the nodes of [`subscriber_urls`] in turn, so the
/// loss of the node it listened to costs one resubscription.
pub async fn run(
    redis: RedisConnection,
    redis_urls: String,
    channel: String,
    cache: Invalidated,
    shutdown: CancellationToken,
    subscribed: CancellationToken,
) {
    let mut attempt = 0usize;
    loop {
        let urls = subscriber_urls(&redis, &redis_urls).await;
        let Some(url) = urls.get(attempt % urls.len().max(1)) else {
            tracing::error!("no Redis URL to subscribe to invalidations");
            return;
        };
        attempt += 1;
        let session = subscribe_and_apply(url, &channel, &cache, &subscribed);
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = session => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "invalidation subscription dropped; resubscribing");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
        }
    }
}

async fn subscribe_and_apply(
    redis_url: &str,
    channel: &str,
    cache: &Invalidated,
    subscribed: &CancellationToken,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    cache.policies.invalidate_all();
    subscribed.cancel();
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let payload: Vec<u8> = msg.get_payload()?;
        match serde_json::from_slice::<Invalidation>(&payload) {
            Ok(invalidation) => {
                tracing::debug!(?invalidation, "cache invalidation");
                cache.apply(invalidation).await;
            }
            Err(err) => tracing::warn!(%err, "ignoring a malformed invalidation message"),
        }
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Io,
        "pub/sub connection closed",
    )))
}
