//! coupon-api configuration: the shared store settings plus the HTTP server's own.

use std::net::SocketAddr;
use std::time::Duration;

use coupon_core::auth::AuthConfig;
use coupon_core::config::{
    parse_millis, parse_optional_addr, parse_secs, OptionalAddr, StoreConfig,
};

use crate::http::rate_limit::RateLimitConfig;
use crate::issue::breaker::BreakerConfig;

/// Everything coupon-api reads at start-up (flags or environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
    /// MySQL, Redis and Kafka settings.
    #[command(flatten)]
    pub stores: StoreConfig,

    /// Bearer-token (JWT) settings.
    #[command(flatten)]
    pub auth: AuthConfig,

    /// The issue path's Redis circuit breaker.
    #[command(flatten)]
    pub breaker: BreakerConfig,

    /// Rate limits of every route but the probes, and the trusted proxies.
    #[command(flatten)]
    pub rate_limits: RateLimitConfig,

    /// Address of the Prometheus `/metrics` endpoint, apart from public traffic. `off`
    /// disables it. coupon-consumer's default is the next port, so both start side by side.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_optional_addr)]
    pub metrics_listen: OptionalAddr,

    /// Address of the public HTTP API. Port 0 picks a free port (tests).
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The consumer group of coupon-consumer: its committed offsets tell a rebuild of a lost
    /// admission set which issue messages MySQL does not hold yet.
    #[arg(long, env = "KAFKA_CONSUMER_GROUP", default_value = "coupon-consumer")]
    pub kafka_consumer_group: String,

    /// MySQL connections (count) of the order routes' own pool (redeem, cancel, reserve,
    /// confirm, release), apart from `DATABASE_MAX_CONNECTIONS`: a flood of reads or of admin
    /// calls cannot make the shop's checkout wait for a connection.
    #[arg(long, env = "DATABASE_ORDER_MAX_CONNECTIONS", default_value_t = 8)]
    pub database_order_max_connections: u32,

    /// Most policies kept in the local cache (count).
    #[arg(long, env = "POLICY_CACHE_CAPACITY", default_value_t = 10_000)]
    pub policy_cache_capacity: u64,

    /// How long (ms) a cached policy is trusted without an invalidation.
    #[arg(
        id = "policy_cache_ttl_ms",
        long = "policy-cache-ttl-ms",
        value_name = "POLICY_CACHE_TTL_MS",
        env = "POLICY_CACHE_TTL_MS",
        default_value = "30000",
        value_parser = parse_millis
    )]
    pub policy_cache_ttl: Duration,

    /// Most admission-set members (user ids, count, 8 bytes each) copied from Redis into this
    /// instance for sold-out coupons, all coupons together. With its copy, a sold-out coupon
    /// is answered (`SOLD_OUT`, or `ALREADY_ISSUED` for a holder) with no Redis call; a coupon
    /// whose set does not fit keeps the `SISMEMBER` check. 0 turns the copies off.
    #[arg(long, env = "SOLD_OUT_HOLDERS_MAX", default_value_t = 4_000_000)]
    pub sold_out_holders_max: u64,

    /// Most `(coupon, user)` pairs this instance admitted and published that it remembers
    /// (count). A user it remembers who asks again is told
    /// `ALREADY_ISSUED` without Redis: an admission that reached the broker is never undone.
    /// 0 turns it off.
    #[arg(long, env = "ADMITTED_CACHE_CAPACITY", default_value_t = 200_000)]
    pub admitted_cache_capacity: u64,

    /// Longest time (ms) from a request's arrival to its response head. Past it the client gets
    /// 503 `UNAVAILABLE` with `Retry-After`: every store call has its own, shorter bound, so
    /// this only catches what they miss. An issue request already admitted keeps running to
    /// its publish or undo (see `issue::routes`).
    #[arg(
        id = "request_timeout_ms",
        long = "request-timeout-ms",
        value_name = "REQUEST_TIMEOUT_MS",
        env = "REQUEST_TIMEOUT_MS",
        default_value = "10000",
        value_parser = parse_millis
    )]
    pub request_timeout: Duration,

    /// Longest time (ms) a client may take to send a request's headers; past it the
    /// connection is closed (slow clients, "slowloris").
    #[arg(
        id = "header_read_timeout_ms",
        long = "header-read-timeout-ms",
        value_name = "HEADER_READ_TIMEOUT_MS",
        env = "HEADER_READ_TIMEOUT_MS",
        default_value = "5000",
        value_parser = parse_millis
    )]
    pub header_read_timeout: Duration,

    /// Longest wait (ms) for the next piece of a request body; past it the request is refused
    /// with 408 `REQUEST_TIMEOUT`.
    #[arg(
        id = "body_read_timeout_ms",
        long = "body-read-timeout-ms",
        value_name = "BODY_READ_TIMEOUT_MS",
        env = "BODY_READ_TIMEOUT_MS",
        default_value = "5000",
        value_parser = parse_millis
    )]
    pub body_read_timeout: Duration,

    /// Largest request body accepted (bytes); a larger one is refused with VALIDATION_FAILED.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Default length of a checkout hold (seconds) when a reserve request names none.
    #[arg(
        id = "reservation_hold_secs",
        long = "reservation-hold-secs",
        value_name = "RESERVATION_HOLD_SECS",
        env = "RESERVATION_HOLD_SECS",
        default_value = "600",
        value_parser = parse_secs
    )]
    pub reservation_hold: Duration,

    /// How long an `Idempotency-Key` is remembered (seconds).
    #[arg(
        id = "idempotency_ttl_secs",
        long = "idempotency-ttl-secs",
        value_name = "IDEMPOTENCY_TTL_SECS",
        env = "IDEMPOTENCY_TTL_SECS",
        default_value = "86400",
        value_parser = parse_secs
    )]
    pub idempotency_ttl: Duration,

    /// Lease (ms) of a code generation job: renewed by every committed batch; a job whose
    /// lease ran out (its instance died) is resumed by another instance.
    #[arg(
        id = "code_job_lease_ms",
        long = "code-job-lease-ms",
        value_name = "CODE_JOB_LEASE_MS",
        env = "CODE_JOB_LEASE_MS",
        default_value = "30000",
        value_parser = parse_millis
    )]
    pub code_job_lease: Duration,

    /// Longest wait (ms) for in-flight requests to finish after SIGTERM/Ctrl-C.
    #[arg(
        id = "shutdown_grace_ms",
        long = "shutdown-grace-ms",
        value_name = "SHUTDOWN_GRACE_MS",
        env = "SHUTDOWN_GRACE_MS",
        default_value = "10000",
        value_parser = parse_millis
    )]
    pub shutdown_grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiConfig,
    }

    #[test]
    fn durations_keep_their_defaults() {
        let api = Cli::parse_from(["coupon-api"]).api;
        assert_eq!(api.policy_cache_ttl, Duration::from_millis(30_000));
        assert_eq!(api.request_timeout, Duration::from_millis(10_000));
        assert_eq!(api.header_read_timeout, Duration::from_millis(5_000));
        assert_eq!(api.body_read_timeout, Duration::from_millis(5_000));
        assert_eq!(api.reservation_hold, Duration::from_secs(600));
        assert_eq!(api.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(api.code_job_lease, Duration::from_millis(30_000));
        assert_eq!(api.shutdown_grace, Duration::from_millis(10_000));
        assert_eq!(api.breaker.open_wait, Duration::from_millis(1_000));
        assert_eq!(api.auth.jwt_max_lifetime, Duration::from_secs(86_400));
    }

    #[test]
    fn a_duration_flag_keeps_its_name_and_its_unit() {
        let api = Cli::parse_from([
            "coupon-api",
            "--shutdown-grace-ms",
            "250",
            "--reservation-hold-secs",
            "90",
            "--redis-breaker-open-ms",
            "2s",
            "--idempotency-ttl-secs",
            "1h",
        ])
        .api;
        assert_eq!(api.shutdown_grace, Duration::from_millis(250));
        assert_eq!(api.reservation_hold, Duration::from_secs(90));
        assert_eq!(api.breaker.open_wait, Duration::from_secs(2));
        assert_eq!(api.idempotency_ttl, Duration::from_secs(3_600));
    }
}
