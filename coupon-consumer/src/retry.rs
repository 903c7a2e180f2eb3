//! Retrying a step of a batch, and the two stages of a stop.
//!
//! A stop has two stages ([`Shutdown`]): on the signal the loops take no new work and a
//! back-off pause ends early, so the batch in hand is retried at once; `SHUTDOWN_GRACE_MS`
//! later ([`crate::config::ConsumerConfig::shutdown_grace`]) whatever is still in hand is
//! abandoned uncommitted (its messages are redelivered to the next member, and the unique key
//! absorbs whatever part of it had already been persisted). An attempt in flight is never cut
//! by the signal itself, only by the end of the grace period.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use coupon_core::telemetry::names;
use tokio_util::sync::CancellationToken;

use crate::ConsumerStats;

/// The two stages of a stop, shared by every loop (clones share the stages).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abandon: CancellationToken,
}

impl Shutdown {
    /// Starts the first stage: take no new work.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Starts the second stage: give up the work in hand.
    pub fn abandon(&self) {
        self.stop.cancel();
        self.abandon.cancel();
    }

    /// Whether the first stage has started.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes when the first stage starts (at once if it has).
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Completes when the second stage starts (at once if it has).
    pub async fn abandoned(&self) {
        self.abandon.cancelled().await;
    }

    /// Sleeps `pause`, or less when the first stage starts during it. Once stopping, sleeps
    /// the whole pause (the caller bounds it by [`Self::abandoned`]), so a step failing during
    /// the grace period is not retried in a tight loop.
    pub async fn backoff(&self, pause: Duration) {
        if self.is_stopping() {
            tokio::time::sleep(pause).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.stopping() => {}
            }
        }
    }
}

/// A step the consumer retries: the `step` label of `coupon_consumer_retries_total`
/// (monitoring/METRICS.md), as its snake-case name; every value is pre-registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum RetryStep {
    /// The issue loop's claim of a batch's admissions.
    AdmissionCheck,
    /// The issue loop's write of a batch.
    Persist,
    /// The issue loop's dead letters.
    DeadLetter,
    /// The payment loop's write of a result.
    PaymentApply,
    /// The payment loop's dead letters.
    PaymentDeadLetter,
}

impl RetryStep {
    /// Every step.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Retries a failing step with exponential back-off (100 ms doubling up to
/// `RETRY_MAX_DELAY_MS`, with jitter, without a limit on attempts) and counts each failure.
#[derive(Debug, Clone)]
pub struct Retrier {
    backoff: ExponentialBuilder,
    stats: Arc<ConsumerStats>,
}

impl Retrier {
    /// A retrier pausing at most `max_delay` between attempts, counting failures in `stats`.
    pub fn new(max_delay: Duration, stats: Arc<ConsumerStats>) -> Self {
        Self {
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(max_delay)
                .with_jitter()
                .without_max_times(),
            stats,
        }
    }

    /// Runs `attempt` until it succeeds, counting each failure in
    /// `coupon_consumer_retries_total{step}` and in
    /// [`ConsumerStats::failed_attempts`]. `None` when `shutdown` reached its second stage
    /// first: the attempt in flight is dropped and the caller commits nothing.
    pub async fn run<T, E, F, Fut>(
        &self,
        step: RetryStep,
        attempt: F,
        shutdown: &Shutdown,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let sleeper = shutdown.clone();
        let retried = attempt
            .retry(self.backoff)
            .sleep(move |pause| {
                let sleeper = sleeper.clone();
                async move { sleeper.backoff(pause).await }
            })
            .notify(|err: &E, pause: Duration| {
                self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::CONSUMER_RETRIES, "step" => step.as_str()).increment(1);
                tracing::warn!(error = %err, ?pause, step = step.as_str(), "failed; retrying");
            });
        tokio::select! {
            result = retried => result.ok(),
            () = shutdown.abandoned() => {
                tracing::warn!(step = step.as_str(), "shutdown grace period over; giving up the work in hand");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    use super::*;

    fn retrier() -> Retrier {
        Retrier::new(Duration::from_millis(200), Arc::default())
    }

    #[tokio::test]
    async fn an_attempt_in_flight_when_the_stop_comes_still_finishes() {
        let shutdown = Shutdown::default();
        let stopper = shutdown.clone();
        let attempt = || async {
            stopper.stop();
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, String>(7)
        };

        let result = retrier().run(RetryStep::Persist, attempt, &shutdown).await;

        assert_eq!(result, Some(7));
    }

    #[tokio::test]
    async fn a_stop_during_the_backoff_retries_at_once() {
        let shutdown = Shutdown::default();
        let retrier = Retrier::new(Duration::from_secs(30), Arc::default());
        let calls = AtomicU32::new(0);
        let attempt = || async {
            if calls.fetch_add(1, Ordering::Relaxed) < 1 {
                Err("MySQL is away".to_owned())
            } else {
                Ok(())
            }
        };
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stopper.stop();
        });
        let started = Instant::now();

        let result = retrier.run(RetryStep::Persist, attempt, &shutdown).await;

        assert_eq!(result, Some(()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited the back-off out"
        );
    }

    #[tokio::test]
    async fn a_step_that_keeps_failing_is_given_up_when_the_grace_ends() {
        let shutdown = Shutdown::default();
        let stats = Arc::new(ConsumerStats::default());
        let retrier = Retrier::new(Duration::from_millis(20), Arc::clone(&stats));
        let attempt = || async { Err::<(), _>("MySQL is away") };
        shutdown.stop();
        let abandoner = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            abandoner.abandon();
        });

        let result = retrier.run(RetryStep::Persist, attempt, &shutdown).await;

        assert_eq!(result, None);
        let failed = stats.failed_attempts.load(Ordering::Relaxed);
        assert!(failed >= 2, "retried during the grace period ({failed})");
    }

    #[tokio::test]
    async fn before_a_stop_a_failing_step_is_retried_until_it_succeeds() {
        let calls = AtomicU32::new(0);
        let attempt = || async {
            if calls.fetch_add(1, Ordering::Relaxed) < 3 {
                Err("deadlock".to_owned())
            } else {
                Ok("done")
            }
        };

        let result = retrier()
            .run(RetryStep::Persist, attempt, &Shutdown::default())
            .await;

        assert_eq!(result, Some("done"));
        assert_eq!(calls.load(Ordering::Relaxed), 4);
    }
}
