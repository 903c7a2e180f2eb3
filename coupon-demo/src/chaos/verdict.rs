//! The judge of one scenario: what was counted ([`Counts`]) and the rules it must meet
//! ([`Rule`]), each failure named ([`Failure`]).
//!
//! The stores are read twice: once the consumer drained and before any repair
//! ([`Counts::before`]), and again after one `coupon-api reconcile` pass ([`Counts::after`]).
//! The rules judge the first reading, so a repair cannot hide what a fault broke: a message the
//! broker acknowledged and then lost shows as a 202 without a row there, even though the pass
//! would re-publish it. The pass itself must then find nothing to repair, except where the
//! scenario allows requests in doubt ([`Fault::in_doubt_bound`]): an API process that died
//! between its admission and its publish leaves an admission without a message, and the pass
//! re-publishes it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::{ChaosPlan, Fault};

/// Counts of the stores at one moment, for the scenario's coupon.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounts {
    /// Rows in `coupon_issues` (count).
    pub rows: i64,
    /// Distinct users among the rows (count).
    pub distinct_users: i64,
    /// `SCARD` of the admission set (count).
    pub admitted: i64,
    /// `coupons.issued_quantity`.
    pub issued_quantity: i64,
}

/// What the `coupon-api reconcile` pass reported for the coupon.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Users whose admission had neither row nor message: re-published.
    pub republished: Vec<i64>,
    /// Users with a row missing from the admission set: added back.
    pub readmitted: Vec<i64>,
    /// `issued_quantity` before the pass.
    pub issued_quantity_before: i64,
    /// `issued_quantity` after the pass.
    pub issued_quantity_after: i64,
    /// Pending marks of users holding a row, cleared (count; housekeeping, reported only).
    pub pending_cleared: usize,
}

/// When the fault ended, against the 202 answers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultWindow {
    /// When the fault started, from the race's start.
    pub started: Duration,
    /// When the fault ended (the failed part serves again), from the race's start.
    pub ended: Duration,
    /// When the race's last answer came, from the race's start.
    pub race_ended: Duration,
    /// Units the fault's end left to requests sent after it: stock − 202s of requests sent
    /// before it − requests in doubt (which may hold a unit) (count; 0 when none).
    pub units_left: i64,
    /// Requests sent after the fault ended and answered 202 (count).
    pub accepted_after: usize,
    /// How long after the fault's end the first of those 202s came, when one did.
    pub first_accept_after: Option<Duration>,
    /// For the cluster faults, the time the stopped brokers were all down.
    pub outage: Option<Outage>,
}

/// The time the brokers a cluster fault stopped were all down: from the last one's exit to
/// the command that started the first one again (it serves some seconds later, so the window
/// is on the safe side), and the requests sent and answered within it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// When the last stopped broker had exited, from the race's start.
    pub from: Duration,
    /// When the first was started again, from the race's start.
    pub until: Duration,
    /// Units left when it began: stock − 202s of requests sent before it − requests in doubt
    /// (count; 0 when none).
    pub units_left: i64,
    /// Requests sent and answered within it (count).
    pub answered: usize,
    /// Of those, the ones answered 202 (count).
    pub accepted: usize,
}

/// What one scenario counted. [`Counts::failures`] is the verdict.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Requests fired (count).
    pub requests: usize,
    /// Answers by `"<status> <code>"` (`"000 IN_DOUBT"`: no answer, the connection broke
    /// after the request was sent; `"000 UNREACHABLE"`: no instance took the connection).
    pub answers: BTreeMap<String, usize>,
    /// Users answered 202 (count).
    pub accepted: usize,
    /// Users whose request got no answer (count).
    pub in_doubt: usize,
    /// The stores once the consumer drained, before the reconciliation pass.
    pub before: StoreCounts,
    /// The stores after the reconciliation pass and the drain that follows it.
    pub after: StoreCounts,
    /// Users answered 202 without a row, before the pass (count).
    pub accepted_without_row: usize,
    /// Rows of users neither answered 202 nor in doubt, before the pass (count).
    pub row_without_accept: usize,
    /// Rows of users in doubt, before the pass (count).
    pub in_doubt_with_row: usize,
    /// Members of the admission set without a row who are not in doubt, before the pass (count).
    pub admitted_without_row: usize,
    /// Members of the admission set without a row who are in doubt, before the pass (count).
    pub in_doubt_admitted_without_row: usize,
    /// Rows whose user is not in the admission set, before the pass (count).
    pub row_not_admitted: usize,
    /// Users answered 409 `ALREADY_ISSUED` who hold no row, before the pass (count).
    pub already_issued_without_row: usize,
    /// Users of issue messages some consumer group had not consumed once the groups were
    /// waited for, before the pass (count; for [`Fault::DeliveredTwice`] it shows both groups
    /// read every message).
    pub unconsumed: usize,
    /// What the reconciliation pass repaired.
    pub reconciled: Reconciled,
    /// Users the pass re-published who were not in doubt (count).
    pub republished_not_in_doubt: usize,
    /// The fault's window.
    pub fault: FaultWindow,
    /// Wall time of the race.
    pub race: Duration,
    /// How long coupon-consumer took to exit on SIGTERM after the drain (reported; 15 s and
    /// it is killed).
    pub consumer_shutdown: Duration,
}

