//! The circuit breaker in front of Redis on the issue path.
//!
//! Every Redis call already has a timeout (`REDIS_TIMEOUT_MS`), so no request hangs. The
//! breaker adds what a timeout cannot: once `REDIS_BREAKER_FAILURES` calls in a row have
//! failed, issue requests are refused at once with 503 `UNAVAILABLE` and `Retry-After`,
//! without queuing behind a dead connection, and never admitted without the script (docs/invariants.md
//! 7). After a back-off (`REDIS_BREAKER_OPEN_MS`, doubling up to ten times that while failures
//! continue) the breaker lets one call through as a probe; a background task also probes with
//! `PING` while it is open, so it closes again without waiting for traffic.
//!
//! The state machine is the `failsafe` crate's (consecutive-failures policy, exponential
//! back-off); its state is the gauge `coupon_redis_circuit_state` (0 closed, 1 half-open,
//! 2 open). Undoing an admission after a failed publish is never gated: it is compensation
//! and is always attempted. Redeem by code of a limited policy admits through the breaker too
//! ([`GuardedAdmission`]).

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coupon_core::codes::CodeAdmission;
use coupon_core::config::parse_millis;
use coupon_core::domain::UserId;
use coupon_core::issue::admission::{AdmissionStore, AdmitOutcome, StockShards};
use coupon_core::telemetry::names;
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::futures::CircuitBreaker as _;
use failsafe::{Config, Instrument, StateMachine};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::http::error::ApiError;

/// Breaker state as exported: 0 closed, 1 half-open, 2 open.
const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// How often the background probe looks at an open breaker.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Settings of the breaker (flags or environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct BreakerConfig {
    /// Consecutive failed Redis calls on the issue path that open the breaker (count).
    #[arg(
        id = "redis_breaker_failures",
        long = "redis-breaker-failures",
        value_name = "REDIS_BREAKER_FAILURES",
        env = "REDIS_BREAKER_FAILURES",
        default_value_t = 5
    )]
    pub failures: u32,

    /// First wait (ms) of an open breaker before a probe; doubles while probes fail, up to ten
    /// times this.
    #[arg(
        id = "redis_breaker_open_ms",
        long = "redis-breaker-open-ms",
        value_name = "REDIS_BREAKER_OPEN_MS",
        env = "REDIS_BREAKER_OPEN_MS",
        default_value = "1000",
        value_parser = parse_millis
    )]
    pub open_wait: Duration,
}

/// The breaker's waits while open: `first`, doubling on each failed probe, at most `max`.
/// (`failsafe::backoff::exponential` refuses starts under one second.)
#[derive(Debug, Clone, Copy)]
struct Doubling {
    next: Duration,
    max: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(wait)
    }
}

/// Mirrors the state machine's transitions into the gauge and a shared byte.
#[derive(Debug, Clone)]
struct Gauge(Arc<AtomicU8>);

impl Gauge {
    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
        metrics::gauge!(names::REDIS_CIRCUIT_STATE).set(f64::from(state));
    }
}

impl Instrument for Gauge {
    fn on_call_rejected(&self) {
        metrics::counter!(names::REDIS_CIRCUIT_REJECTED).increment(1);
    }

    fn on_open(&self) {
        tracing::warn!("Redis circuit breaker opened: issue requests are refused with 503");
        self.set(OPEN);
    }

    fn on_half_open(&self) {
        self.set(HALF_OPEN);
    }

    fn on_closed(&self) {
        tracing::info!("Redis circuit breaker closed: issuing resumed");
        self.set(CLOSED);
    }
}

/// A call through [`RedisBreaker::call`] that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open: the call was refused and never made.
    #[error("the Redis circuit breaker is open")]
    Open,
    /// The call was made and failed with `E`.
    #[error(transparent)]
    Failed(E),
}

impl<E: std::error::Error + Send + Sync + 'static> From<BreakerError<E>> for ApiError {
    fn from(err: BreakerError<E>) -> Self {
        ApiError::unavailable(err)
    }
}

/// The breaker; cheap to clone.
#[derive(Clone)]
pub struct RedisBreaker {
    machine: StateMachine<ConsecutiveFailures<Doubling>, Gauge>,
    state: Arc<AtomicU8>,
}

impl std::fmt::Debug for RedisBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBreaker")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisBreaker {
    /// A closed breaker with `config`'s thresholds.
    pub fn new(config: &BreakerConfig) -> Self {
        let open = config.open_wait.max(Duration::from_millis(1));
        let policy = failure_policy::consecutive_failures(
            config.failures.max(1),
            Doubling {
                next: open,
                max: open * 10,
            },
        );
        let state = Arc::new(AtomicU8::new(CLOSED));
        let gauge = Gauge(state.clone());
        gauge.set(CLOSED);
        metrics::counter!(names::REDIS_CIRCUIT_REJECTED).increment(0);
        Self {
            machine: Config::new()
                .failure_policy(policy)
                .instrument(gauge)
                .build(),
            state,
        }
    }

    /// Whether the breaker is open (or half-open and probing): for tests and readiness.
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Relaxed) != CLOSED
    }

    /// Runs one Redis call through the breaker: refused at once while open; a failure counts
    /// towards opening it.
    ///
    /// # Errors
    /// [`BreakerError::Open`] when refused (the call was never made), or the call's own error
    /// in [`BreakerError::Failed`]; both become 503 `UNAVAILABLE` ([`ApiError`]'s `From`).
    pub async fn call<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BreakerError<E>> {
        match self.machine.call(call).await {
            Ok(value) => Ok(value),
            Err(failsafe::Error::Inner(err)) => Err(BreakerError::Failed(err)),
            Err(failsafe::Error::Rejected) => Err(BreakerError::Open),
        }
    }

    /// Probes an open breaker with `PING` every 250 ms until `stop` is cancelled, so it closes
    /// as soon as Redis answers, traffic or not.
    pub async fn probe(self, admission: AdmissionStore, stop: CancellationToken) {
        let mut every = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {
                    if self.is_open() && self.machine.is_call_permitted() {
                        let _ = self.machine.call(admission.ping()).await;
                    }
                }
            }
        }
    }
}

/// The admission behind the breaker, for redeem by code ([`CodeAdmission`]): the admission
/// goes through [`RedisBreaker::call`] (refused at once while open); the undo and the holder
/// note are compensation and bypass it, as the issue path's undo does.
pub struct GuardedAdmission<'a> {
    /// The breaker.
    pub breaker: &'a RedisBreaker,
    /// The admission store.
    pub admission: &'a AdmissionStore,
}

impl CodeAdmission for GuardedAdmission<'_> {
    async fn admit(
        &self,
        coupon: StockShards,
        user: UserId,
        request: Uuid,
    ) -> anyhow::Result<AdmitOutcome> {
        Ok(self
            .breaker
            .call(self.admission.admit(coupon, user, request))
            .await?)
    }

    // The compensations are the store's own, unguarded.
    async fn undo(&self, coupon: StockShards, user: UserId, request: Uuid) -> anyhow::Result<bool> {
        CodeAdmission::undo(self.admission, coupon, user, request).await
    }

    async fn settle(&self, coupon: StockShards, user: UserId) -> anyhow::Result<()> {
        CodeAdmission::settle(self.admission, coupon, user).await
    }

    async fn note_holder(&self, coupon: StockShards, user: UserId) -> anyhow::Result<()> {
        CodeAdmission::note_holder(self.admission, coupon, user).await
    }
}
