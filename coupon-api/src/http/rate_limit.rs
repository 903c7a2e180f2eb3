//! Rate limits on every route but the probes, per caller and per client address: 429
//! `RATE_LIMITED` with `Retry-After` past any of them.
//!
//! The limits are GCRA buckets of the `governor` crate, kept in this instance's memory, not in
//! Redis. During a drop Redis is the one shared resource every issue request already needs
//! (the admission script); a Redis-backed limiter would add a round trip to each request on
//! that same node and a second way for Redis trouble to refuse traffic. The price: with `n`
//! instances behind a balancer a client can get up to `n` times its limit. That is acceptable
//! because a limit here only protects capacity: exactness does not depend on it (the admission
//! script admits each user at most once whatever the rate).
//!
//! Each request meets one per-caller limit: a `service` or `admin` token (a back end acting
//! for many users, often from few addresses) by its role and subject
//! (`RATE_LIMIT_SERVICE_*`) and nothing else; any other request first the per-address limit
//! (`RATE_LIMIT_IP_*`), then a `user` token by its subject (`RATE_LIMIT_USER_*`) and a request
//! without a valid token by its address (`RATE_LIMIT_PUBLIC_*`, lower: the public reads of
//! policies cost MySQL reads). A token is checked once per request (the handler reuses the
//! verified claims); one that does not verify costs a parse and at most a signature check.
//!
//! It runs outside the `Idempotency-Key` layer, so a refused request writes nothing.
//!
//! The client's address is the TCP peer's, unless the peer is one of `TRUSTED_PROXIES` (a
//! load balancer): then it is taken from `X-Forwarded-For`, read from the right, the first
//! address that is not itself a trusted proxy ([`client_address`]). A client can append
//! anything to that header, but only the addresses added by trusted proxies are believed, so a
//! client cannot choose its bucket; and a peer that is not a trusted proxy is never believed.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coupon_core::telemetry::names;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use crate::http::auth::Principal;
use crate::http::error::ApiError;
use coupon_core::auth::Role;

/// How often idle buckets are dropped, bounding the limiters' memory to the callers seen in
/// the last interval or so.
const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

/// The routes no limit applies to: the load balancer's probes, which come often and from few
/// addresses.
const PROBES: [&str; 3] = ["/health", "/ready", "/ready/full"];

/// Rate limit settings (flags or environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitConfig {
    /// Rate limits: `on`, or `off` (benchmarks, the demo).
    #[arg(long, env = "RATE_LIMITS", default_value = "on", value_parser = parse_switch)]
    pub rate_limits: bool,

    /// Sustained requests per second allowed to one user token (by subject), on every route;
    /// 0 turns the per-user limit off.
    #[arg(long, env = "RATE_LIMIT_USER_PER_SEC", default_value_t = 5)]
    pub rate_limit_user_per_sec: u32,

    /// Requests one user may send at once before the per-second rate applies (count).
    #[arg(long, env = "RATE_LIMIT_USER_BURST", default_value_t = 10)]
    pub rate_limit_user_burst: u32,

    /// Sustained requests per second allowed to one `service` or `admin` token (by role and
    /// subject): the order service's and operators' tools; 0 turns it off.
    #[arg(long, env = "RATE_LIMIT_SERVICE_PER_SEC", default_value_t = 1_000)]
    pub rate_limit_service_per_sec: u32,

    /// Requests one `service` or `admin` token may send at once (count).
    #[arg(long, env = "RATE_LIMIT_SERVICE_BURST", default_value_t = 2_000)]
    pub rate_limit_service_burst: u32,

    /// Sustained requests per second allowed to one client address without a valid token
    /// (the public policy reads); 0 turns it off.
    #[arg(long, env = "RATE_LIMIT_PUBLIC_PER_SEC", default_value_t = 20)]
    pub rate_limit_public_per_sec: u32,

    /// Requests one address may send at once without a valid token (count).
    #[arg(long, env = "RATE_LIMIT_PUBLIC_BURST", default_value_t = 40)]
    pub rate_limit_public_burst: u32,

    /// Sustained requests per second allowed to one client address, whatever its token; 0
    /// turns the per-address limit off. High by default: many users can share one address
    /// (carrier-grade NAT, an office).
    #[arg(long, env = "RATE_LIMIT_IP_PER_SEC", default_value_t = 500)]
    pub rate_limit_ip_per_sec: u32,

    /// Requests one client address may send at once before the per-second rate applies
    /// (count).
    #[arg(long, env = "RATE_LIMIT_IP_BURST", default_value_t = 1_000)]
    pub rate_limit_ip_burst: u32,

    /// Load balancers and proxies whose `X-Forwarded-For` is believed: comma-separated
    /// addresses or networks (`10.0.0.0/8,192.168.1.7`). Empty (the default): the client is
    /// the TCP peer, and the header is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    pub trusted_proxies: Vec<IpNet>,
}

/// Parses an address (`10.1.2.3`, a single host) or a network (`10.0.0.0/8`).
///
/// # Errors
/// Neither.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text}: expected an IP address or a network such as 10.0.0.0/8"))
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
    service: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    public: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    trusted_proxies: Arc<[IpNet]>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("user", &self.user.is_some())
            .field("service", &self.service.is_some())
            .field("public", &self.public.is_some())
            .field("ip", &self.ip.is_some())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

/// Which limit refused a request (the `scope` label of `coupon_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Scope {
    /// A user token's subject.
    User,
    /// A service or admin token's role and subject.
    Service,
    /// A client address without a valid token.
    Public,
    /// A client address, whatever its token.
    Ip,
}

