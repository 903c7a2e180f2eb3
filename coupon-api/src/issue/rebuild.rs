//! Rebuilding a coupon's lost Redis admission state from this instance
//! ([`coupon_core::issue::recovery::rebuild`]): the issue path starts one when the script
//! finds no stock key, at most one per coupon here at a time; the lock inside the rebuild keeps
//! other instances from doing it twice. Issuing for the coupon stays closed (503) until the
//! rebuild writes the stock key.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupon_core::domain::CouponId;
use coupon_core::issue::admission::AdmissionStore;
use coupon_core::issue::recovery::{self, IssueLog, RebuildLock};
use sqlx::MySqlPool;

use crate::policies::cache::PolicyCache;
use crate::tasks::Tasks;

/// Starts rebuilds and remembers which are running here; cheap to clone (clones share the
/// running set).
#[derive(Clone)]
pub struct Rebuilds {
    pool: MySqlPool,
    admission: AdmissionStore,
    lock: RebuildLock,
    policies: PolicyCache,
    log: IssueLog,
    settle: Duration,
    running: Arc<Mutex<HashSet<CouponId>>>,
    tasks: Tasks,
}

impl Rebuilds {
    /// Rebuilds reading the rows from `pool` and the messages in flight from `log`, after
    /// waiting `settle` (the producer's message timeout: a publish still in flight lands or
    /// fails within it). Each rebuild runs as a task of `tasks`.
    pub fn new(
        pool: MySqlPool,
        admission: AdmissionStore,
        lock: RebuildLock,
        policies: PolicyCache,
        log: IssueLog,
        settle: Duration,
        tasks: Tasks,
    ) -> Self {
        Self {
            pool,
            admission,
            lock,
            policies,
            log,
            settle,
            running: Arc::default(),
            tasks,
        }
    }

    /// Where the issue messages are (also what reconciliation reads).
    pub fn log(&self) -> &IssueLog {
        &self.log
    }

    /// The wait before a rebuild reads the log.
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// Starts rebuilding `coupon` in the background unless this instance already is. A failed
    /// rebuild is logged; the next request for the coupon starts another.
    pub fn start(&self, coupon: CouponId) {
        let started = self
            .running
            .lock()
            .map(|mut running| running.insert(coupon))
            .unwrap_or(false);
        if !started {
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let outcome = match this.policies.get(coupon).await {
                Ok(policy) => {
                    recovery::rebuild(
                        &this.pool,
                        &this.admission,
                        &this.lock,
                        &this.log,
                        &policy,
                        this.settle,
                    )
                        .await
                        .map(drop)
                }
                Err(err) => Err(anyhow::anyhow!("loading the policy: {err}")),
            };
            if let Err(err) = outcome {
                tracing::error!(coupon_id = %coupon, error = ?err, "rebuilding the admission state failed; the next request retries");
            }
            if let Ok(mut running) = this.running.lock() {
                running.remove(&coupon);
            }
        });
    }
}
