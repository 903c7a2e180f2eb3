//! Reconciliation that runs by itself: every `RECONCILE_INTERVAL_MS` one coupon-consumer
//! instance runs a pass ([`coupon_core::issue::reconciliation`]) over the coupons whose issue
//! window is open or closed less than `RECONCILE_LOOKBACK_SECS` ago, so a user answered 202
//! whose admission lost its message before the broker gets their coupon without an operator.
//!
//! One instance at a time: a pass runs under the MySQL named lock `coupon_reconcile:<database>`
//! (named locks are server-wide, so the database name keeps deployments sharing a server
//! apart; `GET_LOCK` with a zero timeout, on a connection held for the pass; MySQL frees the lock
//! when that connection ends, so an instance that dies mid-pass cannot keep it). An instance
//! that finds the lock taken skips its turn. Several passes at once would still be safe (a
//! pass is idempotent), only wasteful.
//!
//! Each repair is counted in `coupon_reconciliation_repairs_total{kind}` (`republished`,
//! `readmitted`, `issued_quantity`), each pass in `coupon_reconciliation_passes_total{outcome}`
//! (`done`, `skipped`, `failed`); the alert `CouponReconciliationRepaired` fires when a
//! repair was made (monitoring/alerts.yml): something upstream lost an admission's message or
//! a member of the set, and an operator should find out what.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use coupon_core::domain::CouponId;
use coupon_core::issue::admission::{AdmissionStore, StockShards};
use coupon_core::issue::reconciliation::{CouponReport, Reconciler};
use coupon_core::issue::recovery::IssueLog;
use coupon_core::store::kafka::IssuePublisher;
use coupon_core::telemetry::names;
use sqlx::MySqlPool;
use tracing::Instrument;

use crate::retry::Shutdown;
use crate::ConsumerStats;

/// The prefix of the MySQL named lock a pass runs under (`GET_LOCK`); the database's name
/// follows it, so each database has its own (a lock name is at most 64 characters).
pub const LOCK_PREFIX: &str = "coupon_reconcile:";

/// SQL taking the lock of the current database without waiting: 1 when taken.
pub const TAKE_LOCK: &str = "SELECT GET_LOCK(CONCAT(?, DATABASE()), 0)";

/// What a pass repaired: the `kind` label of `coupon_reconciliation_repairs_total`, as its
/// snake-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum RepairKind {
    /// A lost issue message re-published.
    Republished,
    /// A user with a row added back to the admission set.
    Readmitted,
    /// A drifted `issued_quantity` set to the row count.
    IssuedQuantity,
}

/// How a pass ended: the `outcome` label of `coupon_reconciliation_passes_total`, as its
/// snake-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum PassOutcome {
    /// The pass ran.
    Done,
    /// Another process held the lock.
    Skipped,
    /// The pass failed; the next one retries.
    Failed,
}

/// Registers the reconciliation counters at 0, so dashboards and alerts see them before the
/// first repair.
pub(crate) fn register_metrics() {
    use strum::VariantArray;
    for &kind in RepairKind::VARIANTS {
        metrics::counter!(names::RECONCILIATION_REPAIRS, "kind" => <&str>::from(kind)).increment(0);
    }
    for &outcome in PassOutcome::VARIANTS {
        metrics::counter!(names::RECONCILIATION_PASSES, "outcome" => <&str>::from(outcome))
            .increment(0);
    }
}

/// The periodic pass.
pub struct PeriodicReconciliation {
    /// MySQL (rows, counts, the named lock).
    pub(crate) pool: MySqlPool,
    /// The Redis admission state.
    pub(crate) admission: AdmissionStore,
    /// The issue topic, read up to this group's committed offsets.
    pub(crate) log: IssueLog,
    /// Re-publishes lost issue messages.
    pub(crate) publisher: IssuePublisher,
    /// Pause between passes; `None` turns the loop off.
    pub(crate) interval: Option<Duration>,
    /// Wait between the two reads that must both show an admission as lost (longer than the
    /// API's producer message timeout, so a publish still in flight is never taken for lost).
    pub(crate) grace: Duration,
    /// How long after its issue window closed a coupon is still reconciled.
    pub(crate) lookback: Duration,
    /// Live counters.
    pub(crate) stats: Arc<ConsumerStats>,
}

