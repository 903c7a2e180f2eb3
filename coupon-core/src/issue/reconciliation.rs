//! Reconciliation: compares, per coupon, the Redis admission set, the issue messages not yet
//! persisted and the MySQL rows, and repairs what a failure left behind.
//!
//! | found | meaning | repair |
//! | --- | --- | --- |
//! | admitted, no row, no message, in two reads `grace` apart | an admission whose message never reached the broker (a Redis call that timed out but ran, an undo that failed) | re-publish its issue message: the consumer persists it (docs/invariants.md 3) |
//! | a row whose user is not in the set | the set lost members (Redis restarted with `appendfsync everysec`) | add the user back (docs/invariants.md 4) |
//! | `issued_quantity` ≠ rows | a count drifted | set it to the row count, under the coupon row's lock (docs/invariants.md 5) |
//! | a transfer of units between stock shards whose second step never ran | the admission that moved them stopped in between ([`crate::issue::admission`], stock shards) | complete it: the units reach their shard |
//! | a pending mark of a user with a row | the mark's clearing failed (Redis failed at that moment) | clear it, so a repeat request hears `ALREADY_ISSUED` ([pending admissions](crate::issue::admission#pending-admissions)) |
//!
//! Safe to run repeatedly and beside live traffic: the grace period outlasts any publish in
//! flight (the producer's message timeout), so an admission still being published or undone
//! is never touched; a re-published message is idempotent at the consumer (the unique key);
//! adding a row's user to the set only restores what the rows already hold; the count repair
//! takes the same row lock as the consumer's batch.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::domain::{CouponId, UserId};
use crate::issue::admission::{AdmissionStore, StockShards};
use crate::issue::message::IssueMessage;
use crate::issue::recovery::IssueLog;
use crate::store::kafka::IssuePublisher;

/// What one pass found and did for one coupon (counts), printed as a JSON line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CouponReport {
    /// The coupon.
    pub coupon_id: i64,
    /// Members of the admission set (`SCARD`).
    pub admitted: usize,
    /// Rows in `coupon_issues`.
    pub rows: usize,
    /// Users of issue messages after the consumer group's committed offsets.
    pub in_flight: usize,
    /// Admissions with neither row nor message, in both reads: re-published.
    pub republished: Vec<i64>,
    /// Rows whose user was missing from the set: added back.
    pub readmitted: Vec<i64>,
    /// `issued_quantity` before the pass.
    pub issued_quantity_before: i64,
    /// `issued_quantity` after the pass (the row count when it drifted).
    pub issued_quantity_after: i64,
    /// Whether the coupon's Redis state was missing (nothing to compare: the API rebuilds it).
    pub not_prepared: bool,
    /// Pending marks of users who hold a row, cleared (count; housekeeping, not a repair of
    /// what users were told).
    #[serde(default)]
    pub pending_cleared: usize,
    /// Units of interrupted transfers between stock shards that reached their shard now
    /// (count; 0 for an unsharded coupon and in a dry run).
    #[serde(default)]
    pub transfers_completed: i64,
}

impl CouponReport {
    /// Whether the pass repaired something, or in a dry run found something to repair.
    ///
    /// A coupon whose Redis state is missing was not compared (its `rows` were not read), so
    /// it needed no repair of this pass.
    pub fn needed_repair(&self) -> bool {
        !self.not_prepared
            && (!self.republished.is_empty()
                || !self.readmitted.is_empty()
                || self.transfers_completed > 0
                || self.issued_quantity_after != self.issued_quantity_before
                || i64::try_from(self.rows).is_ok_and(|rows| rows != self.issued_quantity_before))
    }
}

/// The stores reconciliation reads and repairs.
pub struct Reconciler<'a> {
    /// MySQL.
    pub pool: &'a MySqlPool,
    /// Redis admission sets.
    pub admission: &'a AdmissionStore,
    /// Reads the messages not yet persisted.
    pub log: &'a IssueLog,
    /// Re-publishes lost issue messages.
    pub publisher: &'a IssuePublisher,
    /// Wait between the two reads that must both show an admission as lost.
    pub grace: Duration,
    /// Report only; change nothing.
    pub dry_run: bool,
}

