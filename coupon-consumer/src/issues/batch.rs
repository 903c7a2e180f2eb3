//! A batch of the issue topic as items: each message with its parsed issue and its [`Fate`].
//! The issue loop's steps (parse, admission check, persist, dead-letter, metrics) read and set
//! fates, so every message's story stays with the message.

use coupon_core::issue::message::IssueMessage;
use coupon_core::issue::persistence::{Outcome, Rejection};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use crate::dead_letter::{DeadLetter, DeadLetterReason};

/// The detail of an `admission_undone` dead letter.
const ADMISSION_UNDONE_DETAIL: &str =
    "the admission of this message was undone (its user is not in the coupon's admission set, \
     or is pending under another request)";

/// Why a message of the issue topic is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeadReason {
    /// The payload is no issue message (the parse step).
    Malformed,
    /// The message's admission was undone before it was persisted (the admission check).
    AdmissionUndone,
    /// Persistence can never store it (the persist step).
    Rejected(Rejection),
}

impl DeadReason {
    /// The dead letter's reason.
    pub(crate) fn reason(&self) -> DeadLetterReason {
        match self {
            Self::Malformed => DeadLetterReason::Malformed,
            Self::AdmissionUndone => DeadLetterReason::AdmissionUndone,
            Self::Rejected(rejection) => DeadLetterReason::of(rejection),
        }
    }

    /// The step that decided it, in the order the steps run (parse, admission check, persist).
    fn step(&self) -> u8 {
        match self {
            Self::Malformed => 0,
            Self::AdmissionUndone => 1,
            Self::Rejected(_) => 2,
        }
    }
}

/// What became of a message of the batch, so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Parsed, and no step has decided it yet.
    Pending,
    /// Its row was inserted.
    Persisted,
    /// Its row was already there (a redelivery, or a repeat inside the batch).
    Duplicate,
    /// It can never be persisted; it goes to the dead-letter topic.
    Dead {
        /// Why.
        reason: DeadReason,
        /// Human-readable detail: the `x-dead-letter-detail` header.
        detail: String,
    },
}

/// One message of a batch.
#[derive(Debug)]
pub(crate) struct Item<'a> {
    /// The Kafka message: its offset is committed with the batch, and it is forwarded as is
    /// when dead-lettered.
    pub(crate) source: &'a OwnedMessage,
    /// The issue its payload holds; `None` when the payload did not parse (its fate is then
    /// dead, `malformed`).
    pub(crate) issue: Option<IssueMessage>,
    /// What became of it.
    pub(crate) fate: Fate,
}

impl<'a> Item<'a> {
    /// Parses `source`'s payload: a pending item when it is an issue message, a dead one
    /// (`malformed`, the parse error as detail) otherwise.
    pub(crate) fn parse(source: &'a OwnedMessage) -> Self {
        match IssueMessage::from_json(source.payload().unwrap_or_default()) {
            Ok(issue) => Self {
                source,
                issue: Some(issue),
                fate: Fate::Pending,
            },
            Err(err) => Self {
                source,
                issue: None,
                fate: Fate::Dead {
                    reason: DeadReason::Malformed,
                    detail: err.to_string(),
                },
            },
        }
    }

    /// The issue of a pending item (one no step has decided yet); `None` otherwise.
    pub(crate) fn pending(&self) -> Option<&IssueMessage> {
        self.issue.as_ref().filter(|_| self.fate == Fate::Pending)
    }

    /// The issue of an item whose row was inserted; `None` otherwise.
    pub(crate) fn persisted(&self) -> Option<&IssueMessage> {
        self.issue.as_ref().filter(|_| self.fate == Fate::Persisted)
    }

    /// Marks a pending item dead: its admission was undone. Other items keep their fate.
    pub(crate) fn undo_admission(&mut self) {
        if self.pending().is_some() {
            self.fate = Fate::Dead {
                reason: DeadReason::AdmissionUndone,
                detail: ADMISSION_UNDONE_DETAIL.into(),
            };
        }
    }

    /// Sets a pending item's fate from persistence's `outcome`; a rejection's detail names the
    /// coupon and user (and MySQL's error for a refused row). Other items keep their fate.
    pub(crate) fn settle(&mut self, outcome: &Outcome) {
        let Some(issue) = self.pending() else {
            return;
        };
        self.fate = match outcome {
            Outcome::Persisted => Fate::Persisted,
            Outcome::Duplicate => Fate::Duplicate,
            Outcome::Rejected(rejection) => {
                let mut detail = format!("coupon {} user {}", issue.coupon_id, issue.user_id);
                if let Rejection::RefusedByDatabase(error) = rejection {
                    detail = format!("{detail}: {error}");
                }
                Fate::Dead {
                    reason: DeadReason::Rejected(rejection.clone()),
                    detail,
                }
            }
        };
    }
}

/// The dead letters of `items`' dead ones, step by step (the parse step's, then the admission
/// check's, then persistence's), each step's in the batch's order.
pub(crate) fn dead_letters<'a>(items: &[Item<'a>]) -> Vec<DeadLetter<'a>> {
    let mut dead: Vec<(&DeadReason, DeadLetter<'a>)> = items
        .iter()
        .filter_map(|item| match &item.fate {
            Fate::Dead { reason, detail } => Some((
                reason,
                DeadLetter {
                    message: item.source,
                    reason: reason.reason(),
                    detail: detail.clone(),
                },
            )),
            _ => None,
        })
        .collect();
    dead.sort_by_key(|(reason, _)| reason.step());
    dead.into_iter().map(|(_, letter)| letter).collect()
}

