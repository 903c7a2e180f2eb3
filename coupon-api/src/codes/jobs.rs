//! Runs code generation jobs ([`coupon_core::codes::jobs`]) in this process: jobs it was asked to
//! start, and jobs another instance abandoned (its lease ran out), found by a scan every third
//! of the lease. On shutdown each running job gives its lease up after its current batch, so
//! another instance resumes it at once.

use std::time::Duration;

use chrono::Utc;
use coupon_core::codes::jobs::{self, Lease, Step};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::tasks::Tasks;

/// Codes committed per transaction by a generation job (count).
pub const GENERATION_BATCH: i64 = 1_000;

/// Pause (ms) after a failed batch before the job tries again.
const RETRY_PAUSE_MS: u64 = 1_000;

/// Handle on this process's job runner. Cheap to clone.
#[derive(Clone)]
pub struct CodeJobs {
    pool: MySqlPool,
    lease: Lease,
    shutdown: CancellationToken,
    tasks: Tasks,
}

impl CodeJobs {
    /// A runner leasing jobs for `lease` at a time under a fresh owner id; its jobs run as
    /// tasks of `tasks` and stop when the service stops.
    pub fn new(pool: MySqlPool, lease: Duration, tasks: Tasks) -> Self {
        Self {
            pool,
            lease: Lease {
                owner: uuid::Uuid::new_v4().to_string(),
                length: chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX),
            },
            shutdown: tasks.stopping(),
            tasks,
        }
    }

    /// This runner's lease (owner and length), for creating jobs it will run.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Runs `job` (leased to this runner) in the background until it is done, the lease is
    /// lost, or shutdown.
    pub fn spawn(&self, job: i64) {
        let this = self.clone();
        self.tasks.spawn(async move { this.run(job).await });
    }

    async fn run(&self, job: i64) {
        tracing::info!(job, "code generation job running");
        loop {
            if self.shutdown.is_cancelled() {
                if let Err(err) = jobs::release(&self.pool, job, &self.lease).await {
                    tracing::warn!(job, %err, "could not release the job's lease; it resumes when the lease runs out");
                }
                return;
            }
            match jobs::step(&self.pool, job, &self.lease, GENERATION_BATCH, Utc::now()).await {
                Ok(Step::Progressed) => {}
                Ok(Step::Done) => {
                    tracing::info!(job, "code generation job done");
                    return;
                }
                Ok(Step::LeaseLost) => {
                    tracing::warn!(job, "code generation job taken over by another instance");
                    return;
                }
                Err(err) => {
                    tracing::warn!(job, %err, "code generation batch failed; retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)) => {}
                    }
                }
            }
        }
    }

    /// Every third of the lease until shutdown: claims each abandoned job and runs it.
    pub async fn resume_abandoned(self) {
        let every = self
            .lease
            .length
            .to_std()
            .unwrap_or(Duration::from_secs(30))
            / 3;
        loop {
            loop {
                match jobs::claim_abandoned(&self.pool, &self.lease, Utc::now()).await {
                    Ok(Some(job)) => {
                        tracing::info!(job, "resuming an abandoned code generation job");
                        self.spawn(job);
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!(%err, "scanning for abandoned code generation jobs failed");
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