impl Reconciler<'_> {
    /// Every coupon not soft-deleted, oldest first, with its stock shards.
    ///
    /// # Errors
    /// MySQL failed.
    pub async fn coupons(&self) -> anyhow::Result<Vec<StockShards>> {
        let rows: Vec<(i64, u16)> = sqlx::query_as(
            "SELECT id, stock_shards FROM coupons WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(self.pool)
        .await
        .context("listing coupons")?;
        rows.into_iter()
            .map(|(id, shards)| {
                let id = CouponId::parse(id).map_err(|e| anyhow::anyhow!(e.0))?;
                Ok(StockShards::new(id, crate::store::db::shard_count(shards)?))
            })
            .collect()
    }

    /// `coupon` with its stock shards (1 when no row has that id).
    ///
    /// # Errors
    /// MySQL failed.
    pub async fn shards_of(&self, coupon: CouponId) -> anyhow::Result<StockShards> {
        let count: Option<u16> =
            sqlx::query_scalar("SELECT stock_shards FROM coupons WHERE id = ?")
                .bind(coupon.get())
                .fetch_optional(self.pool)
                .await
                .context("reading the coupon's stock shards")?;
        let count = count.map(crate::store::db::shard_count).transpose()?;
        Ok(StockShards::new(coupon, count.unwrap_or_default()))
    }

    /// One pass over `coupon`, or over every coupon not soft-deleted when `None`.
    ///
    /// # Errors
    /// As [`Self::reconcile`]; the coupons before the failing one stay reconciled.
    pub async fn run(&self, coupon: Option<CouponId>) -> anyhow::Result<Vec<CouponReport>> {
        let coupons = match coupon {
            Some(id) => vec![self.shards_of(id).await?],
            None => self.coupons().await?,
        };
        let mut reports = Vec::with_capacity(coupons.len());
        for coupon in coupons {
            reports.push(self.reconcile(coupon).await?);
        }
        Ok(reports)
    }

    /// One pass over `coupon`: two reads `grace` apart, then the repairs.
    ///
    /// # Errors
    /// Redis, MySQL or the broker failed; a repair already made stays made (each is safe
    /// alone), and a rerun finishes the rest.
    pub async fn reconcile(&self, shards: StockShards) -> anyhow::Result<CouponReport> {
        let coupon = shards.coupon();
        let mut report = CouponReport {
            coupon_id: coupon.get(),
            ..CouponReport::default()
        };
        if !self.admission.is_prepared(shards).await? {
            report.not_prepared = true;
            report.issued_quantity_before = self.issued_quantity(coupon).await?;
            report.issued_quantity_after = report.issued_quantity_before;
            return Ok(report);
        }
        let first = self.lost(shards).await?;
        if !first.is_empty() {
            tokio::time::sleep(self.grace).await;
        }
        let (admitted, in_flight, rows) = self.read(shards).await?;
        let lost: Vec<i64> = first
            .intersection(&missing(&admitted, &in_flight, &rows))
            .copied()
            .collect();
        let readmit: Vec<i64> = rows.difference(&admitted).copied().collect();
        report.admitted = admitted.len();
        report.rows = rows.len();
        report.in_flight = in_flight.len();
        report.issued_quantity_before = self.issued_quantity(coupon).await?;
        report.issued_quantity_after = report.issued_quantity_before;
        if !self.dry_run {
            // Under the request id the admission is still pending under, when it is: the
            // consumer claims a message only for its own admission (`claim.lua`).
            let lost_users = super::user_ids(&lost)?;
            let requests = self.admission.pending_requests(shards, &lost_users).await?;
            for (&user, request) in lost_users.iter().zip(requests) {
                let message = IssueMessage {
                    coupon_id: coupon,
                    user_id: user,
                    request_id: request.unwrap_or_else(Uuid::now_v7),
                    admitted_at: Utc::now(),
                    stock_shards: shards.shard_count(),
                    correlation_id: None,
                };
                self.publisher
                    .publish(&message)
                    .await
                    .with_context(|| format!("re-publishing user {user}'s issue"))?;
            }
            if !readmit.is_empty() {
                self.admission
                    .add_members(shards, &super::user_ids(&readmit)?)
                    .await?;
            }
            let settled: Vec<UserId> = self
                .admission
                .pending_users(shards)
                .await?
                .into_iter()
                .filter(|user| rows.contains(&user.get()))
                .collect();
            report.pending_cleared = self.admission.settle(shards, &settled).await?;
            if shards.count() > 1 {
                report.transfers_completed = self.admission.complete_transfers(shards).await?;
            }
            report.issued_quantity_after = self.repair_count(coupon).await?;
        }
        report.republished = lost;
        report.readmitted = readmit;
        Ok(report)
    }

    /// Admitted users with neither a row nor a message, now.
    async fn lost(&self, shards: StockShards) -> anyhow::Result<BTreeSet<i64>> {
        let (admitted, in_flight, rows) = self.read(shards).await?;
        Ok(missing(&admitted, &in_flight, &rows))
    }

    /// The set, then the messages after the committed offsets, then the rows: in that order,
    /// so a user admitted before the read is in the set, and a message persisted between the
    /// last two reads is in one of them (as in [`crate::issue::recovery`]).
    async fn read(
        &self,
        shards: StockShards,
    ) -> anyhow::Result<(BTreeSet<i64>, BTreeSet<i64>, BTreeSet<i64>)> {
        let coupon = shards.coupon();
        let admitted: BTreeSet<i64> = self
            .admission
            .members(shards)
            .await?
            .into_iter()
            .map(UserId::get)
            .collect();
        let in_flight = self.log.unpersisted_users(coupon).await?;
        let rows: Vec<i64> =
            sqlx::query_scalar("SELECT user_id FROM coupon_issues WHERE coupon_id = ?")
                .bind(coupon.get())
                .fetch_all(self.pool)
                .await
                .context("reading the coupon's rows")?;
        Ok((admitted, in_flight, rows.into_iter().collect()))
    }

    async fn issued_quantity(&self, coupon: CouponId) -> anyhow::Result<i64> {
        sqlx::query_scalar("SELECT issued_quantity FROM coupons WHERE id = ?")
            .bind(coupon.get())
            .fetch_one(self.pool)
            .await
            .context("reading issued_quantity")
    }

    /// Sets `issued_quantity` to the row count if they differ, holding the coupon row's lock
    /// (the lock the consumer's batch takes first), so no batch commits in between.
    async fn repair_count(&self, coupon: CouponId) -> anyhow::Result<i64> {
        let mut tx = self.pool.begin().await?;
        let issued: i64 =
            sqlx::query_scalar("SELECT issued_quantity FROM coupons WHERE id = ? FOR UPDATE")
                .bind(coupon.get())
                .fetch_one(&mut *tx)
                .await?;
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues WHERE coupon_id = ?")
                .bind(coupon.get())
                .fetch_one(&mut *tx)
                .await?;
        if rows != issued {
            sqlx::query("UPDATE coupons SET issued_quantity = ? WHERE id = ?")
                .bind(rows)
                .bind(coupon.get())
                .execute(&mut *tx)
                .await?;
            tracing::warn!(coupon_id = %coupon, issued, rows, "issued_quantity drifted; set to the row count");
        }
        tx.commit().await?;
        Ok(rows)
    }
}