/// How many items of a batch ended in each fate (counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Items whose row was inserted: rows inserted.
    pub(crate) persisted: u64,
    /// Items whose row was already there.
    pub(crate) duplicates: u64,
    /// Items dead-lettered.
    pub(crate) dead: u64,
}

impl Tally {
    /// Counts the fates of `items` (a pending item counts nowhere).
    pub(crate) fn of(items: &[Item<'_>]) -> Self {
        let mut tally = Self::default();
        for item in items {
            let count = match item.fate {
                Fate::Pending => continue,
                Fate::Persisted => &mut tally.persisted,
                Fate::Duplicate => &mut tally.duplicates,
                Fate::Dead { .. } => &mut tally.dead,
            };
            *count += 1;
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use coupon_core::domain::{CouponId, UserId};
    use rdkafka::Timestamp;

    use super::*;

    fn source(payload: &[u8]) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            None,
            "issues".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        )
    }

    fn issue() -> IssueMessage {
        IssueMessage {
            coupon_id: CouponId::parse(42).unwrap(),
            user_id: UserId::parse(7).unwrap(),
            request_id: uuid::Uuid::now_v7(),
            admitted_at: chrono::Utc::now(),
            stock_shards: coupon_core::domain::ShardCount::ONE,
            correlation_id: None,
        }
    }

    #[test]
    fn the_dead_letter_reasons_keep_their_labels() {
        // Dashboards, alerts and operators' replays match on these strings.
        let labels: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "malformed",
                "admission_undone",
                "unknown_coupon",
                "stock_exceeded",
                "refused_by_database",
                "malformed_payment",
                "payment_after_release"
            ]
        );
        let reasons = [
            DeadReason::Rejected(Rejection::UnknownCoupon),
            DeadReason::Rejected(Rejection::StockExceeded),
            DeadReason::Rejected(Rejection::RefusedByDatabase("refused".into())),
        ];
        for reason in reasons {
            let DeadReason::Rejected(rejection) = &reason else {
                unreachable!()
            };
            assert_eq!(reason.reason().as_str(), rejection.as_str());
        }
    }

    #[test]
    fn a_payload_that_is_no_issue_message_is_dead_as_malformed() {
        let message = source(b"{not json");

        let item = Item::parse(&message);

        assert!(item.issue.is_none());
        assert!(item.pending().is_none());
        let letters = dead_letters(&[item]);
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].reason.as_str(), "malformed");
        assert!(!letters[0].detail.is_empty());
    }

    #[test]
    fn an_undone_admission_is_dead_with_its_detail_and_only_a_pending_item_changes() {
        let message = source(&issue().to_json());
        let mut item = Item::parse(&message);

        item.undo_admission();
        item.settle(&Outcome::Persisted);

        let letters = dead_letters(&[item]);
        assert_eq!(letters[0].reason.as_str(), "admission_undone");
        assert_eq!(
            letters[0].detail,
            "the admission of this message was undone (its user is not in the coupon's \
             admission set, or is pending under another request)"
        );
    }

    #[test]
    fn a_rejection_names_the_coupon_and_user_and_a_refusal_the_error() {
        let message = source(&issue().to_json());
        let mut stock = Item::parse(&message);
        let mut refused = Item::parse(&message);

        stock.settle(&Outcome::Rejected(Rejection::StockExceeded));
        refused.settle(&Outcome::Rejected(Rejection::RefusedByDatabase(
            "check failed".into(),
        )));

        let letters = dead_letters(&[stock, refused]);
        let letters: Vec<_> = letters
            .iter()
            .map(|letter| (letter.reason.as_str(), letter.detail.as_str()))
            .collect();
        assert_eq!(
            letters,
            [
                ("stock_exceeded", "coupon 42 user 7"),
                ("refused_by_database", "coupon 42 user 7: check failed")
            ]
        );
    }

    #[test]
    fn dead_letters_go_step_by_step_each_step_in_batch_order() {
        let good = source(&issue().to_json());
        let junk = source(b"junk");
        let mut items: Vec<_> = [&good, &good, &junk, &good, &good]
            .into_iter()
            .map(Item::parse)
            .collect();
        items[0].settle(&Outcome::Rejected(Rejection::UnknownCoupon));
        items[1].undo_admission();
        items[3].settle(&Outcome::Rejected(Rejection::StockExceeded));
        items[4].undo_admission();

        let reasons: Vec<_> = dead_letters(&items)
            .iter()
            .map(|letter| letter.reason.as_str())
            .collect();

        assert_eq!(
            reasons,
            [
                "malformed",
                "admission_undone",
                "admission_undone",
                "unknown_coupon",
                "stock_exceeded"
            ]
        );
    }

    #[test]
    fn the_tally_counts_each_fate() {
        let good = source(&issue().to_json());
        let junk = source(b"junk");
        let mut items: Vec<_> = [&good, &good, &good, &junk, &good]
            .into_iter()
            .map(Item::parse)
            .collect();
        items[0].settle(&Outcome::Persisted);
        items[1].settle(&Outcome::Persisted);
        items[2].settle(&Outcome::Duplicate);

        let tally = Tally::of(&items);

        assert_eq!(
            tally,
            Tally {
                persisted: 2,
                duplicates: 1,
                dead: 1
            }
        );
        assert_eq!(items[0].persisted(), items[0].issue.as_ref());
        assert!(items[2].persisted().is_none());
    }
}
