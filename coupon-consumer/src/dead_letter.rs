//! The dead-letter topic: where messages that can never succeed go, with their reason, so the
//! partition behind them keeps moving and an operator can inspect or replay them.

use coupon_core::issue::persistence::Rejection;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;

/// Why a message is dead-lettered: the `x-dead-letter-reason` header and the `reason` label of
/// `coupon_consumer_dead_letters_total` (monitoring/METRICS.md), as its snake-case name
/// ([`Self::as_str`]); every value is pre-registered ([`Self::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum DeadLetterReason {
    /// An issue message that does not parse.
    Malformed,
    /// An issue message whose admission was undone (its client heard 503).
    AdmissionUndone,
    /// [`Rejection::UnknownCoupon`].
    UnknownCoupon,
    /// [`Rejection::StockExceeded`].
    StockExceeded,
    /// [`Rejection::RefusedByDatabase`].
    RefusedByDatabase,
    /// A payment result that does not parse.
    MalformedPayment,
    /// A `COMPLETED` for a hold released before it arrived, whose coupon is no longer free:
    /// the order was paid without its discount.
    PaymentAfterRelease,
}

impl DeadLetterReason {
    /// Every reason.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The reason of a message persistence can never store.
    pub fn of(rejection: &Rejection) -> Self {
        match rejection {
            Rejection::UnknownCoupon => Self::UnknownCoupon,
            Rejection::StockExceeded => Self::StockExceeded,
            Rejection::RefusedByDatabase(_) => Self::RefusedByDatabase,
        }
    }
}

/// A message that can never succeed, and why.
pub struct DeadLetter<'a> {
    /// The original message; its key and payload are forwarded unchanged.
    pub message: &'a OwnedMessage,
    /// Why: the `x-dead-letter-reason` header and the metrics label.
    pub reason: DeadLetterReason,
    /// Human-readable detail: the `x-dead-letter-detail` header.
    pub detail: String,
}

/// Producer of the dead-letter topic (`acks=all`); clones share the producer.
#[derive(Clone)]
pub struct DeadLetters {
    /// The producer.
    pub producer: FutureProducer,
    /// The dead-letter topic.
    pub topic: String,
}

impl DeadLetters {
    /// Sends every letter with headers `x-dead-letter-reason`, `x-dead-letter-detail`,
    /// `x-source-topic`, `x-source-partition`, `x-source-offset`, and waits for all
    /// acknowledgements.
    ///
    /// # Errors
    /// A letter was not acknowledged; the caller retries and commits nothing meanwhile.
    pub async fn send(&self, letters: &[DeadLetter<'_>]) -> Result<(), KafkaError> {
        let sends = letters.iter().map(|letter| {
            let partition = letter.message.partition().to_string();
            let offset = letter.message.offset().to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "x-dead-letter-reason", value: Some(letter.reason.as_str()) })
                .insert(Header { key: "x-dead-letter-detail", value: Some(&letter.detail) })
                .insert(Header { key: "x-source-topic", value: Some(letter.message.topic()) })
                .insert(Header { key: "x-source-partition", value: Some(&partition) })
                .insert(Header { key: "x-source-offset", value: Some(&offset) });
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .payload(letter.message.payload().unwrap_or_default())
                .headers(headers);
            if let Some(key) = letter.message.key() {
                record = record.key(key);
            }
            metrics::counter!(coupon_core::telemetry::names::CONSUMER_DEAD_LETTERS, "reason" => letter.reason.as_str())
                .increment(1);
            tracing::warn!(reason = letter.reason.as_str(), detail = %letter.detail, "dead-lettering a message");
            self.producer.send(record, Timeout::Never)
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(err, _)| err)?;
        }
        Ok(())
    }
}
