//! Persisting issue messages into `coupon_issues`: one transaction per batch, idempotent by
//! `UNIQUE (coupon_id, user_id)` (a redelivered message is a no-op), with the policy's
//! `issued_quantity` raised by the rows actually inserted.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no database.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::{Connection, MySql, QueryBuilder, Row, Transaction};

use crate::domain::{CorrelationId, CouponId, UserId};
use crate::issue::message::IssueMessage;

/// Whether `(coupon, user)` has a `coupon_issues` row.
///
/// # Errors
/// Any database error.
pub async fn issue_exists(
    pool: &MySqlPool,
    coupon: CouponId,
    user: UserId,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT 1 FROM coupon_issues WHERE coupon_id = ? AND user_id = ?")
        .bind(coupon.get())
        .bind(user.get())
        .fetch_optional(pool)
        .await?;
    Ok(row.is_some())
}

/// Why a message of a batch can never be persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No `coupons` row has the message's coupon id.
    UnknownCoupon,
    /// Persisting the message would push `issued_quantity` past `total_quantity`: the
    /// admission set and MySQL disagree (invariant 1), which needs an operator. Only the
    /// messages beyond the units left are refused; the rest of their coupon's group persists.
    StockExceeded,
    /// MySQL refused the message's row for a reason that a retry cannot change (a foreign
    /// key, a CHECK constraint, a value out of range or too long); the error is kept.
    RefusedByDatabase(String),
}

impl Rejection {
    /// Stable label, used as the dead-letter reason and the metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UnknownCoupon => "unknown_coupon",
            Self::StockExceeded => "stock_exceeded",
            Self::RefusedByDatabase(_) => "refused_by_database",
        }
    }
}

/// Whether MySQL refused a row for good: a data or constraint error that the same row meets
/// again on every retry (MySQL/MariaDB error numbers: 1048 NULL in a NOT NULL column, 1264
/// and 1690 out of range, 1265 truncated, 1292 and 1366 incorrect value, 1406 too long, 1451/1452
/// foreign key, 3819 (MySQL) and 4025 (MariaDB) CHECK constraint). A duplicate key (1062) is
/// not one of them: the pre-read absorbs duplicates, so one seen here is a race with another
/// writer and the retry finds the row. Connection errors, deadlocks (1213) and lock wait
/// timeouts (1205) are transient too.
pub fn is_refusal(err: &sqlx::Error) -> bool {
    const REFUSALS: [u16; 11] = [
        1048, 1264, 1265, 1292, 1366, 1406, 1451, 1452, 3819, 4025, 1690,
    ];
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|db| REFUSALS.contains(&db.number()))
}

/// What became of one message of a batch handed to [`persist_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its row was inserted and counted in the coupon's `issued_quantity`.
    Persisted,
    /// Nothing was written for it: its row was already present (a redelivery), or an earlier
    /// message of the batch carries the same coupon and user.
    Duplicate,
    /// It can never be persisted, for this reason.
    Rejected(Rejection),
}

/// What [`persist_batch`] did: each message's outcome, and the totals per coupon.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PersistReport {
    /// One outcome per message, in the batch's order: `outcomes[i]` is `batch[i]`'s.
    pub outcomes: Vec<Outcome>,
    /// Rows actually inserted, per coupon (redelivered messages insert nothing; a coupon with
    /// none is absent).
    pub inserted: BTreeMap<CouponId, u64>,
    /// Messages skipped because their row was already present (count): the
    /// [`Outcome::Duplicate`]s.
    pub duplicates: u64,
    /// Coupons whose `issued_quantity` reached `total_quantity` in this batch, in ascending
    /// order.
    pub sold_out: Vec<CouponId>,
}

