//! Code generation jobs: `requested` codes for a topic, inserted in batches by whichever API
//! instance holds the job's lease.
//!
//! Each batch commits its codes and the job's progress (`generated`) in one transaction, under
//! the job row's lock, and only while the caller still owns the lease: a job resumed after its
//! owner died (or lost its lease) continues from the committed count, so it produces exactly
//! `requested` codes, never more. A RUNNING job whose lease has run out is claimed by
//! [`claim_abandoned`] on any instance.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySqlPool, Row};

use crate::codes;

/// Progress of a generation job: `{"job_id": 4, "topic_id": 3, "requested": 1000000,
/// "generated": 250000, "status": "RUNNING" | "DONE"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GenerationJob {
    /// Primary key.
    pub job_id: i64,
    /// The topic the codes belong to.
    pub topic_id: i64,
    /// Codes asked for (count).
    pub requested: i64,
    /// Codes committed so far (count).
    pub generated: i64,
    /// `RUNNING` until `generated == requested`, then `DONE`.
    pub status: String,
}

/// Who holds a job and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The holder: one id per process (a UUID).
    pub owner: String,
    /// How long each renewal lasts; every committed batch renews it.
    pub length: chrono::Duration,
}

/// Creates a RUNNING job for `topic`, leased to `lease.owner`.
///
/// # Errors
/// Any database error.
pub async fn create(
    pool: &MySqlPool,
    topic: i64,
    requested: i64,
    lease: &Lease,
    now: DateTime<Utc>,
) -> Result<GenerationJob, sqlx::Error> {
    let id = sqlx::query(
        "INSERT INTO code_generation_jobs (topic_id, requested, lease_owner, lease_until) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(topic)
    .bind(requested)
    .bind(&lease.owner)
    .bind(crate::store::db::datetime(now + lease.length))
    .execute(pool)
    .await?
    .last_insert_id();
    Ok(GenerationJob {
        job_id: i64::try_from(id).unwrap_or(i64::MAX),
        topic_id: topic,
        requested,
        generated: 0,
        status: "RUNNING".into(),
    })
}

/// A job of `topic`, or `None`.
///
/// # Errors
/// Any database error.
pub async fn find(
    pool: &MySqlPool,
    topic: i64,
    job: i64,
) -> Result<Option<GenerationJob>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT id, topic_id, requested, generated, status FROM code_generation_jobs \
         WHERE id = ? AND topic_id = ?",
    )
    .bind(job)
    .bind(topic)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(GenerationJob {
        job_id: row.try_get("id")?,
        topic_id: row.try_get("topic_id")?,
        requested: row.try_get("requested")?,
        generated: row.try_get("generated")?,
        status: row.try_get("status")?,
    }))
}

/// Takes over the oldest RUNNING job whose lease has run out (its owner died, stopped or
/// stalled), leasing it to `lease.owner`; `None` when there is none. Rows are taken with
/// `SKIP LOCKED`, so instances scanning at once claim different jobs.
///
/// # Errors
/// Any database error.
pub async fn claim_abandoned(
    pool: &MySqlPool,
    lease: &Lease,
    now: DateTime<Utc>,
) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let job: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM code_generation_jobs \
         WHERE status = 'RUNNING' AND (lease_until IS NULL OR lease_until < ?) \
         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(crate::store::db::datetime(now))
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = job {
        sqlx::query(
            "UPDATE code_generation_jobs SET lease_owner = ?, lease_until = ? WHERE id = ?",
        )
        .bind(&lease.owner)
        .bind(crate::store::db::datetime(now + lease.length))
        .bind(job)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(job)
}

/// What one [`step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Committed a batch; more to do.
    Progressed,
    /// The job is complete (`DONE`).
    Done,
    /// Another instance holds the lease (ours ran out): stop without writing.
    LeaseLost,
}

/// Commits one batch of at most `batch` codes for `job` with its progress, renewing the lease,
/// and marks the job `DONE` when the last code is in.
///
/// # Errors
/// Any database error (the batch is rolled back whole; the job resumes from the last commit).
pub async fn step(
    pool: &MySqlPool,
    job: i64,
    lease: &Lease,
    batch: i64,
    now: DateTime<Utc>,
) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT topic_id, requested, generated, status, lease_owner FROM code_generation_jobs \
         WHERE id = ? FOR UPDATE",
    )
    .bind(job)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Step::LeaseLost);
    };
    if row.try_get::<Option<String>, _>("lease_owner")?.as_deref() != Some(lease.owner.as_str()) {
        return Ok(Step::LeaseLost);
    }
    let requested: i64 = row.try_get("requested")?;
    let generated: i64 = row.try_get("generated")?;
    if row.try_get::<String, _>("status")? == "DONE" || generated >= requested {
        return Ok(Step::Done);
    }
    let n = (requested - generated).min(batch);
    let topic: i64 = row.try_get("topic_id")?;
    codes::insert_codes(&mut tx, topic, usize::try_from(n).unwrap_or(0), now).await?;
    let done = generated + n >= requested;
    sqlx::query(
        "UPDATE code_generation_jobs SET generated = ?, status = ?, lease_until = ? WHERE id = ?",
    )
    .bind(generated + n)
    .bind(if done { "DONE" } else { "RUNNING" })
    .bind(crate::store::db::datetime(now + lease.length))
    .bind(job)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!(crate::telemetry::names::CODES_GENERATED).increment(n.unsigned_abs());
    Ok(if done { Step::Done } else { Step::Progressed })
}

/// Gives up the lease of `job` now (on shutdown), so another instance resumes it at once.
///
/// # Errors
/// Any database error.
pub async fn release(pool: &MySqlPool, job: i64, lease: &Lease) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE code_generation_jobs SET lease_until = NULL WHERE id = ? AND lease_owner = ?",
    )
    .bind(job)
    .bind(&lease.owner)
    .execute(pool)
    .await?;
    Ok(())
}
