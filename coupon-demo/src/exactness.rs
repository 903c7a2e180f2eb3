//! Exactness of one coupon, read from MySQL and Redis directly: what `make demo` prints after
//! its own race, and what `coupon-demo verify` prints after a k6 or Locust run.
//!
//! Once the consumer has drained, a coupon is exact when
//! - it is never over-issued: no more rows in `coupon_issues` than `coupons.total_quantity`;
//! - nobody holds it twice: one row per user;
//! - the counts agree: `coupons.issued_quantity` and the size of the Redis admission set equal
//!   the rows, and every row belongs to a member of the set;
//! - nothing accepted was lost: as many rows as the load client counted `202` answers (when it
//!   counted them) and, when it knows who was accepted, exactly those users hold one.
//!
//! [`Holdings`] reads what the stores hold; [`audit`] judges them against a load tool's count
//! of 202 answers, [`verify`] against the demo's own [`RaceReport`]; both give lines that
//! print as one table ending in `result: EXACT` or `result: FAILED`.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::{AdmissionStore, StockShards};
use sqlx::MySqlPool;

use crate::RaceReport;

/// How often the waits below read the stores again.
const POLL: Duration = Duration::from_millis(200);

/// What MySQL and Redis hold for one coupon.
#[derive(Debug, Clone)]
pub struct Holdings {
    /// `coupons.total_quantity`; `None` for a coupon without a stock limit.
    pub stock: Option<i64>,
    /// `coupons.issued_quantity`.
    pub issued_quantity: i64,
    /// The user of every row of the coupon in `coupon_issues`, one entry per row.
    pub row_users: Vec<i64>,
    /// `SCARD` of the coupon's Redis admission set.
    pub admitted: i64,
    /// The members of that set.
    pub members: HashSet<i64>,
}

impl Holdings {
    /// Reads the coupon's row, its issues and its admission set.
    ///
    /// # Errors
    /// The coupon does not exist, or a store cannot be read.
    pub async fn read(
        pool: &MySqlPool,
        redis: &AdmissionStore,
        coupon: CouponId,
    ) -> anyhow::Result<Self> {
        let counts: Option<(Option<i64>, i64, u16)> = sqlx::query_as(
            "SELECT total_quantity, issued_quantity, stock_shards FROM coupons WHERE id = ?",
        )
        .bind(coupon.get())
        .fetch_optional(pool)
        .await
        .context("reading the coupon")?;
        let Some((stock, issued_quantity, shards)) = counts else {
            bail!("coupon {coupon} does not exist");
        };
        let shards = StockShards::new(coupon, coupon_core::store::db::shard_count(shards)?);
        let row_users = sqlx::query_scalar("SELECT user_id FROM coupon_issues WHERE coupon_id = ?")
            .bind(coupon.get())
            .fetch_all(pool)
            .await
            .context("reading coupon_issues")?;
        Ok(Self {
            stock,
            issued_quantity,
            row_users,
            admitted: redis.admitted_count(shards).await?,
            members: redis
                .members(shards)
                .await?
                .into_iter()
                .map(UserId::get)
                .collect(),
        })
    }

    /// Rows of the coupon in `coupon_issues` (count).
    pub fn rows(&self) -> i64 {
        i64::try_from(self.row_users.len()).unwrap_or(i64::MAX)
    }

    /// The users holding a row.
    pub fn users(&self) -> HashSet<i64> {
        self.row_users.iter().copied().collect()
    }

    /// Users holding a row who are not in the admission set (count).
    pub fn rows_without_admission(&self) -> usize {
        self.users().difference(&self.members).count()
    }

    /// Whether the consumer has caught up: every admission has its row, and
    /// `issued_quantity` says so.
    pub fn settled(&self) -> bool {
        self.rows() == self.issued_quantity && self.rows() == self.admitted
    }
}