/// Persists a batch of issue messages in ONE transaction: per coupon (ascending ids, so
/// concurrent consumers lock coupons in the same order and cannot deadlock on them), the
/// group's users that already have a row under `UNIQUE (coupon_id, user_id)` are read (a
/// locking read, after the coupon row is locked), the others are inserted with one multi-row
/// `INSERT` (no `IGNORE`: MySQL's `IGNORE` turns foreign-key, CHECK and truncation errors
/// into warnings too, so a refused row would pass for a duplicate), then
/// `issued_quantity += rows inserted`.
///
/// At-least-once delivery plus the unique key make each issue persist exactly once: a batch
/// delivered twice inserts and counts nothing the second time. Each coupon's group runs in a
/// savepoint. Messages beyond the units the coupon has left are reported as
/// [`Rejection::StockExceeded`] (the earliest in the batch persist); a row MySQL refuses for
/// good ([`is_refusal`]) is found by inserting the group's rows one at a time, and only it is
/// reported, as [`Rejection::RefusedByDatabase`]. The messages of a coupon without a row are
/// reported as [`Rejection::UnknownCoupon`]. The report gives each message's [`Outcome`], in
/// the batch's order.
///
/// # Errors
/// Any other database error (connection, deadlock, lock wait timeout, a duplicate raced in by
/// another writer); the transaction is rolled back and nothing of the batch is persisted, so
/// the caller may retry the whole batch.
pub async fn persist_batch(
    pool: &MySqlPool,
    batch: &[IssueMessage],
) -> Result<PersistReport, sqlx::Error> {
    let mut report = PersistReport::default();
    if batch.is_empty() {
        return Ok(report);
    }
    let groups = group_by_coupon(batch);

    let mut tx = pool.begin().await?;
    let policies = lock_coupons(&mut tx, groups.keys().copied()).await?;
    // Keyed by position in the batch: every message belongs to exactly one group, so the
    // values, in key order, are the outcomes in the batch's order.
    let mut outcomes = BTreeMap::new();
    for (coupon, group) in &groups {
        let Some(policy) = policies.get(&coupon.get()) else {
            for entry in group {
                let unknown = Outcome::Rejected(Rejection::UnknownCoupon);
                outcomes.insert(entry.position, unknown);
            }
            continue;
        };
        let done = persist_group(&mut tx, *coupon, policy, group).await?;
        report.duplicates += done.duplicates.len() as u64;
        let inserted = done.inserted.len() as u64;
        if inserted > 0 {
            report.inserted.insert(*coupon, inserted);
            if policy.is_reached_by(inserted) {
                report.sold_out.push(*coupon);
            }
        }
        done.record_outcomes(&mut outcomes);
    }
    tx.commit().await?;
    report.outcomes = outcomes.into_values().collect();
    debug_assert_eq!(
        report.outcomes.len(),
        batch.len(),
        "one outcome per message"
    );
    Ok(report)
}

/// One message of a coupon's group, with its position in the batch (where its outcome goes).
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    /// Index of the message in the batch.
    position: usize,
    /// The message.
    message: &'a IssueMessage,
}

impl Entry<'_> {
    /// The message's user id.
    fn user(&self) -> i64 {
        self.message.user_id.get()
    }
}

/// The batch's messages grouped by coupon, in ascending coupon ids (the order the coupons are
/// locked in), each group in the batch's order.
fn group_by_coupon(batch: &[IssueMessage]) -> BTreeMap<CouponId, Vec<Entry<'_>>> {
    let mut groups: BTreeMap<CouponId, Vec<Entry<'_>>> = BTreeMap::new();
    for (position, message) in batch.iter().enumerate() {
        groups
            .entry(message.coupon_id)
            .or_default()
            .push(Entry { position, message });
    }
    groups
}

/// A coupon's row as a batch's group needs it, read under its lock.
#[derive(Debug, Clone)]
struct GroupPolicy {
    /// `total_quantity`: units of stock (count), `None` for an unlimited coupon.
    total: Option<i64>,
    /// `issued_quantity` before this batch (count).
    issued: i64,
    /// `valid_days`, for the rows' `expires_at`.
    valid_days: Option<i32>,
    /// `valid_until`, for the rows' `expires_at`.
    valid_until: Option<DateTime<Utc>>,
}

impl GroupPolicy {
    /// Whether `inserted` more rows bring `issued_quantity` to exactly `total_quantity`.
    fn is_reached_by(&self, inserted: u64) -> bool {
        let now_issued = self.issued + i64::try_from(inserted).unwrap_or(i64::MAX);
        self.total == Some(now_issued)
    }
}