/// One rule of the verdict. Each is judged on the counts read before the reconciliation pass,
/// except [`Rule::SoldOut`] and [`Rule::ReconcileRepairsNothing`], which compare both readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// Every user holds at most one row: rows = distinct users (docs/invariants.md 2).
    NobodyTwice,
    /// The admission set and the rows hold the same users: no row whose user is missing from
    /// the set, no member without a row, except members in doubt (docs/invariants.md 1, 4).
    SetMatchesRows,
    /// `issued_quantity` = rows (docs/invariants.md 5).
    CountMatchesRows,
    /// The drop sells out, exactly: rows = stock after the pass (docs/invariants.md 1; more users than
    /// units, so anything less lost a unit).
    SoldOut,
    /// Every user answered 202 has a row (docs/invariants.md 3).
    AcceptedHasRow,
    /// Every row belongs to a user answered 202 or in doubt: a 503 promised nothing.
    RowHasAccept,
    /// Every user answered 409 `ALREADY_ISSUED` has a row: that answer is a promise.
    AlreadyIssuedHasRow,
    /// Every consumer group consumed every issue message (docs/invariants.md 6).
    AllConsumed,
    /// Only the answers of the issue path's contract: 202, 409 `ALREADY_ISSUED`,
    /// `ISSUE_IN_PROGRESS`, `SOLD_OUT`, 503 `UNAVAILABLE`, or no answer (docs/invariants.md 7).
    ExpectedAnswers,
    /// Requests without an answer stay within the scenario's bound ([`Fault::in_doubt_bound`]).
    InDoubtBound,
    /// When units were left at the fault's end, some request sent after it was answered 202:
    /// issuing recovers.
    IssuingRecovers,
    /// [`Fault::ClusterBrokerStopped`]: with one broker of three down, two replicas are in
    /// sync and `min.insync.replicas=2` holds, so issuing goes on: some request sent and
    /// answered while it was down was answered 202 (units were left when it went down, and
    /// requests were answered then; else the scenario tested nothing and fails too).
    IssuingWithOneBrokerDown,
    /// [`Fault::ClusterBelowMinInsync`]: with two brokers of three down, no write can reach two
    /// in-sync replicas, so no request sent and answered while they were down was answered
    /// 202 (`acks=all` with `min.insync.replicas=2` refuses them; the admissions are undone
    /// and answered 503); and there were such requests, with units left.
    RefusedBelowMinInsync,
    /// The reconciliation pass repaired nothing: no user re-admitted, `issued_quantity`
    /// unchanged, nobody re-published except users in doubt where the scenario allows them.
    ReconcileRepairsNothing,
}

impl Rule {
    /// Every rule, in the order they are reported.
    pub const ALL: [Self; 14] = [
        Self::NobodyTwice,
        Self::SetMatchesRows,
        Self::CountMatchesRows,
        Self::SoldOut,
        Self::AcceptedHasRow,
        Self::RowHasAccept,
        Self::AlreadyIssuedHasRow,
        Self::AllConsumed,
        Self::ExpectedAnswers,
        Self::InDoubtBound,
        Self::IssuingRecovers,
        Self::IssuingWithOneBrokerDown,
        Self::RefusedBelowMinInsync,
        Self::ReconcileRepairsNothing,
    ];