/// Reads the stores until the consumer has caught up ([`Holdings::settled`]) with at least
/// `accepted` rows, or `timeout` has passed; returns the last reading either way, so the
/// verdict shows what did not settle.
///
/// # Errors
/// The coupon does not exist, or a store cannot be read.
pub async fn wait_until_settled(
    pool: &MySqlPool,
    redis: &AdmissionStore,
    coupon: CouponId,
    accepted: i64,
    timeout: Duration,
) -> anyhow::Result<Holdings> {
    let deadline = Instant::now() + timeout;
    loop {
        let holdings = Holdings::read(pool, redis, coupon).await?;
        if (holdings.settled() && holdings.rows() >= accepted) || Instant::now() > deadline {
            return Ok(holdings);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Rows of `coupon` in `coupon_issues` (count).
///
/// # Errors
/// Any database error.
pub async fn row_count(pool: &MySqlPool, coupon: CouponId) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues WHERE coupon_id = ?")
            .bind(coupon.get())
            .fetch_one(pool)
            .await?,
    )
}

/// Polls MySQL until `coupon` has `expected` rows and its `issued_quantity` says so too.
///
/// # Errors
/// Not drained within `timeout` (the message says how far it got), or a database error.
pub async fn wait_until_drained(
    pool: &MySqlPool,
    coupon: CouponId,
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = row_count(pool, coupon).await?;
        let issued: i64 = sqlx::query_scalar("SELECT issued_quantity FROM coupons WHERE id = ?")
            .bind(coupon.get())
            .fetch_one(pool)
            .await?;
        if rows >= expected && issued >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not drained after {timeout:?}: {rows} rows, issued_quantity {issued}, expected {expected}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One line of a verdict: a count, and whether it is what exactness requires (`None` for a
/// count shown for information only).
#[derive(Debug, Clone)]
pub struct Line {
    /// What was counted.
    pub what: &'static str,
    /// The count.
    pub value: i64,
    /// Whether it holds; `None`: nothing is required of it.
    pub ok: Option<bool>,
}

impl Line {
    fn check(what: &'static str, value: i64, ok: bool) -> Self {
        Self {
            what,
            value,
            ok: Some(ok),
        }
    }

    fn info(what: &'static str, value: usize) -> Self {
        Self {
            what,
            value: count(value),
            ok: None,
        }
    }
}

/// Every count read about one coupon and whether each holds; prints as a table ending in
/// `result: EXACT` or `result: FAILED`.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The table's first line.
    pub heading: String,
    /// Its lines, in order.
    pub lines: Vec<Line>,
}

impl Verdict {
    /// Whether every line that requires something holds.
    pub fn holds(&self) -> bool {
        self.lines.iter().all(|line| line.ok != Some(false))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.heading)?;
        for line in &self.lines {
            let mark = match line.ok {
                Some(true) => "  ok",
                Some(false) => "  MISMATCH",
                None => "",
            };
            writeln!(f, "  {:<34} {:>7}{mark}", line.what, line.value)?;
        }
        write!(
            f,
            "result: {}",
            if self.holds() { "EXACT" } else { "FAILED" }
        )
    }
}

/// A count as a table value (never that large).
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The lines every verdict shares, after the one on the rows: the counts that must agree
/// with the rows once the consumer has drained.
fn agreement(rows: i64, distinct: i64, issued: i64, admitted: i64, unadmitted: usize) -> [Line; 4] {
    [
        Line::check(
            "distinct users in coupon_issues",
            distinct,
            distinct == rows,
        ),
        Line::check("coupons.issued_quantity", issued, issued == rows),
        Line::check(
            "Redis SCARD of the admission set",
            admitted,
            admitted == rows,
        ),
        Line::check(
            "rows without an admission",
            count(unadmitted),
            unadmitted == 0,
        ),
    ]
}

/// Judges a coupon that another load tool raced (`coupon-demo verify`): never more rows than
/// stock, the counts in agreement, and, when the tool counted its 202 answers (`accepted`),
/// exactly that many rows.
pub fn audit(coupon: CouponId, holdings: &Holdings, accepted: Option<i64>) -> Verdict {
    let rows = holdings.rows();
    let mut lines = Vec::new();
    if let Some(accepted) = accepted {
        lines.push(Line::check(
            "202 Accepted answers",
            accepted,
            accepted == rows,
        ));
    }
    lines.push(Line::check(
        "rows in coupon_issues",
        rows,
        holdings.stock.is_none_or(|stock| rows <= stock),
    ));
    lines.extend(agreement(
        rows,
        count(holdings.users().len()),
        holdings.issued_quantity,
        holdings.admitted,
        holdings.rows_without_admission(),
    ));
    let stock = holdings
        .stock
        .map_or_else(|| "no stock limit".to_owned(), |s| format!("stock {s}"));
    Verdict {
        heading: format!("verification of coupon {coupon} ({stock}):"),
        lines,
    }
}

/// Everything [`verify`] read after the demo's race.
#[derive(Debug)]
pub struct Verification {
    /// The stock every count must equal: the race has more distinct users than stock.
    pub stock: i64,
    /// `202 Accepted` answers (count).
    pub accepted: i64,
    /// Rows in `coupon_issues` (count).
    pub rows: i64,
    /// Distinct users among the rows (count).
    pub distinct_users: i64,
    /// `coupons.issued_quantity`.
    pub issued_quantity: i64,
    /// `SCARD` of the Redis admission set.
    pub admitted: i64,
    /// Users with a row who are not in the admission set (count; must be 0).
    pub rows_without_admission: usize,
    /// Users answered 202 without a row (count; must be 0).
    pub accepted_without_row: usize,
    /// Users with a row who were not answered 202 (count; must be 0).
    pub row_without_accept: usize,
    /// `409 ALREADY_ISSUED` answers (count).
    pub already_issued: usize,
    /// `409 ISSUE_IN_PROGRESS` answers: a repeat while the user's first admission was still
    /// pending (count).
    pub in_progress: usize,
    /// `409 SOLD_OUT` answers (count).
    pub sold_out: usize,
    /// Any other answer (count; must be 0).
    pub unexpected: usize,
}

impl Verification {
    /// Every count, and whether each holds: all of them equal the stock, the user sets match.
    pub fn verdict(&self) -> Verdict {
        let mut lines = vec![
            Line::check(
                "202 Accepted answers",
                self.accepted,
                self.accepted == self.stock,
            ),
            Line::check("rows in coupon_issues", self.rows, self.rows == self.stock),
        ];
        lines.extend(agreement(
            self.rows,
            self.distinct_users,
            self.issued_quantity,
            self.admitted,
            self.rows_without_admission,
        ));
        lines.extend([
            Line::check(
                "accepted users without a row",
                count(self.accepted_without_row),
                self.accepted_without_row == 0,
            ),
            Line::check(
                "rows of users not accepted",
                count(self.row_without_accept),
                self.row_without_accept == 0,
            ),
            Line::info("409 ALREADY_ISSUED (duplicates)", self.already_issued),
            Line::info("409 ISSUE_IN_PROGRESS (pending)", self.in_progress),
            Line::info("409 SOLD_OUT", self.sold_out),
            Line::check(
                "other answers",
                count(self.unexpected),
                self.unexpected == 0,
            ),
        ]);
        Verdict {
            heading: format!("verification (stock {}):", self.stock),
            lines,
        }
    }

    /// Whether every count equals the stock and the user sets match.
    pub fn holds(&self) -> bool {
        self.verdict().holds()
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.verdict().fmt(f)
    }
}

/// Reads MySQL and Redis after the demo's race and compares them with what the race was
/// answered.
///
/// # Errors
/// A store cannot be read.
pub async fn verify(
    pool: &MySqlPool,
    redis: &AdmissionStore,
    coupon: CouponId,
    stock: i64,
    report: &RaceReport,
) -> anyhow::Result<Verification> {
    let holdings = Holdings::read(pool, redis, coupon).await?;
    let with_row = holdings.users();
    Ok(Verification {
        stock,
        accepted: count(report.accepted.len()),
        rows: holdings.rows(),
        distinct_users: count(with_row.len()),
        issued_quantity: holdings.issued_quantity,
        admitted: holdings.admitted,
        rows_without_admission: holdings.rows_without_admission(),
        accepted_without_row: report.accepted.difference(&with_row).count(),
        row_without_accept: with_row.difference(&report.accepted).count(),
        already_issued: report.count("409 ALREADY_ISSUED"),
        in_progress: report.count("409 ISSUE_IN_PROGRESS"),
        sold_out: report.count("409 SOLD_OUT"),
        unexpected: report.unexpected(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holdings(stock: Option<i64>, rows: &[i64], issued: i64, members: &[i64]) -> Holdings {
        Holdings {
            stock,
            issued_quantity: issued,
            row_users: rows.to_vec(),
            admitted: count(members.len()),
            members: members.iter().copied().collect(),
        }
    }

    fn coupon() -> CouponId {
        CouponId::parse(7).unwrap()
    }

    #[test]
    fn a_sold_out_coupon_whose_stores_agree_is_exact() {
        let h = holdings(Some(3), &[1, 2, 3], 3, &[1, 2, 3]);
        let verdict = audit(coupon(), &h, Some(3));
        assert!(verdict.holds(), "{verdict}");
        assert!(verdict.to_string().ends_with("result: EXACT"));
    }

    #[test]
    fn more_rows_than_stock_is_a_failure() {
        let h = holdings(Some(2), &[1, 2, 3], 3, &[1, 2, 3]);
        assert!(!audit(coupon(), &h, None).holds());
    }

    #[test]
    fn fewer_rows_than_202_answers_is_a_failure() {
        let h = holdings(Some(5), &[1, 2], 2, &[1, 2]);
        assert!(audit(coupon(), &h, None).holds());
        let verdict = audit(coupon(), &h, Some(3));
        assert!(!verdict.holds());
        assert!(verdict.to_string().contains("MISMATCH"), "{verdict}");
    }

    #[test]
    fn a_row_outside_the_admission_set_is_a_failure() {
        let h = holdings(Some(5), &[1, 2], 2, &[1, 9]);
        assert!(h.settled());
        assert_eq!(h.rows_without_admission(), 1);
        assert!(!audit(coupon(), &h, Some(2)).holds());
    }

    #[test]
    fn a_user_twice_is_a_failure() {
        let h = holdings(Some(5), &[1, 1], 2, &[1, 2]);
        assert!(!audit(coupon(), &h, Some(2)).holds());
    }

    #[test]
    fn admissions_not_yet_persisted_are_not_settled() {
        let h = holdings(Some(5), &[1], 1, &[1, 2]);
        assert!(!h.settled());
        assert!(!audit(coupon(), &h, None).holds());
    }

    #[test]
    fn a_coupon_without_stock_limit_has_no_row_limit() {
        let h = holdings(None, &[1, 2], 2, &[1, 2]);
        let verdict = audit(coupon(), &h, None);
        assert!(verdict.holds());
        assert!(verdict.heading.contains("no stock limit"));
    }
}