/// Locks the rows of `coupons` (given in ascending ids, the lock order every consumer uses)
/// with one `SELECT … ORDER BY id FOR UPDATE`, and reads what their groups need, by coupon id;
/// an id without a row is absent from the map.
async fn lock_coupons(
    conn: &mut MySqlConnection,
    coupons: impl Iterator<Item = CouponId>,
) -> Result<BTreeMap<i64, GroupPolicy>, sqlx::Error> {
    let mut lock = QueryBuilder::<MySql>::new(
        "SELECT id, total_quantity, issued_quantity, valid_days, valid_until FROM coupons WHERE id IN (",
    );
    let mut ids = lock.separated(", ");
    for id in coupons {
        ids.push_bind(id.get());
    }
    lock.push(") ORDER BY id FOR UPDATE");
    let mut policies = BTreeMap::new();
    for row in lock.build().fetch_all(conn).await? {
        let id: i64 = row.try_get("id")?;
        let policy = GroupPolicy {
            total: row.try_get("total_quantity")?,
            issued: row.try_get("issued_quantity")?,
            valid_days: row.try_get("valid_days")?,
            valid_until: row.try_get("valid_until")?,
        };
        policies.insert(id, policy);
    }
    Ok(policies)
}

/// What [`persist_group`] did with each message of one coupon's group, each list in the
/// batch's order.
struct GroupReport<'a> {
    /// Messages whose row was inserted.
    inserted: Vec<Entry<'a>>,
    /// Messages whose row was already present, or whose user an earlier message carries.
    duplicates: Vec<Entry<'a>>,
    /// Messages beyond the units the coupon had left.
    excess: Vec<Entry<'a>>,
    /// Messages whose row MySQL refused for good ([`is_refusal`]), with its error text.
    refused: Vec<(Entry<'a>, String)>,
}

impl GroupReport<'_> {
    /// Sets each message's outcome in `outcomes`, keyed by its position in the batch.
    fn record_outcomes(self, outcomes: &mut BTreeMap<usize, Outcome>) {
        for entry in self.inserted {
            outcomes.insert(entry.position, Outcome::Persisted);
        }
        for entry in self.duplicates {
            outcomes.insert(entry.position, Outcome::Duplicate);
        }
        for entry in self.excess {
            let exceeded = Outcome::Rejected(Rejection::StockExceeded);
            outcomes.insert(entry.position, exceeded);
        }
        for (entry, error) in self.refused {
            let refused = Outcome::Rejected(Rejection::RefusedByDatabase(error));
            outcomes.insert(entry.position, refused);
        }
    }
}

/// Persists one coupon's group in a savepoint of the batch's transaction, under the coupon's
/// row lock: sets the duplicates aside ([`present_users`], [`split_duplicates`]), then what
/// exceeds the units left ([`take_room`]), inserts the rest ([`insert_group`]), then counts
/// the rows and records their events ([`count_and_record`]).
///
/// # Errors
/// A database error other than a refusal; the savepoint is not committed.
async fn persist_group<'a>(
    conn: &mut MySqlConnection,
    coupon: CouponId,
    policy: &GroupPolicy,
    group: &[Entry<'a>],
) -> Result<GroupReport<'a>, sqlx::Error> {
    let mut savepoint = Connection::begin(conn).await?;
    let present = present_users(&mut savepoint, coupon, group).await?;
    let (fresh, duplicates) = split_duplicates(group, &present);
    let (fresh, excess) = take_room(coupon, policy, fresh);
    let Insertion { inserted, refused } =
        insert_group(&mut savepoint, coupon, policy, fresh).await?;
    if !inserted.is_empty() {
        count_and_record(&mut savepoint, coupon, &inserted).await?;
    }
    savepoint.commit().await?;
    Ok(GroupReport {
        inserted,
        duplicates,
        excess,
        refused,
    })
}

