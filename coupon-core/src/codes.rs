//! Code coupons: topics (a policy plus a set of codes), code generation and redeem by code.
//!
//! A code is 16 characters of `A-Z0-9` (36^16 ≈ 7.9 × 10^24 values), drawn from `rand`'s
//! `ThreadRng`, a ChaCha12 CSPRNG seeded from the operating system
//! (<https://docs.rs/rand/0.9/rand/rngs/struct.ThreadRng.html>). Uniqueness across the system
//! is the job of `UNIQUE (code)`; a batch that collides is topped up with fresh codes.
//!
//! Redeem by code runs in one MySQL transaction. The code row is locked (`FOR UPDATE`), so of
//! concurrent redeems of one code exactly one sees it unused; `UNIQUE (topic_id, redeemed_by)`
//! makes a second code of the same topic for the same user impossible, and
//! `UNIQUE (coupon_id, user_id)` a second coupon. No Redis state is involved, so losing Redis
//! cannot allow a double use.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::domain::{CouponId, CouponStatus, UserId, ValidationError};
use crate::events::{self, EventType};
use crate::repository;

/// Characters of a code.
const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Length of a code (characters).
pub const CODE_LEN: usize = 16;

/// A well-formed code: exactly 16 upper-case letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
pub struct Code(String);

impl Code {
    /// The one parser of codes: accepts any case and `-`, `_` or space separators anywhere
    /// (`abcd-efgh-ijkl-mnop`), and normalises to 16 upper-case characters.
    ///
    /// # Errors
    /// [`ValidationError`] for anything else (the API's `INVALID_CODE`).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let normalised: String = raw
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if normalised.len() == CODE_LEN && normalised.bytes().all(|b| ALPHABET.contains(&b)) {
            Ok(Self(normalised))
        } else {
            Err(ValidationError(
                "a code is 16 letters and digits, optionally grouped with '-'".into(),
            ))
        }
    }

    /// A fresh random code.
    pub fn random(rng: &mut impl Rng) -> Self {
        let code = (0..CODE_LEN)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        Self(code)
    }

    /// The normalised code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A topic: `{"id": 3, "coupon_id": 1, "name": "Influencer A", "created_at": "…"}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Topic {
    /// Primary key.
    pub id: i64,
    /// The policy its codes issue.
    pub coupon_id: i64,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

