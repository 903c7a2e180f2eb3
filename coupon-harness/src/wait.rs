//! [`Wait`]: polling a readiness check while watching the processes it depends on.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::{Error, LogTail, Process};

/// What a readiness check returns: whether it passed (with a value) or, when it can say, why
/// not. Implemented for `bool`, `Option<T>` and `Result<T, E>`, so a check is any async closure
/// returning one of those.
pub trait CheckOutcome<T> {
    /// `Ok` when the check passed; `Err` with the reason it failed, if it gave one.
    fn outcome(self) -> Result<T, Option<String>>;
}

impl CheckOutcome<()> for bool {
    fn outcome(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> CheckOutcome<T> for Option<T> {
    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> CheckOutcome<T> for Result<T, E> {
    fn outcome(self) -> Result<T, Option<String>> {
        // `{:#}`: an `anyhow::Error` prints its whole chain.
        self.map_err(|err| Some(format!("{err:#}")))
    }
}

/// How long to wait for what, and how often to look: `Wait::new("coupon-api /ready",
/// Duration::from_secs(60)).every(Duration::from_millis(200))`.
#[derive(Debug, Clone)]
pub struct Wait {
    what: String,
    timeout: Duration,
    interval: Duration,
}

impl Wait {
    /// A wait for `what` (named in errors) of at most `timeout`, looking every 50 ms.
    pub fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Self {
            what: what.into(),
            timeout,
            interval: Duration::from_millis(50),
        }
    }

    /// Looks every `interval` instead (a costly check, such as a Kafka metadata request,
    /// looks less often).
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Polls `check` until it passes and returns its value. Before each check every process
    /// of `watched` is looked at: one that exited on its own ends the wait at once (a stopped
    /// or never started one does not).
    ///
    /// # Errors
    /// [`Error::Exited`] when a watched process exited, with its status and log tail;
    /// [`Error::NotReady`] when `check` still failed after the timeout, with its last reason
    /// and every watched process's log tail.
    pub async fn until<P, T, F, Fut>(&self, watched: &mut [P], mut check: F) -> Result<T, Error>
    where
        P: AsMut<Process>,
        F: FnMut() -> Fut,
        Fut: Future,
        Fut::Output: CheckOutcome<T>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            for process in watched.iter_mut().map(AsMut::as_mut) {
                if let Some(status) = process.exited() {
                    return Err(Error::Exited {
                        name: process.name().to_owned(),
                        what: self.what.clone(),
                        status,
                        log: process.log_tail(LogTail::LINES),
                    });
                }
            }
            let last = match check().await.outcome() {
                Ok(value) => return Ok(value),
                Err(last) => last,
            };
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: self.what.clone(),
                    timeout: self.timeout,
                    last,
                    logs: watched
                        .iter_mut()
                        .filter_map(|p| p.as_mut().log_tail(LogTail::LINES))
                        .collect(),
                });
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_check_says_whether_it_passed() {
        assert_eq!(true.outcome(), Ok(()));
        assert_eq!(false.outcome(), Err(None));
        assert_eq!(Some(3).outcome(), Ok(3));
        assert_eq!(None::<u8>.outcome(), Err(None));
        assert_eq!(
            Err::<u8, _>("refused").outcome(),
            Err(Some("refused".to_owned()))
        );
    }

    #[tokio::test]
    async fn a_check_that_never_passes_times_out_with_its_last_reason() {
        let wait =
            Wait::new("nothing", Duration::from_millis(120)).every(Duration::from_millis(10));
        let mut calls = 0;
        let err = wait
            .until(&mut [] as &mut [Process], || {
                calls += 1;
                std::future::ready(Err::<(), _>(format!("try {calls}")))
            })
            .await
            .expect_err("never ready");
        let Error::NotReady { what, last, .. } = &err else {
            panic!("not a timeout: {err}");
        };
        assert_eq!(what, "nothing");
        assert_eq!(last.as_deref(), Some(format!("try {calls}").as_str()));
        assert!(calls >= 2, "checked {calls} times");
    }
}
