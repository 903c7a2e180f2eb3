//! Rate limits on the issue and redeem endpoints: per user and per client address, 429
//! `RATE_LIMITED` with `Retry-After` past either.
//!
//! The limits are GCRA buckets of the `governor` crate, kept in this instance's memory, not in
//! Redis. During a drop Redis is the one shared resource every issue request already needs
//! (the admission script); a Redis-backed limiter would add a round trip to each request on
//! that same node and a second way for Redis trouble to refuse traffic. The price: with `n`
//! instances behind a balancer a client can get up to `n` times its limit. That is acceptable
//! because a limit here only protects capacity: exactness does not depend on it (the admission
//! script admits each user at most once whatever the rate).
//!
//! Per user, the key is the token's subject; admin and service tokens (trusted back ends
//! acting for many users: a support tool, the order service) are limited per address only. Per address, the key is the TCP peer's IP: behind a
//! proxy that is the proxy's address, so set the address limit for the proxy or turn it off
//! (`RATE_LIMIT_IP_PER_SEC=0`).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coupon_core::telemetry::names;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::error::ApiError;
use coupon_core::auth::Role;

/// How often idle buckets are dropped, bounding the limiters' memory to the callers seen in
/// the last interval or so.
const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

/// Rate limit settings (flags or environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitConfig {
    /// Rate limits on the issue and redeem endpoints: `on`, or `off` (benchmarks, the demo).
    #[arg(long, env = "RATE_LIMITS", default_value = "on", value_parser = parse_switch)]
    pub rate_limits: bool,

    /// Sustained requests per second allowed to one user on the limited endpoints; 0 turns
    /// the per-user limit off.
    #[arg(long, env = "RATE_LIMIT_USER_PER_SEC", default_value_t = 5)]
    pub rate_limit_user_per_sec: u32,

    /// Requests one user may send at once before the per-second rate applies (count).
    #[arg(long, env = "RATE_LIMIT_USER_BURST", default_value_t = 10)]
    pub rate_limit_user_burst: u32,

    /// Sustained requests per second allowed to one client IP on the limited endpoints; 0
    /// turns the per-address limit off. High by default: many users can share one address
    /// (carrier-grade NAT, an office).
    #[arg(long, env = "RATE_LIMIT_IP_PER_SEC", default_value_t = 500)]
    pub rate_limit_ip_per_sec: u32,

    /// Requests one client IP may send at once before the per-second rate applies (count).
    #[arg(long, env = "RATE_LIMIT_IP_BURST", default_value_t = 1_000)]
    pub rate_limit_ip_burst: u32,
}

/// Parses `on`/`off` (also `true`/`false`).
///
/// # Errors
/// Any other text.
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("{text}: expected on or off")),
    }
}

/// The limiters of one instance, shared by every request (a request extension).
#[derive(Clone, Default)]
pub struct RateLimits {
    user: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("user", &self.user.is_some())
            .field("ip", &self.ip.is_some())
            .finish()
    }
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl RateLimits {
    /// The limiters `config` asks for (none when switched off).
    pub fn new(config: &RateLimitConfig) -> Self {
        if !config.rate_limits {
            return Self::default();
        }
        Self {
            user: quota(config.rate_limit_user_per_sec, config.rate_limit_user_burst)
                .map(|q| Arc::new(RateLimiter::keyed(q))),
            ip: quota(config.rate_limit_ip_per_sec, config.rate_limit_ip_burst)
                .map(|q| Arc::new(RateLimiter::keyed(q))),
        }
    }

    /// Drops idle buckets every minute until `stop` is cancelled.
    pub async fn retain_recent(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(RETAIN_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {
                    if let Some(user) = &self.user {
                        user.retain_recent();
                        user.shrink_to_fit();
                    }
                    if let Some(ip) = &self.ip {
                        ip.retain_recent();
                        ip.shrink_to_fit();
                    }
                }
            }
        }
    }
}

/// Registers the refusal counter at 0 for both scopes.
pub(crate) fn register_metrics() {
    for scope in ["user", "ip"] {
        metrics::counter!(names::RATE_LIMITED, "scope" => scope).increment(0);
    }
}

fn refuse(scope: &'static str, wait: Duration) -> Response {
    metrics::counter!(names::RATE_LIMITED, "scope" => scope).increment(1);
    let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::RateLimited { retry_after_secs }.into_response()
}

/// Middleware of the limited routes: the address limit first (before any token is checked,
/// so a flood of bad tokens is cut cheaply), then the token (401/403 as usual), then the
/// user limit.
pub async fn middleware(request: Request, next: Next) -> Response {
    let Some(limits) = request.extensions().get::<RateLimits>().cloned() else {
        return next.run(request).await;
    };
    if let Some(ip_limiter) = &limits.ip {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        if let Some(ip) = peer {
            if let Err(not_until) = ip_limiter.check_key(&ip) {
                return refuse(
                    "ip",
                    not_until.wait_time_from(DefaultClock::default().now()),
                );
            }
        }
    }
    let Some(user_limiter) = &limits.user else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::from_request_parts(&mut parts, &()).await {
        Ok(principal) => principal,
        Err(refused) => return refused.into_response(),
    };
    if principal.claims.role == Role::User {
        if let Err(not_until) = user_limiter.check_key(&principal.claims.sub) {
            return refuse(
                "user",
                not_until.wait_time_from(DefaultClock::default().now()),
            );
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse() {
        assert_eq!(parse_switch("OFF"), Ok(false));
        assert_eq!(parse_switch("on"), Ok(true));
        assert!(parse_switch("maybe").is_err());
    }

    #[test]
    fn a_zero_rate_turns_a_limit_off() {
        let limits = RateLimits::new(&RateLimitConfig {
            rate_limits: true,
            rate_limit_user_per_sec: 0,
            rate_limit_user_burst: 10,
            rate_limit_ip_per_sec: 1,
            rate_limit_ip_burst: 1,
        });
        assert!(limits.user.is_none() && limits.ip.is_some());
    }
}