fn topic_from_row(row: &sqlx::mysql::MySqlRow) -> Result<Topic, sqlx::Error> {
    Ok(Topic {
        id: row.try_get("id")?,
        coupon_id: row.try_get("coupon_id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Creates a topic for an existing, live policy; `None` when the policy does not exist.
///
/// # Errors
/// Any database error.
pub async fn create_topic(
    pool: &MySqlPool,
    coupon: CouponId,
    name: &str,
) -> Result<Option<Topic>, sqlx::Error> {
    if repository::find_policy(pool, coupon).await?.is_none() {
        return Ok(None);
    }
    let id = sqlx::query("INSERT INTO coupon_topics (coupon_id, name) VALUES (?, ?)")
        .bind(coupon.get())
        .bind(name)
        .execute(pool)
        .await?
        .last_insert_id();
    find_topic(pool, i64::try_from(id).unwrap_or(i64::MAX)).await
}

/// One topic, or `None`.
///
/// # Errors
/// Any database error.
pub async fn find_topic(pool: &MySqlPool, id: i64) -> Result<Option<Topic>, sqlx::Error> {
    sqlx::query("SELECT id, coupon_id, name, created_at FROM coupon_topics WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(topic_from_row)
        .transpose()
}

/// Topics, newest first, at most `limit`, with ids below `before` when given.
///
/// # Errors
/// Any database error.
pub async fn list_topics(
    pool: &MySqlPool,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<Topic>, sqlx::Error> {
    sqlx::query(
        "SELECT id, coupon_id, name, created_at FROM coupon_topics WHERE id < ? ORDER BY id DESC LIMIT ?",
    )
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(topic_from_row)
    .collect()
}

/// Inserts `count` fresh codes for `topic` in one multi-row `INSERT IGNORE`, topping up
/// whatever a collision skipped, and returns how many were inserted (always `count`). Runs on
/// `conn`, so a caller can commit the codes together with its own bookkeeping.
///
/// # Errors
/// Any database error.
pub async fn insert_codes(
    conn: &mut sqlx::MySqlConnection,
    topic: i64,
    count: usize,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut inserted = 0u64;
    while inserted < count as u64 {
        let missing = count - inserted as usize;
        let codes: Vec<Code> = {
            let mut rng = rand::rng();
            (0..missing).map(|_| Code::random(&mut rng)).collect()
        };
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO coupon_codes (code, topic_id, created_at) ",
        );
        insert.push_values(&codes, |mut row, code| {
            row.push_bind(code.as_str())
                .push_bind(topic)
                .push_bind(crate::db::datetime(now));
        });
        inserted += insert.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}

/// Why a code could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// No such code (or it was deleted).
    #[error("no such code")]
    NotFound,
    /// Already redeemed.
    #[error("this code has already been used")]
    AlreadyUsed,
    /// Suspended by an operator.
    #[error("this code is suspended")]
    Suspended,
    /// The user already redeemed a code of this topic, or already holds the coupon.
    #[error("this user has already been issued this coupon")]
    AlreadyIssued,
    /// The topic's policy is suspended or deleted.
    #[error("the coupon policy is suspended")]
    PolicySuspended,
    /// The topic's policy has no stock left.
    #[error("the coupon is sold out")]
    SoldOut,
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// A successful redeem by code: `{"code": "…", "topic_id": 3, "coupon_id": 1,
/// "coupon_issue_id": 9, "user_id": 7, "status": "ISSUED", "expires_at": "…"}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CodeRedemption {
    /// The code used.
    pub code: Code,
    /// Its topic.
    pub topic_id: i64,
    /// The policy issued.
    pub coupon_id: i64,
    /// The issued coupon.
    pub coupon_issue_id: i64,
    /// Its owner.
    pub user_id: UserId,
    /// Always `ISSUED`.
    pub status: &'static str,
    /// End of validity, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

fn is_deadlock(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001"))
}

/// Redeems `code` for `user`: marks the code used and issues the topic's coupon, in one
/// transaction. A deadlock between concurrent redeems (InnoDB may pick a victim when they
/// touch the same unique-index ranges) is retried a few times.
///
/// # Errors
/// A [`CodeError`] naming the refusal, or a database error.
pub async fn redeem_code(
    pool: &MySqlPool,
    code: &Code,
    user: UserId,
    now: DateTime<Utc>,
) -> Result<CodeRedemption, CodeError> {
    let mut attempts = 0;
    loop {
        match redeem_once(pool, code, user, now).await {
            Err(CodeError::Database(err)) if is_deadlock(&err) && attempts < 5 => attempts += 1,
            other => return other,
        }
    }
}

async fn redeem_once(
    pool: &MySqlPool,
    code: &Code,
    user: UserId,
    now: DateTime<Utc>,
) -> Result<CodeRedemption, CodeError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT cc.id, cc.topic_id, cc.status, cc.redeemed_by, ct.coupon_id \
         FROM coupon_codes cc JOIN coupon_topics ct ON ct.id = cc.topic_id \
         WHERE cc.code = ? FOR UPDATE",
    )
    .bind(code.as_str())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(CodeError::NotFound)?;
    let code_id: i64 = row.try_get("id")?;
    let topic_id: i64 = row.try_get("topic_id")?;
    let coupon_id: i64 = row.try_get("coupon_id")?;
    match row.try_get::<String, _>("status")?.as_str() {
        "DELETED" => return Err(CodeError::NotFound),
        "SUSPENDED" => return Err(CodeError::Suspended),
        _ => {}
    }
    if row.try_get::<Option<i64>, _>("redeemed_by")?.is_some() {
        return Err(CodeError::AlreadyUsed);
    }
    let policy = sqlx::query(&format!(
        "SELECT {} FROM coupons WHERE id = ? AND deleted_at IS NULL FOR UPDATE",
        repository::POLICY_COLUMNS
    ))
    .bind(coupon_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(CodeError::PolicySuspended)?;
    let policy = repository::policy_from_row(&policy)?;
    if policy.status != CouponStatus::Active {
        return Err(CodeError::PolicySuspended);
    }
    if policy
        .total_quantity
        .is_some_and(|total| policy.issued_quantity >= total)
    {
        return Err(CodeError::SoldOut);
    }
    let claim =
        sqlx::query("UPDATE coupon_codes SET redeemed_by = ?, redeemed_at = ? WHERE id = ?")
            .bind(user.get())
            .bind(crate::db::datetime(now))
            .bind(code_id)
            .execute(&mut *tx)
            .await;
    if let Err(err) = claim {
        return Err(if is_unique_violation(&err) {
            CodeError::AlreadyIssued
        } else {
            err.into()
        });
    }
    let expires_at = policy.expires_at(now);
    let issued = sqlx::query(
        "INSERT INTO coupon_issues (coupon_id, user_id, issued_at, expires_at, status, request_id) \
         VALUES (?, ?, ?, ?, 'ISSUED', ?)",
    )
    .bind(coupon_id)
    .bind(user.get())
    .bind(crate::db::datetime(now))
    .bind(crate::db::datetime(expires_at))
    .bind(uuid::Uuid::now_v7().to_string())
    .execute(&mut *tx)
    .await;
    let issue_id = match issued {
        Err(err) if is_unique_violation(&err) => return Err(CodeError::AlreadyIssued),
        other => i64::try_from(other?.last_insert_id()).unwrap_or(i64::MAX),
    };
    sqlx::query("UPDATE coupon_codes SET coupon_issue_id = ? WHERE id = ?")
        .bind(issue_id)
        .bind(code_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE coupons SET issued_quantity = issued_quantity + 1 WHERE id = ?")
        .bind(coupon_id)
        .execute(&mut *tx)
        .await?;
    events::record(&mut tx, EventType::Issued, &[issue_id], now).await?;
    tx.commit().await?;
    Ok(CodeRedemption {
        code: code.clone(),
        topic_id,
        coupon_id,
        coupon_issue_id: issue_id,
        user_id: user,
        status: "ISSUED",
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_normalised_by_one_parser() {
        let code = Code::parse("abcd-efgh-2345-wxyz").unwrap();
        assert_eq!(code.as_str(), "ABCDEFGH2345WXYZ");
        assert_eq!(Code::parse("ABCD EFGH 2345 WXYZ").unwrap(), code);
        assert_eq!(Code::parse("ABCDEFGH2345WXYZ").unwrap(), code);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "ABCDEFGH2345WXY",
            "ABCDEFGH2345WXYZA",
            "ABCDEFGH2345WXY!",
            "ÄBCDEFGH2345WXYZ",
        ] {
            assert!(Code::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_match_their_search_shape() {
        let by_id = CodeFilter::default();
        let by_time = CodeFilter {
            created_from: Some(Utc::now()),
            ..CodeFilter::default()
        };
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let timed = CodeCursor {
            id: 42,
            created_at: Some(at),
        };
        assert_eq!(timed.to_string(), "1795000000123456.42");
        assert_eq!(
            CodeCursor::parse("1795000000123456.42", &by_time).unwrap(),
            timed
        );
        assert_eq!(CodeCursor::parse("42", &by_id).unwrap().id, 42);
        for (raw, filter) in [
            ("42", &by_time),
            ("1795000000123456.42", &by_id),
            ("0", &by_id),
            ("x.42", &by_time),
            ("", &by_id),
        ] {
            assert!(CodeCursor::parse(raw, filter).is_err(), "{raw}");
        }
    }

    #[test]
    fn random_codes_are_well_formed_and_distinct() {
        let mut rng = rand::rng();
        let codes: std::collections::HashSet<_> =
            (0..10_000).map(|_| Code::random(&mut rng)).collect();
        assert_eq!(codes.len(), 10_000);
        assert!(codes
            .iter()
            .all(|c| Code::parse(c.as_str()).as_ref() == Ok(c)));
    }
}

/// A bulk change of a topic's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// `ACTIVE` → `SUSPENDED`.
    Suspend,
    /// `SUSPENDED` → `ACTIVE`.
    Activate,
    /// `ACTIVE` or `SUSPENDED` → `DELETED` (soft delete, `deleted_at` set).
    Delete,
}

/// Codes changed per transaction by [`bulk_change`] (count): each batch is its own short
/// transaction, so a million-code topic never holds its rows locked for long.
pub const BULK_BATCH: u32 = 1_000;

/// Applies `action` to every code of `topic` it applies to, in batches of [`BULK_BATCH`]
/// rows; returns how many changed. Idempotent: a repeat finds nothing left to change.
///
/// Each batch locks the next codes through [`BULK_BATCH_SQL`] and updates them by primary
/// key. A single `UPDATE … ORDER BY id LIMIT n` would be shorter but is slow here: it changes
/// the very index column it walks, so InnoDB buffers every matching row of the topic before
/// applying the limit (MariaDB's "Using buffer"), a full pass over millions of codes per batch.
///
/// # Errors
/// Any database error (batches already applied stay applied; a repeat finishes the job).
pub async fn bulk_change(
    pool: &MySqlPool,
    topic: i64,
    action: BulkAction,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let (from, to): (&[&str], &str) = match action {
        BulkAction::Suspend => (&["ACTIVE"], "SUSPENDED"),
        BulkAction::Activate => (&["SUSPENDED"], "ACTIVE"),
        BulkAction::Delete => (&["ACTIVE", "SUSPENDED"], "DELETED"),
    };
    let mut changed = 0;
    for status in from {
        loop {
            // A batch InnoDB rolled back as a deadlock victim (1213), say against a redeem or
            // a generation job on the same codes, is simply run again.
            let mut attempts = 0;
            let (batch_changed, batch_len) = loop {
                match bulk_batch(pool, topic, status, to, action, now).await {
                    Err(err) if is_deadlock(&err) && attempts < 5 => attempts += 1,
                    other => break other?,
                }
            };
            changed += batch_changed;
            if batch_len < BULK_BATCH as usize {
                break;
            }
        }
    }
    Ok(changed)
}

/// One transaction of [`bulk_change`]: locks up to [`BULK_BATCH`] codes of `topic` in
/// `status` and sets them to `to`; returns (codes changed, codes locked).
async fn bulk_batch(
    pool: &MySqlPool,
    topic: i64,
    status: &str,
    to: &str,
    action: BulkAction,
    now: DateTime<Utc>,
) -> Result<(u64, usize), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Bulk changes of one topic take turns batch by batch: without this lock, a suspend and
    // an activate walking the same (topic, status) index deadlocked again and again.
    sqlx::query("SELECT id FROM coupon_topics WHERE id = ? FOR UPDATE")
        .bind(topic)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<i64> = sqlx::query_scalar(BULK_BATCH_SQL)
        .bind(topic)
        .bind(status)
        .bind(BULK_BATCH)
        .fetch_all(&mut *tx)
        .await?;
    let mut changed = 0;
    if !ids.is_empty() {
        let mut update = QueryBuilder::<MySql>::new("UPDATE coupon_codes SET status = ");
        update.push_bind(to);
        if action == BulkAction::Delete {
            update
                .push(", deleted_at = ")
                .push_bind(crate::db::datetime(now));
        }
        update.push(" WHERE id IN ");
        repository::push_id_list(&mut update, &ids);
        changed = update.build().execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok((changed, ids.len()))
}

/// Locks the next batch of a bulk change: the first `?` (limit) codes of a topic (`?`) in a
/// status (`?`), on the forced `(topic_id, status, id)` index, so a batch reads only its rows.
pub const BULK_BATCH_SQL: &str =
    "SELECT id FROM coupon_codes FORCE INDEX (idx_coupon_codes_topic_status) \
     WHERE topic_id = ? AND status = ? ORDER BY id LIMIT ? FOR UPDATE";

/// Filters of the code search; all optional.
#[derive(Debug, Clone, Default)]
pub struct CodeFilter {
    /// `ACTIVE`, `SUSPENDED` or `DELETED`.
    pub status: Option<String>,
    /// Only redeemed (`true`) or unredeemed (`false`) codes.
    pub redeemed: Option<bool>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

/// One code as listed: `{"id": 1, "code": "…", "status": "ACTIVE", "redeemed_by": null,
/// "redeemed_at": null, "created_at": "…"}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CodeView {
    /// Row id (the pagination cursor).
    pub id: i64,
    /// The code.
    pub code: String,
    /// `ACTIVE`, `SUSPENDED` or `DELETED`.
    pub status: String,
    /// Who redeemed it.
    pub redeemed_by: Option<i64>,
    /// When.
    pub redeemed_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// The index a search with `filter` walks, chosen by the filter's shape and forced, so the
/// plan cannot drift to a primary-key scan across other topics' codes as the table grows:
///
/// | filter | index | cost |
/// |---|---|---|
/// | `status` (with or without others) | `(topic_id, status, id)` | reads the page |
/// | `redeemed` | `(topic_id, redeemed, id)` | reads the page |
/// | creation range only | `(topic_id, created_at, id)` | reads the page |
/// | none | `(topic_id, id)` | reads the page |
///
/// Further filters on top of the chosen index are checked row by row. A creation range alone
/// is ordered by `(created_at, id)`, the order of its index, and its cursor carries both.
pub fn search_index(filter: &CodeFilter) -> &'static str {
    if filter.status.is_some() {
        "idx_coupon_codes_topic_status"
    } else if filter.redeemed.is_some() {
        "idx_coupon_codes_topic_redeemed"
    } else if filter.created_from.is_some() || filter.created_to.is_some() {
        "idx_coupon_codes_topic_created"
    } else {
        "idx_coupon_codes_topic"
    }
}

/// Whether a search with `filter` is ordered by creation time (a creation range and no other
/// filter) rather than by id.
fn by_creation(filter: &CodeFilter) -> bool {
    search_index(filter) == "idx_coupon_codes_topic_created"
}

/// Where the next page of a code search starts: `"123"` (the last id) or, for a search ordered
/// by creation time, `"<created_at in µs since the epoch>.<id>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeCursor {
    /// The last code of the previous page.
    pub id: i64,
    /// Its creation time, for searches ordered by it.
    pub created_at: Option<DateTime<Utc>>,
}

impl CodeCursor {
    /// The cursor after `last` in a search with `filter`.
    pub fn after(last: &CodeView, filter: &CodeFilter) -> Self {
        Self {
            id: last.id,
            created_at: by_creation(filter).then_some(last.created_at),
        }
    }

    /// Reads a cursor handed out for a search with `filter`.
    ///
    /// # Errors
    /// [`ValidationError`] when `raw` is not a cursor of that search's shape.
    pub fn parse(raw: &str, filter: &CodeFilter) -> Result<Self, ValidationError> {
        let invalid = || ValidationError("cursor is not valid".into());
        let (created_at, id) = match raw.split_once('.') {
            Some((micros, id)) => (
                Some(
                    micros
                        .parse::<i64>()
                        .ok()
                        .and_then(DateTime::from_timestamp_micros)
                        .ok_or_else(invalid)?,
                ),
                id,
            ),
            None => (None, raw),
        };
        let id = id
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(invalid)?;
        if created_at.is_some() != by_creation(filter) {
            return Err(invalid());
        }
        Ok(Self { id, created_at })
    }
}

impl std::fmt::Display for CodeCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.created_at {
            Some(at) => write!(f, "{}.{}", at.timestamp_micros(), self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// The SQL of a code search, newest first, after `before`, at most `limit` rows, on the index
/// [`search_index`] picks and in its order, so no search sorts. `explain` prefixes `EXPLAIN`,
/// so tests can check the plan of the very statement served.
pub fn search_sql(
    explain: bool,
    topic: i64,
    filter: &CodeFilter,
    before: Option<CodeCursor>,
    limit: u32,
) -> QueryBuilder<'static, MySql> {
    let mut query = QueryBuilder::<MySql>::new(if explain { "EXPLAIN " } else { "" });
    query.push(format!(
        "SELECT id, code, status, redeemed_by, redeemed_at, created_at FROM coupon_codes \
         FORCE INDEX ({}) WHERE topic_id = ",
        search_index(filter)
    ));
    query.push_bind(topic);
    if let Some(status) = &filter.status {
        query.push(" AND status = ").push_bind(status.clone());
    }
    if let Some(redeemed) = filter.redeemed {
        query.push(" AND redeemed = ").push_bind(redeemed);
    }
    if let Some(from) = filter.created_from {
        query
            .push(" AND created_at >= ")
            .push_bind(crate::db::datetime(from));
    }
    if let Some(to) = filter.created_to {
        query
            .push(" AND created_at < ")
            .push_bind(crate::db::datetime(to));
    }
    match before {
        Some(CodeCursor {
            id,
            created_at: Some(at),
        }) => {
            query
                .push(" AND (created_at < ")
                .push_bind(crate::db::datetime(at));
            query
                .push(" OR (created_at = ")
                .push_bind(crate::db::datetime(at));
            query.push(" AND id < ").push_bind(id).push("))");
        }
        Some(CodeCursor { id, .. }) => {
            query.push(" AND id < ").push_bind(id);
        }
        None => {}
    }
    query.push(if by_creation(filter) {
        " ORDER BY created_at DESC, id DESC LIMIT "
    } else {
        " ORDER BY id DESC LIMIT "
    });
    query.push_bind(limit);
    query
}

/// Runs [`search_sql`].
///
/// # Errors
/// Any database error.
pub async fn search_codes(
    pool: &MySqlPool,
    topic: i64,
    filter: &CodeFilter,
    before: Option<CodeCursor>,
    limit: u32,
) -> Result<Vec<CodeView>, sqlx::Error> {
    search_sql(false, topic, filter, before, limit)
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(code_view_from_row)
        .collect()
}

fn code_view_from_row(row: &sqlx::mysql::MySqlRow) -> Result<CodeView, sqlx::Error> {
    Ok(CodeView {
        id: row.try_get("id")?,
        code: row.try_get("code")?,
        status: row.try_get("status")?,
        redeemed_by: row.try_get("redeemed_by")?,
        redeemed_at: row.try_get("redeemed_at")?,
        created_at: row.try_get("created_at")?,
    })
}

const CODE_COLUMNS: &str =
    "id, code, topic_id, status, redeemed_by, redeemed_at, coupon_issue_id, created_at, deleted_at";

/// Moves up to `batch` codes soft-deleted before `deleted_before` (with their redemption, kept
/// in the code row) into `coupon_codes_archive`, in one transaction, and returns how many moved.
/// Each batch is atomic and rows are taken with `FOR UPDATE SKIP LOCKED`, so the job can stop
/// anywhere, be run again, or run on several instances.
///
/// # Errors
/// Any database error (the batch is rolled back whole).
pub async fn archive_deleted(
    pool: &MySqlPool,
    deleted_before: DateTime<Utc>,
    batch: u32,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM coupon_codes FORCE INDEX (idx_coupon_codes_deleted) \
         WHERE status = 'DELETED' AND deleted_at < ? ORDER BY deleted_at LIMIT ? \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(crate::db::datetime(deleted_before))
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let mut copy = QueryBuilder::<MySql>::new(format!(
        "INSERT INTO coupon_codes_archive ({CODE_COLUMNS}, archived_at) SELECT {CODE_COLUMNS}, "
    ));
    copy.push_bind(crate::db::datetime(now))
        .push(" FROM coupon_codes WHERE id IN ");
    repository::push_id_list(&mut copy, &ids);
    copy.build().execute(&mut *tx).await?;
    let mut delete = QueryBuilder::<MySql>::new("DELETE FROM coupon_codes WHERE id IN ");
    repository::push_id_list(&mut delete, &ids);
    delete.build().execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// An archived code: [`CodeView`] plus its topic and when it was archived.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchivedCode {
    /// The code as it was.
    #[serde(flatten)]
    pub code: CodeView,
    /// Its topic.
    pub topic_id: i64,
    /// The issued coupon it produced, if redeemed.
    pub coupon_issue_id: Option<i64>,
    /// When it was soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the archival job moved it.
    pub archived_at: DateTime<Utc>,
}

/// Runs [`archive_deleted`] batch after batch until nothing older than `deleted_before` is
/// left, calling `on_batch` with each batch's count; returns the total moved (count).
///
/// # Errors
/// Any database error (batches already moved stay moved; a rerun finishes the job).
pub async fn archive_all_deleted(
    pool: &MySqlPool,
    deleted_before: DateTime<Utc>,
    batch: u32,
    now: DateTime<Utc>,
    mut on_batch: impl FnMut(usize),
) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let moved = archive_deleted(pool, deleted_before, batch, now).await?;
        if moved == 0 {
            return Ok(total);
        }
        total += moved;
        on_batch(moved);
        if moved < batch as usize {
            return Ok(total);
        }
    }
}

fn archived_from_row(row: &sqlx::mysql::MySqlRow) -> Result<ArchivedCode, sqlx::Error> {
    Ok(ArchivedCode {
        code: code_view_from_row(row)?,
        topic_id: row.try_get("topic_id")?,
        coupon_issue_id: row.try_get("coupon_issue_id")?,
        deleted_at: row.try_get("deleted_at")?,
        archived_at: row.try_get("archived_at")?,
    })
}

/// Looks `code` up in the archive.
///
/// # Errors
/// Any database error.
pub async fn find_archived(
    pool: &MySqlPool,
    code: &Code,
) -> Result<Option<ArchivedCode>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {CODE_COLUMNS}, archived_at FROM coupon_codes_archive WHERE code = ? ORDER BY id DESC LIMIT 1"
    ))
    .bind(code.as_str())
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(archived_from_row)
    .transpose()
}

/// Archived codes of `topic`, newest first (`id < before`), at most `limit`; walks
/// `(topic_id, id)`.
///
/// # Errors
/// Any database error.
pub async fn list_archived(
    pool: &MySqlPool,
    topic: i64,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<ArchivedCode>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {CODE_COLUMNS}, archived_at FROM coupon_codes_archive \
         WHERE topic_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(topic)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(archived_from_row)
    .collect()
}