impl Scope {
    /// Every scope, for registering the metric's series.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl RateLimits {
    /// The limiters `config` asks for (none when switched off).
    pub fn new(config: &RateLimitConfig) -> Self {
        let trusted_proxies: Arc<[IpNet]> = config.trusted_proxies.clone().into();
        if !config.rate_limits {
            return Self {
                trusted_proxies,
                ..Self::default()
            };
        }
        Self {
            user: quota(config.rate_limit_user_per_sec, config.rate_limit_user_burst)
                .map(|q| Arc::new(RateLimiter::keyed(q))),
            service: quota(
                config.rate_limit_service_per_sec,
                config.rate_limit_service_burst,
            )
            .map(|q| Arc::new(RateLimiter::keyed(q))),
            public: quota(
                config.rate_limit_public_per_sec,
                config.rate_limit_public_burst,
            )
            .map(|q| Arc::new(RateLimiter::keyed(q))),
            ip: quota(config.rate_limit_ip_per_sec, config.rate_limit_ip_burst)
                .map(|q| Arc::new(RateLimiter::keyed(q))),
            trusted_proxies,
        }
    }

    /// Whether any limit is on.
    pub fn any(&self) -> bool {
        self.user.is_some() || self.service.is_some() || self.public.is_some() || self.ip.is_some()
    }

    /// Drops idle buckets every minute until `stop` is cancelled.
    pub async fn retain_recent(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(RETAIN_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {
                    for by_name in [&self.user, &self.service].into_iter().flatten() {
                        by_name.retain_recent();
                        by_name.shrink_to_fit();
                    }
                    for by_address in [&self.public, &self.ip].into_iter().flatten() {
                        by_address.retain_recent();
                        by_address.shrink_to_fit();
                    }
                }
            }
        }
    }
}

/// Registers the refusal counter at 0 for every scope.
pub(crate) fn register_metrics() {
    for scope in Scope::ALL {
        metrics::counter!(names::RATE_LIMITED, "scope" => scope.as_str()).increment(0);
    }
}

/// The client a request comes from: `peer` (the TCP peer), unless it is one of `trusted`
/// proxies; then the right-most address of `X-Forwarded-For` (every occurrence, in order)
/// that is not itself trusted, or the left-most when all are. An entry that is not an address
/// ends the walk at the last address believed: what lies left of it came from the client.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    for entry in forwarded.into_iter().rev() {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: Option<&Arc<DefaultKeyedRateLimiter<K>>>,
    key: &K,
    scope: Scope,
) -> Result<(), Duration> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| {
        metrics::counter!(names::RATE_LIMITED, "scope" => scope.as_str()).increment(1);
        not_until.wait_time_from(DefaultClock::default().now())
    })
}

/// Middleware of every route but the probes (module doc); `startup::router` adds it only when
/// some limit is on. A request whose token does not verify is limited as an anonymous one and
/// goes on: the route decides whether it needed a token (401).
pub async fn middleware(request: Request, next: Next) -> Response {
    let Some(limits) = request.extensions().get::<RateLimits>().cloned() else {
        return next.run(request).await;
    };
    if PROBES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let client = peer.map(|peer| client_address(peer, &parts.headers, &limits.trusted_proxies));
    let principal = if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        Principal::from_request_parts(&mut parts, &()).await.ok()
    } else {
        None
    };
    let checked = match principal.map(|p| p.claims) {
        Some(claims) if claims.role != Role::User => {
            let caller = format!("{}:{}", claims.role.as_str(), claims.sub);
            check(limits.service.as_ref(), &caller, Scope::Service)
        }
        user => {
            let by_address = match client {
                Some(client) => check(limits.ip.as_ref(), &client, Scope::Ip),
                None => Ok(()),
            };
            by_address.and_then(|()| match (user, client) {
                (Some(claims), _) => check(limits.user.as_ref(), &claims.sub, Scope::User),
                (None, Some(client)) => check(limits.public.as_ref(), &client, Scope::Public),
                (None, None) => Ok(()),
            })
        }
    };
    if let Err(wait) = checked {
        let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return ApiError::RateLimited { retry_after_secs }.into_response();
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
            rate_limit_service_per_sec: 0,
            rate_limit_service_burst: 10,
            rate_limit_public_per_sec: 0,
            rate_limit_public_burst: 10,
            rate_limit_ip_per_sec: 1,
            rate_limit_ip_burst: 1,
            trusted_proxies: Vec::new(),
        });
        assert!(limits.user.is_none() && limits.service.is_none() && limits.public.is_none());
        assert!(limits.ip.is_some());
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn only_a_trusted_proxy_is_believed_and_only_for_what_it_added() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = [
            parse_network("10.0.0.0/8").unwrap(),
            parse_network("192.168.1.7").unwrap(),
        ];
        let spoofed = forwarded(&["6.6.6.6"]);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client_address(ip("203.0.113.9"), &spoofed, &trusted),
            ip("203.0.113.9")
        );
        // A trusted balancer appended the client's address to what the client sent.
        let through = forwarded(&["6.6.6.6, 203.0.113.9"]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &through, &trusted),
            ip("203.0.113.9")
        );
        // Two trusted hops, the header repeated.
        let two = forwarded(&["6.6.6.6", "198.51.100.4, 192.168.1.7"]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &two, &trusted),
            ip("198.51.100.4")
        );
        // Garbage left of a believed address ends the walk there.
        let junk = forwarded(&["not-an-ip, 203.0.113.9"]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &junk, &trusted),
            ip("203.0.113.9")
        );
        // No header from a trusted peer: the peer.
        assert_eq!(
            client_address(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
        assert!(parse_network("10.0.0.0/33").is_err());
    }
}
