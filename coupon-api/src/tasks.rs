//! The tasks coupon-api spawns, owned: every background loop and every task a request leaves
//! behind (the issue path's admission and publish, an undo being retried, a code redeem, a
//! rebuild, a reconciliation, a code generation job) is spawned through [`Tasks`], and a stop
//! waits for them, within the stop's grace (`SHUTDOWN_GRACE_MS`), as coupon-consumer does. So
//! the pending-mark settler's final drain and an undo's retries are not cut off at exit.
//!
//! Built on `tokio_util`'s `TaskTracker` (which counts tasks without keeping their results)
//! and a `CancellationToken` that the long-running loops select on
//! (<https://docs.rs/tokio-util/latest/tokio_util/task/task_tracker/struct.TaskTracker.html>).

use std::future::Future;
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The owner of coupon-api's tasks; cheap to clone (clones share the tasks).
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stopping: CancellationToken,
}

impl Tasks {
    /// Spawns `task` on the runtime, tracked: [`Self::shutdown`] waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Cancelled when the service stops, after the requests in flight drained: the
    /// long-running loops select on it and end (a loop that has work queued finishes it
    /// first, like the settler's final drain).
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Stops: cancels [`Self::stopping`], then waits for every task until `deadline`.
    /// Returns how many were still running then (count; 0 when all ended), each of which is
    /// dropped with the runtime.
    pub async fn shutdown(&self, deadline: Instant) -> usize {
        self.stopping.cancel();
        self.tracker.close();
        let waited = tokio::time::timeout_at(deadline.into(), self.tracker.wait()).await;
        if waited.is_ok() {
            0
        } else {
            self.tracker.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_a_task_that_ends_in_time() {
        let tasks = Tasks::default();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        let stopping = tasks.stopping();
        tasks.spawn(async move {
            stopping.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });

        let left = tasks
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;

        assert_eq!(left, 0);
        assert!(finished.load(Ordering::SeqCst), "the task ran to its end");
    }

    #[tokio::test]
    async fn shutdown_gives_up_at_the_deadline_and_says_how_many_were_left() {
        let tasks = Tasks::default();
        tasks.spawn(std::future::pending::<()>());

        let left = tasks
            .shutdown(Instant::now() + Duration::from_millis(50))
            .await;

        assert_eq!(left, 1);
    }
}