impl PeriodicReconciliation {
    /// Runs a pass every interval until `shutdown` stops it (a pass in progress ends at the
    /// stop: each repair is safe alone, and the next pass finishes the rest).
    pub async fn run(&self, shutdown: &Shutdown) {
        let Some(interval) = self.interval else {
            return;
        };
        loop {
            tokio::select! {
                () = shutdown.stopping() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let pass = self
                .pass()
                .instrument(tracing::info_span!("reconciliation_pass"));
            let outcome = tokio::select! {
                () = shutdown.stopping() => return,
                outcome = pass => outcome,
            };
            let label = match outcome {
                Ok(Some(reports)) => {
                    self.count(&reports);
                    PassOutcome::Done
                }
                Ok(None) => PassOutcome::Skipped,
                Err(err) => {
                    tracing::warn!(err = %format!("{err:#}"), "reconciliation pass failed; the next one retries");
                    PassOutcome::Failed
                }
            };
            metrics::counter!(names::RECONCILIATION_PASSES, "outcome" => <&str>::from(label))
                .increment(1);
        }
    }

    /// One pass under the named lock: `None` when another instance holds it. The lock is
    /// taken on a connection of its own, detached from the pool and closed at the end, so a
    /// pass cut short (a stop, a panic) closes it and MySQL frees the lock.
    async fn pass(&self) -> anyhow::Result<Option<Vec<CouponReport>>> {
        let mut lock = self
            .pool
            .acquire()
            .await
            .context("a connection for the lock")?
            .detach();
        let taken: Option<i64> = sqlx::query_scalar(TAKE_LOCK)
            .bind(LOCK_PREFIX)
            .fetch_one(&mut lock)
            .await
            .context("GET_LOCK")?;
        if taken != Some(1) {
            tracing::debug!("another instance is reconciling; skipping this turn");
            return Ok(None);
        }
        let reports = self.reconcile_recent().await;
        // Closing the connection releases the lock.
        if let Err(err) = sqlx::Connection::close(lock).await {
            tracing::debug!(%err, "closing the lock's connection failed; MySQL frees the lock when it notices");
        }
        reports.map(Some)
    }

    async fn reconcile_recent(&self) -> anyhow::Result<Vec<CouponReport>> {
        let since = Utc::now() - chrono::Duration::from_std(self.lookback).unwrap_or_default();
        let ids: Vec<(i64, u16)> = sqlx::query_as(
            "SELECT id, stock_shards FROM coupons WHERE deleted_at IS NULL AND issue_ends_at >= ? \
             ORDER BY id",
        )
        .bind(coupon_core::store::db::datetime(since))
        .fetch_all(&self.pool)
        .await
        .context("listing the coupons to reconcile")?;
        let reconciler = Reconciler {
            pool: &self.pool,
            admission: &self.admission,
            log: &self.log,
            publisher: &self.publisher,
            grace: self.grace,
            dry_run: false,
        };
        let mut reports = Vec::with_capacity(ids.len());
        for (id, shards) in ids {
            let coupon = CouponId::parse(id).map_err(|e| anyhow::anyhow!(e.0))?;
            reports.push(
                reconciler
                    .reconcile(StockShards::new(
                        coupon,
                        coupon_core::store::db::shard_count(shards)?,
                    ))
                    .await?,
            );
        }
        Ok(reports)
    }

    /// Counts and logs what a pass repaired.
    fn count(&self, reports: &[CouponReport]) {
        for report in reports.iter().filter(|r| r.needed_repair()) {
            let counted = report.issued_quantity_after != report.issued_quantity_before;
            let repairs = [
                (RepairKind::Republished, report.republished.len() as u64),
                (RepairKind::Readmitted, report.readmitted.len() as u64),
                (RepairKind::IssuedQuantity, u64::from(counted)),
            ];
            for (kind, n) in repairs {
                metrics::counter!(names::RECONCILIATION_REPAIRS, "kind" => <&str>::from(kind))
                    .increment(n);
            }
            let total: u64 = repairs.iter().map(|(_, n)| n).sum();
            self.stats
                .reconciliation_repairs
                .fetch_add(total, Ordering::Relaxed);
            tracing::warn!(
                coupon_id = report.coupon_id,
                republished = ?report.republished,
                readmitted = ?report.readmitted,
                issued_quantity_before = report.issued_quantity_before,
                issued_quantity_after = report.issued_quantity_after,
                "reconciliation repaired a coupon"
            );
        }
    }
}
