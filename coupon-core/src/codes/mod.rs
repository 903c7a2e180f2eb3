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
//! `UNIQUE (coupon_id, user_id)` a second coupon. A policy with a stock (`total_quantity`)
//! hands out one pool of units to code redeemers and issue requests alike: inside that
//! transaction the redeem takes its unit through the issue endpoint's atomic admission script
//! ([`crate::issue::admission`]), so the admission set holds every holder, `SCARD` never passes
//! the stock, and a code holder asking the issue endpoint hears `ALREADY_ISSUED`. Such a redeem
//! needs Redis (refused 503 without it, nothing issued); a policy without a stock needs MySQL
//! alone and adds its holder to the set after the commit, best effort. Losing Redis cannot
//! allow a double use either way: the locks and unique keys above are MySQL's.
//!
//! Modules: this one holds codes and topics and generates codes; [`redeem`] redeems one,
//! [`bulk`] changes many, [`search`] finds them, [`archive`] moves deleted ones away, and
//! [`jobs`] runs resumable generation jobs.

mod archive;
mod bulk;
pub mod jobs;
mod redeem;
mod search;

pub use archive::*;
pub use bulk::*;
pub use redeem::*;
pub use search::*;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::domain::{CouponId, ValidationError};
use crate::policies;

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
    if policies::find_policy(pool, coupon).await?.is_none() {
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
                .push_bind(crate::store::db::datetime(now));
        });
        inserted += insert.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
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
