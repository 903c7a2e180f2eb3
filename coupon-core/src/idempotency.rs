//! Idempotency keys: the first request carrying a key acts, later requests with the same key
//! and the same fingerprint get its stored response back, and concurrent repeats act once
//! (the key is the table's primary key, so exactly one `INSERT` claims it).
//!
//! A claim is leased: if the process that claimed a key dies (or the client hangs up and the
//! request is dropped) before storing a response, another request may take the key over once
//! the lease ran out.
//!
//! A key is kept until `expires_at`; coupon-consumer's purge deletes it afterwards
//! ([`crate::purge`]).

use chrono::{DateTime, Duration, Utc};
use sqlx::{MySqlPool, Row};

/// How long a claim may stay in progress before another request may take it over.
pub const LEASE: Duration = Duration::seconds(30);

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request holds the key and must act, then [`complete`] or [`release`] it.
    Acquired,
    /// An earlier request with the same fingerprint finished: answer its response.
    Replay {
        /// HTTP status of the stored response.
        status: u16,
        /// Body of the stored response.
        body: Vec<u8>,
    },
    /// An earlier request with the same fingerprint is still acting.
    InProgress,
    /// The key was used for a different request (another method, path or body).
    Mismatch,
}

/// Claims `key` for a request whose fingerprint is `fingerprint` (a SHA-256 hex digest).
/// An expired key (older than `ttl`) counts as unused.
///
/// # Errors
/// Any database error.
pub async fn claim(
    pool: &MySqlPool,
    key: &str,
    fingerprint: &str,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Claim, sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE idempotency_key = ? AND expires_at <= ?")
        .bind(key)
        .bind(crate::store::db::datetime(now))
        .execute(pool)
        .await?;
    let inserted = sqlx::query(
        "INSERT IGNORE INTO idempotency_keys \
         (idempotency_key, fingerprint, state, locked_until, created_at, expires_at) \
         VALUES (?, ?, 'IN_PROGRESS', ?, ?, ?)",
    )
    .bind(key)
    .bind(fingerprint)
    .bind(crate::store::db::datetime(now + LEASE))
    .bind(crate::store::db::datetime(now))
    .bind(crate::store::db::datetime(now + ttl))
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Acquired);
    }
    let Some(row) = sqlx::query(
        "SELECT fingerprint, state, response_status, response_body FROM idempotency_keys \
         WHERE idempotency_key = ?",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?
    else {
        // Released between our INSERT and SELECT: the caller tries again.
        return Ok(Claim::InProgress);
    };
    if row.try_get::<String, _>("fingerprint")? != fingerprint {
        return Ok(Claim::Mismatch);
    }
    if row.try_get::<String, _>("state")? == "DONE" {
        let status: Option<i16> = row.try_get("response_status")?;
        let body: Option<Vec<u8>> = row.try_get("response_body")?;
        return Ok(Claim::Replay {
            status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
            body: body.unwrap_or_default(),
        });
    }
    let taken_over = sqlx::query(
        "UPDATE idempotency_keys SET locked_until = ? \
         WHERE idempotency_key = ? AND state = 'IN_PROGRESS' AND locked_until <= ?",
    )
    .bind(crate::store::db::datetime(now + LEASE))
    .bind(key)
    .bind(crate::store::db::datetime(now))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(if taken_over == 1 {
        Claim::Acquired
    } else {
        Claim::InProgress
    })
}

/// Stores the response of the request that holds `key`.
///
/// # Errors
/// Any database error.
pub async fn complete(
    pool: &MySqlPool,
    key: &str,
    status: u16,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'DONE', response_status = ?, response_body = ? \
         WHERE idempotency_key = ?",
    )
    .bind(i16::try_from(status).unwrap_or(500))
    .bind(body)
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Frees `key` without a stored response: the request failed on our side (5xx) or its caller
/// was refused (401, 403, 429), so a repeat should act again.
///
/// # Errors
/// Any database error.
pub async fn release(pool: &MySqlPool, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE idempotency_key = ? AND state = 'IN_PROGRESS'")
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}