    /// Kebab-case name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            Self::NobodyTwice => "nobody-twice",
            Self::SetMatchesRows => "set-matches-rows",
            Self::CountMatchesRows => "count-matches-rows",
            Self::SoldOut => "sold-out",
            Self::AcceptedHasRow => "accepted-has-row",
            Self::RowHasAccept => "row-has-accept",
            Self::AlreadyIssuedHasRow => "already-issued-has-row",
            Self::AllConsumed => "all-consumed",
            Self::ExpectedAnswers => "expected-answers",
            Self::InDoubtBound => "in-doubt-bound",
            Self::IssuingRecovers => "issuing-recovers",
            Self::IssuingWithOneBrokerDown => "issuing-with-one-broker-down",
            Self::RefusedBelowMinInsync => "refused-below-min-insync",
            Self::ReconcileRepairsNothing => "reconcile-repairs-nothing",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule the scenario broke, with the counts that broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The rule.
    pub rule: Rule,
    /// What was counted instead.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// The answers of the issue path's contract ([`Rule::ExpectedAnswers`]).
const EXPECTED_ANSWERS: [&str; 6] = [
    "202 ACCEPTED",
    "409 ALREADY_ISSUED",
    "409 ISSUE_IN_PROGRESS",
    "409 SOLD_OUT",
    "503 UNAVAILABLE",
    "000 IN_DOUBT",
];

impl Counts {
    /// Answers outside the issue path's contract (count; see [`Rule::ExpectedAnswers`]).
    pub fn unexpected(&self) -> usize {
        self.answers
            .iter()
            .filter(|(label, _)| !EXPECTED_ANSWERS.contains(&label.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every rule `fault`'s scenario broke under `plan`, in [`Rule::ALL`]'s order; empty when
    /// it passed.
    pub fn failures(&self, fault: Fault, plan: &ChaosPlan) -> Vec<Failure> {
        let mut failures = Vec::new();
        let mut fail = |rule: Rule, detail: String| failures.push(Failure { rule, detail });
        let before = self.before;
        let in_doubt_bound = fault.in_doubt_bound(plan);

        if before.rows != before.distinct_users {
            fail(
                Rule::NobodyTwice,
                format!(
                    "{} rows for {} distinct users",
                    before.rows, before.distinct_users
                ),
            );
        }
        let members_without_row = self.admitted_without_row + self.in_doubt_admitted_without_row;
        if self.admitted_without_row > 0
            || self.row_not_admitted > 0
            || before.admitted + self.row_not_admitted as i64
                != before.rows + members_without_row as i64
        {
            fail(
                Rule::SetMatchesRows,
                format!(
                    "SCARD {} against {} rows: {} members without a row and not in doubt, \
                     {} in doubt; {} rows whose user is not a member",
                    before.admitted,
                    before.rows,
                    self.admitted_without_row,
                    self.in_doubt_admitted_without_row,
                    self.row_not_admitted
                ),
            );
        }
        if before.issued_quantity != before.rows {
            fail(
                Rule::CountMatchesRows,
                format!(
                    "issued_quantity {} against {} rows",
                    before.issued_quantity, before.rows
                ),
            );
        }
        if self.after.rows != plan.stock {
            let what = if self.after.rows > plan.stock {
                "over-issued"
            } else {
                "not sold out"
            };
            fail(
                Rule::SoldOut,
                format!(
                    "{} rows for {} units after the pass ({} before it): {what}",
                    self.after.rows, plan.stock, before.rows
                ),
            );
        }
        if self.accepted_without_row > 0 {
            fail(
                Rule::AcceptedHasRow,
                format!(
                    "{} users answered 202 hold no row",
                    self.accepted_without_row
                ),
            );
        }
        if self.row_without_accept > 0 {
            fail(
                Rule::RowHasAccept,
                format!(
                    "{} rows of users neither answered 202 nor in doubt",
                    self.row_without_accept
                ),
            );
        }
        if self.already_issued_without_row > 0 {
            fail(
                Rule::AlreadyIssuedHasRow,
                format!(
                    "{} users answered 409 ALREADY_ISSUED hold no row",
                    self.already_issued_without_row
                ),
            );
        }
        if self.unconsumed > 0 {
            fail(
                Rule::AllConsumed,
                format!(
                    "{} users' issue messages not consumed by every group",
                    self.unconsumed
                ),
            );
        }
        if self.unexpected() > 0 {
            let unexpected = self
                .answers
                .iter()
                .filter(|(label, _)| !EXPECTED_ANSWERS.contains(&label.as_str()))
                .map(|(label, n)| format!("{label}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            fail(Rule::ExpectedAnswers, unexpected);
        }
        if self.in_doubt > in_doubt_bound {
            fail(
                Rule::InDoubtBound,
                format!(
                    "{} requests without an answer, {in_doubt_bound} allowed in {}",
                    self.in_doubt,
                    fault.name()
                ),
            );
        }
        if self.fault.units_left > 0 && self.fault.accepted_after == 0 {
            fail(
                Rule::IssuingRecovers,
                format!(
                    "no request sent after the fault ended at {:.1} s was answered 202, with {} \
                     units left (the race's last answer at {:.1} s)",
                    self.fault.ended.as_secs_f64(),
                    self.fault.units_left,
                    self.fault.race_ended.as_secs_f64()
                ),
            );
        }
        let outage = self.fault.outage.unwrap_or_default();
        let outage_detail = || {
            format!(
                "{} requests sent and answered while the brokers were down ({:.1} s to {:.1} s), \
                 {} of them 202, with {} units left when they went down",
                outage.answered,
                outage.from.as_secs_f64(),
                outage.until.as_secs_f64(),
                outage.accepted,
                outage.units_left
            )
        };
        if fault == Fault::ClusterBrokerStopped
            && (outage.units_left == 0 || outage.answered == 0 || outage.accepted == 0)
        {
            fail(Rule::IssuingWithOneBrokerDown, outage_detail());
        }
        if fault == Fault::ClusterBelowMinInsync
            && (outage.units_left == 0 || outage.answered == 0 || outage.accepted > 0)
        {
            fail(Rule::RefusedBelowMinInsync, outage_detail());
        }
        let reconciled = &self.reconciled;
        let republished_allowed = if in_doubt_bound > 0 {
            reconciled
                .republished
                .len()
                .saturating_sub(self.republished_not_in_doubt)
        } else {
            0
        };
        let republished_wrongly = reconciled.republished.len() - republished_allowed;
        let republished = reconciled.republished.len() as i64;
        if republished_wrongly > 0
            || !reconciled.readmitted.is_empty()
            || reconciled.issued_quantity_before != reconciled.issued_quantity_after
            || self.after.rows != before.rows + republished
            || self.after.issued_quantity != self.after.rows
            || self.after.admitted != before.admitted
        {
            fail(
                Rule::ReconcileRepairsNothing,
                format!(
                    "re-published {} ({} not allowed), re-admitted {}, issued_quantity {} -> {}; \
                     rows {} -> {}, SCARD {} -> {}, issued_quantity after {}",
                    reconciled.republished.len(),
                    republished_wrongly,
                    reconciled.readmitted.len(),
                    reconciled.issued_quantity_before,
                    reconciled.issued_quantity_after,
                    before.rows,
                    self.after.rows,
                    before.admitted,
                    self.after.admitted,
                    self.after.issued_quantity
                ),
            );
        }
        failures
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answers = self
            .answers
            .iter()
            .map(|(label, n)| format!("{label}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            f,
            "  race: {} requests in {:.1} s; {answers}",
            self.requests,
            self.race.as_secs_f64()
        )?;
        let window = self.fault;
        writeln!(
            f,
            "  fault: {:.1} s to {:.1} s of the race, {} units left at its end, {} requests sent \
             after it answered 202{}",
            window.started.as_secs_f64(),
            window.ended.as_secs_f64(),
            window.units_left,
            window.accepted_after,
            window
                .first_accept_after
                .map(|d| format!(" (the first {:.1} s after)", d.as_secs_f64()))
                .unwrap_or_default()
        )?;
        if let Some(outage) = window.outage {
            writeln!(
                f,
                "  brokers down: {:.1} s to {:.1} s of the race, {} units left then; {} requests \
                 sent and answered within it, {} of them 202",
                outage.from.as_secs_f64(),
                outage.until.as_secs_f64(),
                outage.units_left,
                outage.answered,
                outage.accepted
            )?;
        }
        for (when, counts) in [
            ("before the pass", self.before),
            ("after the pass", self.after),
        ] {
            writeln!(
                f,
                "  {when}: rows {}, distinct users {}, SCARD {}, issued_quantity {}",
                counts.rows, counts.distinct_users, counts.admitted, counts.issued_quantity
            )?;
        }
        writeln!(
            f,
            "  202 users {}, 202 without row {}, row without 202 {}, in doubt {} (with a row {}, \
             admitted without a row {}), members without a row {}, rows not in the set {}, \
             409 ALREADY_ISSUED without row {}, unconsumed messages' users {}",
            self.accepted,
            self.accepted_without_row,
            self.row_without_accept,
            self.in_doubt,
            self.in_doubt_with_row,
            self.in_doubt_admitted_without_row,
            self.admitted_without_row,
            self.row_not_admitted,
            self.already_issued_without_row,
            self.unconsumed
        )?;
        let r = &self.reconciled;
        writeln!(
            f,
            "  reconciliation: {} re-published ({} not in doubt), {} re-admitted, \
             issued_quantity {} -> {}, {} pending marks cleared",
            r.republished.len(),
            self.republished_not_in_doubt,
            r.readmitted.len(),
            r.issued_quantity_before,
            r.issued_quantity_after,
            r.pending_cleared
        )?;
        write!(
            f,
            "  coupon-consumer exited {:.1} s after SIGTERM",
            self.consumer_shutdown.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ChaosPlan {
        ChaosPlan {
            stock: 500,
            requests: 10_000,
            users: 5_000,
            concurrency: 64,
            rate: 400.0,
            trigger: 150,
            seed: 1,
            wait_replicas: 1,
        }
    }

    /// A scenario that met every rule: sold out, every count equal, nothing repaired.
    fn passing() -> Counts {
        let exact = StoreCounts {
            rows: 500,
            distinct_users: 500,
            admitted: 500,
            issued_quantity: 500,
        };
        Counts {
            requests: 10_000,
            answers: BTreeMap::from([
                ("202 ACCEPTED".to_owned(), 500),
                ("409 ALREADY_ISSUED".to_owned(), 700),
                ("409 SOLD_OUT".to_owned(), 8_700),
                ("503 UNAVAILABLE".to_owned(), 100),
            ]),
            accepted: 500,
            before: exact,
            after: exact,
            reconciled: Reconciled {
                issued_quantity_before: 500,
                issued_quantity_after: 500,
                ..Reconciled::default()
            },
            fault: FaultWindow {
                started: Duration::from_secs(1),
                ended: Duration::from_secs(9),
                race_ended: Duration::from_secs(25),
                units_left: 200,
                accepted_after: 200,
                first_accept_after: Some(Duration::from_millis(300)),
                outage: None,
            },
            ..Counts::default()
        }
    }

    /// The rules `counts` broke in the broker-stopped scenario.
    fn broken(counts: &Counts) -> Vec<Rule> {
        rules(counts, Fault::BrokerStopped)
    }

    fn rules(counts: &Counts, fault: Fault) -> Vec<Rule> {
        counts
            .failures(fault, &plan())
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn an_exact_sold_out_drop_with_nothing_repaired_passes() {
        assert_eq!(broken(&passing()), vec![]);
    }

    #[test]
    fn a_user_with_two_rows_breaks_nobody_twice() {
        let mut counts = passing();
        counts.before.distinct_users = 499;
        counts.after.distinct_users = 499;
        assert_eq!(broken(&counts), vec![Rule::NobodyTwice]);
    }

    #[test]
    fn a_member_without_a_row_breaks_set_matches_rows() {
        let mut counts = passing();
        counts.before.admitted = 501;
        counts.after.admitted = 501;
        counts.admitted_without_row = 1;
        assert_eq!(broken(&counts), vec![Rule::SetMatchesRows]);
    }

    #[test]
    fn a_row_missing_from_the_set_breaks_set_matches_rows() {
        let mut counts = passing();
        counts.before.admitted = 499;
        counts.after.admitted = 499;
        counts.row_not_admitted = 1;
        assert_eq!(broken(&counts), vec![Rule::SetMatchesRows]);
    }

    #[test]
    fn a_set_size_that_disagrees_with_its_members_breaks_set_matches_rows() {
        let mut counts = passing();
        counts.before.admitted = 502;
        counts.after.admitted = 502;
        assert_eq!(broken(&counts), vec![Rule::SetMatchesRows]);
    }

    #[test]
    fn a_drifted_issued_quantity_breaks_count_matches_rows() {
        let mut counts = passing();
        counts.before.issued_quantity = 498;
        assert_eq!(broken(&counts), vec![Rule::CountMatchesRows]);
    }

    #[test]
    fn a_drop_left_with_units_breaks_sold_out() {
        let mut counts = passing();
        for stores in [&mut counts.before, &mut counts.after] {
            *stores = StoreCounts {
                rows: 499,
                distinct_users: 499,
                admitted: 499,
                issued_quantity: 499,
            };
        }
        counts.accepted = 499;
        counts.answers.insert("202 ACCEPTED".to_owned(), 499);
        counts.reconciled.issued_quantity_before = 499;
        counts.reconciled.issued_quantity_after = 499;
        assert_eq!(broken(&counts), vec![Rule::SoldOut]);
    }

    #[test]
    fn an_over_issued_drop_breaks_sold_out() {
        let mut counts = passing();
        for stores in [&mut counts.before, &mut counts.after] {
            *stores = StoreCounts {
                rows: 501,
                distinct_users: 501,
                admitted: 501,
                issued_quantity: 501,
            };
        }
        counts.accepted = 501;
        let failures = passing_plan_failures(&counts);
        assert_eq!(
            failures.iter().map(|f| f.rule).collect::<Vec<_>>(),
            vec![Rule::SoldOut]
        );
        assert!(failures[0].detail.contains("over-issued"));
    }

    fn passing_plan_failures(counts: &Counts) -> Vec<Failure> {
        counts.failures(Fault::BrokerStopped, &plan())
    }

    #[test]
    fn a_202_without_a_row_breaks_accepted_has_row() {
        let mut counts = passing();
        counts.accepted_without_row = 1;
        assert_eq!(broken(&counts), vec![Rule::AcceptedHasRow]);
    }

    #[test]
    fn a_row_of_a_user_answered_503_breaks_row_has_accept() {
        let mut counts = passing();
        counts.row_without_accept = 1;
        assert_eq!(broken(&counts), vec![Rule::RowHasAccept]);
    }

    #[test]
    fn an_already_issued_answer_without_a_row_breaks_its_rule() {
        let mut counts = passing();
        counts.already_issued_without_row = 1;
        assert_eq!(broken(&counts), vec![Rule::AlreadyIssuedHasRow]);
    }

    #[test]
    fn an_unconsumed_message_breaks_all_consumed() {
        let mut counts = passing();
        counts.unconsumed = 3;
        assert_eq!(broken(&counts), vec![Rule::AllConsumed]);
    }

    #[test]
    fn an_answer_outside_the_contract_breaks_expected_answers() {
        for label in ["500 INTERNAL", "000 UNREACHABLE", "429 RATE_LIMITED"] {
            let mut counts = passing();
            counts.answers.insert(label.to_owned(), 1);
            assert_eq!(broken(&counts), vec![Rule::ExpectedAnswers], "{label}");
        }
    }

    #[test]
    fn a_request_in_doubt_breaks_the_bound_where_none_is_allowed() {
        let mut counts = passing();
        counts.in_doubt = 1;
        counts.answers.insert("000 IN_DOUBT".to_owned(), 1);
        assert_eq!(broken(&counts), vec![Rule::InDoubtBound]);
    }

    #[test]
    fn api_killed_allows_requests_in_doubt_up_to_the_concurrency() {
        let mut counts = passing();
        counts.in_doubt = 64;
        assert_eq!(rules(&counts, Fault::ApiKilled), vec![]);
        counts.in_doubt = 65;
        assert_eq!(rules(&counts, Fault::ApiKilled), vec![Rule::InDoubtBound]);
    }

    #[test]
    fn no_202_after_the_fault_with_units_left_breaks_issuing_recovers() {
        let mut counts = passing();
        counts.fault.accepted_after = 0;
        counts.fault.first_accept_after = None;
        assert_eq!(broken(&counts), vec![Rule::IssuingRecovers]);
    }

    #[test]
    fn no_202_after_a_fault_that_ended_sold_out_is_no_failure() {
        let mut counts = passing();
        counts.fault.units_left = 0;
        counts.fault.accepted_after = 0;
        counts.fault.first_accept_after = None;
        assert_eq!(broken(&counts), vec![]);
    }

    #[test]
    fn a_re_published_202_breaks_reconcile_repairs_nothing_and_accepted_has_row() {
        // A message the broker acknowledged and then lost: no row before the pass, which
        // re-publishes it, so the stores match only after the pass.
        let mut counts = passing();
        counts.before = StoreCounts {
            rows: 499,
            distinct_users: 499,
            admitted: 500,
            issued_quantity: 499,
        };
        counts.accepted_without_row = 1;
        counts.admitted_without_row = 1;
        counts.reconciled.republished = vec![42];
        counts.republished_not_in_doubt = 1;
        counts.reconciled.issued_quantity_before = 499;
        counts.reconciled.issued_quantity_after = 499;
        assert_eq!(
            broken(&counts),
            vec![
                Rule::SetMatchesRows,
                Rule::AcceptedHasRow,
                Rule::ReconcileRepairsNothing
            ]
        );
    }

    #[test]
    fn a_re_admitted_user_breaks_reconcile_repairs_nothing() {
        let mut counts = passing();
        counts.reconciled.readmitted = vec![7];
        assert_eq!(broken(&counts), vec![Rule::ReconcileRepairsNothing]);
    }

    #[test]
    fn a_rewritten_issued_quantity_breaks_reconcile_repairs_nothing() {
        let mut counts = passing();
        counts.reconciled.issued_quantity_before = 499;
        assert_eq!(broken(&counts), vec![Rule::ReconcileRepairsNothing]);
    }

    #[test]
    fn api_killed_may_re_publish_users_in_doubt_only() {
        // Two requests to the killed instance got no answer; one had been admitted and not
        // published: a member without a row, re-published by the pass.
        let mut counts = passing();
        counts.in_doubt = 2;
        counts.accepted = 499;
        counts.before = StoreCounts {
            rows: 499,
            distinct_users: 499,
            admitted: 500,
            issued_quantity: 499,
        };
        counts.in_doubt_admitted_without_row = 1;
        counts.reconciled.republished = vec![42];
        counts.reconciled.issued_quantity_before = 499;
        counts.reconciled.issued_quantity_after = 499;
        assert_eq!(rules(&counts, Fault::ApiKilled), vec![]);

        // The same member, but of a user who was answered: not in doubt.
        counts.in_doubt_admitted_without_row = 0;
        counts.admitted_without_row = 1;
        counts.republished_not_in_doubt = 1;
        assert_eq!(
            rules(&counts, Fault::ApiKilled),
            vec![Rule::SetMatchesRows, Rule::ReconcileRepairsNothing]
        );
    }

    /// `passing()` with the brokers down from 2 s to 10 s, `units_left` left then, `answered`
    /// requests sent and answered within it, `accepted` of them 202.
    fn with_outage(units_left: i64, answered: usize, accepted: usize) -> Counts {
        let mut counts = passing();
        counts.fault.outage = Some(Outage {
            from: Duration::from_secs(2),
            until: Duration::from_secs(10),
            units_left,
            answered,
            accepted,
        });
        counts
    }

    #[test]
    fn one_broker_down_must_not_stop_issuing() {
        let fault = Fault::ClusterBrokerStopped;
        assert_eq!(rules(&with_outage(300, 800, 300), fault), vec![]);
        for (units_left, answered) in [(300, 800), (0, 800), (300, 0)] {
            // No 202 while one broker was down, or nothing that could have been one.
            assert_eq!(
                rules(&with_outage(units_left, answered, 0), fault),
                vec![Rule::IssuingWithOneBrokerDown]
            );
        }
        assert_eq!(
            rules(&passing(), fault),
            vec![Rule::IssuingWithOneBrokerDown],
            "a run without an outage tested nothing"
        );
    }

    #[test]
    fn below_min_insync_nothing_may_be_accepted() {
        let fault = Fault::ClusterBelowMinInsync;
        assert_eq!(rules(&with_outage(400, 20, 0), fault), vec![]);
        assert_eq!(
            rules(&with_outage(400, 20, 1), fault),
            vec![Rule::RefusedBelowMinInsync],
            "a 202 with one in-sync replica"
        );
        for (units_left, answered) in [(0, 20), (400, 0)] {
            assert_eq!(
                rules(&with_outage(units_left, answered, 0), fault),
                vec![Rule::RefusedBelowMinInsync],
                "the outage came after the sell-out, or nothing was answered within it"
            );
        }
        // The other faults do not judge an outage.
        assert_eq!(
            rules(&with_outage(400, 20, 1), Fault::BrokerStopped),
            vec![]
        );
    }

    #[test]
    fn every_rule_has_a_distinct_name() {
        let names: std::collections::BTreeSet<_> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
    }
}