fn missing(
    admitted: &BTreeSet<i64>,
    in_flight: &BTreeSet<i64>,
    rows: &BTreeSet<i64>,
) -> BTreeSet<i64> {
    admitted
        .iter()
        .filter(|u| !in_flight.contains(u) && !rows.contains(u))
        .copied()
        .collect()
}

/// Where a reconciliation job started through the admin API stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// The pass is running (or its instance died: a new pass is always safe).
    Running,
    /// Every coupon was reconciled; `reports` says what was found and done.
    Done,
    /// A store failed mid-pass; `error` says which. Repairs already made stay made.
    Failed,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Done => "DONE",
            Self::Failed => "FAILED",
        }
    }
}

/// A reconciliation pass started through the admin API, as stored in `reconciliation_jobs`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReconciliationJob {
    /// The job's id.
    pub job_id: i64,
    /// The coupon reconciled; `null`: every coupon not soft-deleted.
    pub coupon_id: Option<i64>,
    /// Wait between the pass's two reads (ms).
    pub grace_ms: i64,
    /// Whether the pass only reported.
    pub dry_run: bool,
    /// Running, done or failed.
    pub status: JobStatus,
    /// One report per coupon, once done.
    pub reports: Vec<CouponReport>,
    /// Why the pass failed.
    pub error: Option<String>,
    /// When the job was started.
    pub created_at: DateTime<Utc>,
    /// When the pass ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Records a new RUNNING job; returns its id.