/// The users of `group` that already have a row of `coupon` (a locking read, so a row another
/// transaction committed after this one began is seen).
async fn present_users(
    conn: &mut MySqlConnection,
    coupon: CouponId,
    group: &[Entry<'_>],
) -> Result<HashSet<i64>, sqlx::Error> {
    let mut query =
        QueryBuilder::<MySql>::new("SELECT user_id FROM coupon_issues WHERE coupon_id = ");
    query.push_bind(coupon.get()).push(" AND user_id IN (");
    let mut users = query.separated(", ");
    for entry in group {
        users.push_bind(entry.user());
    }
    query.push(") FOR UPDATE");
    let rows = query.build().fetch_all(conn).await?;
    rows.iter()
        .map(|row| row.try_get::<i64, _>("user_id"))
        .collect()
}

/// Splits `group` into the messages to insert and the duplicates: a message whose user is
/// `present` (has a row already), or whose user an earlier message of the group carries. Both
/// keep the batch's order.
fn split_duplicates<'a>(
    group: &[Entry<'a>],
    present: &HashSet<i64>,
) -> (Vec<Entry<'a>>, Vec<Entry<'a>>) {
    let mut seen = HashSet::new();
    group
        .iter()
        .partition(|entry| !present.contains(&entry.user()) && seen.insert(entry.user()))
}

/// Splits `fresh` at the units the coupon has left: the earliest messages of the batch take
/// them, the rest is the excess (logged as an error: the admission set and MySQL disagree).
/// An unlimited coupon has no excess.
fn take_room<'a>(
    coupon: CouponId,
    policy: &GroupPolicy,
    mut fresh: Vec<Entry<'a>>,
) -> (Vec<Entry<'a>>, Vec<Entry<'a>>) {
    let Some(total) = policy.total else {
        return (fresh, Vec::new());
    };
    let room = usize::try_from(total - policy.issued).unwrap_or(0);
    if fresh.len() <= room {
        return (fresh, Vec::new());
    }
    let excess = fresh.split_off(room);
    tracing::error!(
        coupon_id = %coupon, issued = policy.issued, total, excess = excess.len(),
        "persisting would exceed the stock; the excess is dead-lettered"
    );
    (fresh, excess)
}

/// The rows of a group [`insert_group`] inserted, and those MySQL refused for good.
struct Insertion<'a> {
    /// Messages whose row was inserted, in the batch's order.
    inserted: Vec<Entry<'a>>,
    /// Messages whose row MySQL refused for good ([`is_refusal`]), with its error text.
    refused: Vec<(Entry<'a>, String)>,
}

