//! Searching a topic's codes by status, redemption and creation time, with keyset cursors
//! on the index the filter chooses.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::domain::ValidationError;

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
            .push_bind(crate::store::db::datetime(from));
    }
    if let Some(to) = filter.created_to {
        query
            .push(" AND created_at < ")
            .push_bind(crate::store::db::datetime(to));
    }
    match before {
        Some(CodeCursor {
            id,
            created_at: Some(at),
        }) => {
            query
                .push(" AND (created_at < ")
                .push_bind(crate::store::db::datetime(at));
            query
                .push(" OR (created_at = ")
                .push_bind(crate::store::db::datetime(at));
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

pub(super) fn code_view_from_row(row: &sqlx::mysql::MySqlRow) -> Result<CodeView, sqlx::Error> {
    Ok(CodeView {
        id: row.try_get("id")?,
        code: row.try_get("code")?,
        status: row.try_get("status")?,
        redeemed_by: row.try_get("redeemed_by")?,
        redeemed_at: row.try_get("redeemed_at")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) const CODE_COLUMNS: &str =
    "id, code, topic_id, status, redeemed_by, redeemed_at, coupon_issue_id, created_at, deleted_at";

#[cfg(test)]
mod tests {
    use super::*;

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
}