///
/// # Errors
/// MySQL failed.
pub async fn create_job(
    pool: &MySqlPool,
    coupon: Option<CouponId>,
    grace: Duration,
    dry_run: bool,
) -> Result<i64, sqlx::Error> {
    let id = sqlx::query(
        "INSERT INTO reconciliation_jobs (coupon_id, grace_ms, dry_run, status, created_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(coupon.map(CouponId::get))
    .bind(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX))
    .bind(dry_run)
    .bind(JobStatus::Running.as_str())
    .bind(crate::store::db::datetime(Utc::now()))
    .execute(pool)
    .await?
    .last_insert_id();
    Ok(i64::try_from(id).unwrap_or(i64::MAX))
}

/// Marks job `id` DONE with `reports`, or FAILED with the error's text.
///
/// # Errors
/// MySQL failed.
pub async fn finish_job(
    pool: &MySqlPool,
    id: i64,
    outcome: &anyhow::Result<Vec<CouponReport>>,
) -> Result<(), sqlx::Error> {
    let (status, reports, error) = match outcome {
        Ok(reports) => (JobStatus::Done, serde_json::to_string(reports).ok(), None),
        Err(err) => (JobStatus::Failed, None, Some(format!("{err:#}"))),
    };
    sqlx::query(
        "UPDATE reconciliation_jobs SET status = ?, reports = ?, error = ?, finished_at = ? \
         WHERE id = ?",
    )
    .bind(status.as_str())
    .bind(reports)
    .bind(error)
    .bind(crate::store::db::datetime(Utc::now()))
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Job `id`, or `None`.
///
/// # Errors
/// MySQL failed, or a stored row does not parse (`sqlx::Error::ColumnDecode`).
pub async fn find_job(pool: &MySqlPool, id: i64) -> Result<Option<ReconciliationJob>, sqlx::Error> {
    use sqlx::Row;
    let Some(row) = sqlx::query(
        "SELECT id, coupon_id, grace_ms, dry_run, status, reports, error, created_at, \
         finished_at FROM reconciliation_jobs WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let status = match row.try_get::<String, _>("status")?.as_str() {
        "DONE" => JobStatus::Done,
        "FAILED" => JobStatus::Failed,
        _ => JobStatus::Running,
    };
    let reports = match row.try_get::<Option<String>, _>("reports")? {
        Some(json) => serde_json::from_str(&json).map_err(|err| sqlx::Error::ColumnDecode {
            index: "reports".to_owned(),
            source: Box::new(err),
        })?,
        None => Vec::new(),
    };
    Ok(Some(ReconciliationJob {
        job_id: row.try_get("id")?,
        coupon_id: row.try_get("coupon_id")?,
        grace_ms: row.try_get("grace_ms")?,
        dry_run: row.try_get("dry_run")?,
        status,
        reports,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coupon_without_redis_state_was_not_compared_so_it_needed_no_repair() {
        // Its rows are not read: 0 rows beside issued_quantity 500 is no drift.
        let skipped = CouponReport {
            coupon_id: 1,
            issued_quantity_before: 500,
            issued_quantity_after: 500,
            not_prepared: true,
            ..CouponReport::default()
        };
        assert!(!skipped.needed_repair());
        let drifted = CouponReport {
            rows: 499,
            not_prepared: false,
            ..skipped
        };
        assert!(drifted.needed_repair());
    }
}