/// Inserts the rows of `fresh` with one multi-row `INSERT`. When MySQL refuses a row for good
/// ([`is_refusal`]), inserts them again one at a time, each in a savepoint of its own, so only
/// the refused rows are left out.
///
/// # Errors
/// A database error other than a refusal.
async fn insert_group<'a>(
    conn: &mut MySqlConnection,
    coupon: CouponId,
    policy: &GroupPolicy,
    fresh: Vec<Entry<'a>>,
) -> Result<Insertion<'a>, sqlx::Error> {
    match insert_rows(conn, &fresh, policy).await {
        Ok(()) => Ok(Insertion {
            inserted: fresh,
            refused: Vec::new(),
        }),
        Err(err) if is_refusal(&err) => {
            tracing::warn!(%err, coupon_id = %coupon, "MySQL refused a row; inserting the group's rows one at a time");
            let mut insertion = Insertion {
                inserted: Vec::with_capacity(fresh.len()),
                refused: Vec::new(),
            };
            for entry in fresh {
                let mut one = Connection::begin(&mut *conn).await?;
                match insert_rows(&mut one, &[entry], policy).await {
                    Ok(()) => {
                        one.commit().await?;
                        insertion.inserted.push(entry);
                    }
                    Err(err) if is_refusal(&err) => {
                        one.rollback().await?;
                        insertion.refused.push((entry, err.to_string()));
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(insertion)
        }
        Err(err) => Err(err),
    }
}

/// Inserts the rows of `entries` (none: nothing to do) with one multi-row `INSERT`.
async fn insert_rows(
    conn: &mut MySqlConnection,
    entries: &[Entry<'_>],
    policy: &GroupPolicy,
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut insert = QueryBuilder::<MySql>::new(
        "INSERT INTO coupon_issues \
         (coupon_id, user_id, issued_at, expires_at, status, request_id, correlation_id) ",
    );
    insert.push_values(entries, |mut row, entry| {
        let msg = entry.message;
        row.push_bind(msg.coupon_id.get())
            .push_bind(msg.user_id.get())
            .push_bind(crate::store::db::datetime(msg.admitted_at))
            .push_bind(crate::store::db::datetime(crate::domain::expiry(
                policy.valid_days,
                policy.valid_until,
                msg.admitted_at,
            )))
            .push_bind("ISSUED")
            .push_bind(msg.request_id.to_string())
            .push_bind(msg.correlation_id.as_ref().map(CorrelationId::as_str));
    });
    insert.build().execute(conn).await?;
    Ok(())
}

/// Raises the coupon's `issued_quantity` by the rows just `inserted` (at least one), then
/// records their `ISSUED` events.
///
/// # Errors
/// Any database error.
async fn count_and_record(
    savepoint: &mut Transaction<'_, MySql>,
    coupon: CouponId,
    inserted: &[Entry<'_>],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE coupons SET issued_quantity = issued_quantity + ? WHERE id = ?")
        .bind(inserted.len() as u64)
        .bind(coupon.get())
        .execute(&mut **savepoint)
        .await?;
    // ISSUED events have ids derived from the issued coupon (the outbox's unique key
    // skips one announced twice); the new rows are read once, by the unique key, and the
    // events built from them.
    let mut rows = QueryBuilder::<MySql>::new(format!(
        "SELECT {} FROM coupon_issues WHERE coupon_id = ",
        crate::events::EVENT_SOURCE_COLUMNS
    ));
    rows.push_bind(coupon.get()).push(" AND user_id IN (");
    let mut users = rows.separated(", ");
    for entry in inserted {
        users.push_bind(entry.user());
    }
    rows.push(")");
    let rows = rows.build().fetch_all(&mut **savepoint).await?;
    crate::events::record_rows(
        savepoint,
        crate::events::EventType::Issued,
        &rows,
        Utc::now(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(coupon: i64, user: i64) -> IssueMessage {
        IssueMessage {
            coupon_id: CouponId::parse(coupon).unwrap(),
            user_id: UserId::parse(user).unwrap(),
            request_id: uuid::Uuid::now_v7(),
            admitted_at: Utc::now(),
            stock_shards: crate::domain::ShardCount::ONE,
            correlation_id: None,
        }
    }

    fn policy(total: Option<i64>, issued: i64) -> GroupPolicy {
        GroupPolicy {
            total,
            issued,
            valid_days: None,
            valid_until: None,
        }
    }

    fn positions(entries: &[Entry<'_>]) -> Vec<usize> {
        entries.iter().map(|entry| entry.position).collect()
    }

    #[test]
    fn groups_are_in_ascending_coupon_order_and_keep_the_batch_order() {
        let batch = [message(7, 1), message(3, 1), message(7, 2), message(3, 2)];

        let groups = group_by_coupon(&batch);

        let coupons: Vec<i64> = groups.keys().map(|coupon| coupon.get()).collect();
        assert_eq!(coupons, [3, 7]);
        let members: Vec<Vec<usize>> = groups.values().map(|group| positions(group)).collect();
        assert_eq!(members, [vec![1, 3], vec![0, 2]]);
    }

    #[test]
    fn present_users_and_repeats_inside_the_group_are_duplicates() {
        let batch = [message(1, 1), message(1, 2), message(1, 2), message(1, 3)];
        let groups = group_by_coupon(&batch);
        let group = groups.values().next().unwrap();

        let (fresh, duplicates) = split_duplicates(group, &HashSet::from([1]));

        assert_eq!(positions(&fresh), [1, 3]);
        assert_eq!(positions(&duplicates), [0, 2]);
    }

    #[test]
    fn the_earliest_messages_take_the_units_left_and_the_rest_is_the_excess() {
        let batch: Vec<_> = (1..=4).map(|user| message(1, user)).collect();
        let groups = group_by_coupon(&batch);
        let group = groups.values().next().unwrap().clone();
        let coupon = CouponId::parse(1).unwrap();

        let (taken, excess) = take_room(coupon, &policy(Some(5), 3), group.clone());
        assert_eq!(
            (positions(&taken), positions(&excess)),
            (vec![0, 1], vec![2, 3])
        );

        let (taken, excess) = take_room(coupon, &policy(Some(5), 6), group.clone());
        assert_eq!(
            (positions(&taken), positions(&excess)),
            (vec![], vec![0, 1, 2, 3])
        );

        let (taken, excess) = take_room(coupon, &policy(None, 1_000), group);
        assert_eq!(
            (positions(&taken), positions(&excess)),
            (vec![0, 1, 2, 3], vec![])
        );
    }

    #[test]
    fn a_coupon_sells_out_when_the_rows_inserted_reach_its_total_exactly() {
        assert!(policy(Some(3), 1).is_reached_by(2));
        assert!(!policy(Some(3), 1).is_reached_by(1));
        assert!(!policy(None, 1).is_reached_by(2));
    }
}
