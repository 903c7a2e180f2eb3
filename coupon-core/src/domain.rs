//! Domain types: identifiers, the coupon policy and its validation.
//!
//! Types here are built by a `parse` or `TryFrom` that returns `Result`; once built they are
//! valid. Amounts are integers in the smallest currency unit (KRW has no minor unit, so 1 = ₩1).
//!
//! Over 500 lines with its tests (about 150): the policy's rules and the tests that break
//! each rule are kept side by side.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, Utc};
use serde::{Deserialize, Serialize};

pub mod stock;
pub use stock::{Shard, ShardCount, StockShards, MAX_STOCK_SHARDS};

/// Why a value was refused; the text is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "i64", into = "i64")]
        #[schema(value_type = i64)]
        pub struct $name(i64);

        impl $name {
            /// Accepts a strictly positive integer.
            ///
            /// # Errors
            /// [`ValidationError`] when `raw <= 0`.
            pub fn parse(raw: i64) -> Result<Self, ValidationError> {
                if raw > 0 {
                    Ok(Self(raw))
                } else {
                    Err(ValidationError(format!("{} must be a positive integer", $what)))
                }
            }

            /// The raw value, as stored in MySQL (`BIGINT`).
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = ValidationError;
            fn try_from(raw: i64) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

positive_id!(
    /// Identifier of a coupon policy (`coupons.id`), always > 0.
    CouponId,
    "coupon_id"
);
positive_id!(
    /// Identifier of a user of the shop, always > 0. Issued by the shop's account system.
    UserId,
    "user_id"
);

/// The `x-request-id` of the HTTP request behind an issue: 1 to [`CorrelationId::MAX_LEN`]
/// bytes of visible ASCII (`!` to `~`), so it goes into log lines, a Kafka message and the
/// `VARCHAR(128)` column `coupon_issues.correlation_id` unchanged. Built by
/// [`CorrelationId::parse`]; JSON: the string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CorrelationId(String);

impl CorrelationId {
    /// Longest id (bytes).
    pub const MAX_LEN: usize = 128;

    /// Accepts 1 to [`Self::MAX_LEN`] bytes of visible ASCII.
    ///
    /// # Errors
    /// [`ValidationError`] for anything else.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        if Self::is_valid(raw.as_bytes()) {
            Ok(Self(raw))
        } else {
            Err(ValidationError(format!(
                "a correlation id is 1 to {} bytes of visible ASCII",
                Self::MAX_LEN
            )))
        }
    }

    /// Whether `bytes` make a correlation id.
    pub fn is_valid(bytes: &[u8]) -> bool {
        !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes.iter().all(|b| (b'!'..=b'~').contains(b))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CorrelationId {
    type Error = ValidationError;

    fn try_from(raw: String) -> Result<Self, ValidationError> {
        Self::parse(raw)
    }
}

impl From<CorrelationId> for String {
    fn from(id: CorrelationId) -> String {
        id.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a policy's stock is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CouponType {
    /// A fixed stock (`total_quantity`) handed out first come, first served.
    FirstComeFirstServed,
    /// No stock bound; each user may still hold one.
    Unlimited,
}

/// How the discount is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscountType {
    /// `discount_value` is an amount in the smallest currency unit.
    Fixed,
    /// `discount_value` is a percentage (1–100), capped by `max_discount_amount` when given.
    Percentage,
}

/// Lifecycle state of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CouponStatus {
    /// Issuable inside its issue window.
    Active,
    /// Withdrawn by an operator: no further issues.
    Suspended,
}

macro_rules! sql_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The stored (and JSON) spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Reads the stored spelling back.
            ///
            /// # Errors
            /// [`ValidationError`] for any other text.
            pub fn parse(text: &str) -> Result<Self, ValidationError> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(ValidationError(format!("unknown {} `{other}`", stringify!($ty)))),
                }
            }
        }
    };
}

sql_enum!(CouponType { FirstComeFirstServed => "FIRST_COME_FIRST_SERVED", Unlimited => "UNLIMITED" });
sql_enum!(DiscountType { Fixed => "FIXED", Percentage => "PERCENTAGE" });
sql_enum!(CouponStatus { Active => "ACTIVE", Suspended => "SUSPENDED" });

/// A request to create a coupon policy, as the API receives it (`POST /api/v1/coupons`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCouponPolicy {
    /// Shown to users; 1–200 characters.
    pub title: String,
    /// Stock model.
    pub coupon_type: CouponType,
    /// Stock (count); required and > 0 for first-come-first-served, absent for unlimited.
    #[serde(default)]
    pub total_quantity: Option<i64>,
    /// Discount model.
    pub discount_type: DiscountType,
    /// Amount (smallest currency unit) for `FIXED`, percent 1–100 for `PERCENTAGE`.
    pub discount_value: i64,
    /// Cap of a percentage discount (smallest currency unit); only for `PERCENTAGE`.
    #[serde(default)]
    pub max_discount_amount: Option<i64>,
    /// Smallest order the coupon applies to (smallest currency unit); 0 by default.
    #[serde(default)]
    pub min_order_amount: i64,
    /// First instant issue requests are accepted (inclusive).
    pub issue_starts_at: DateTime<Utc>,
    /// Instant issue requests stop being accepted (exclusive).
    pub issue_ends_at: DateTime<Utc>,
    /// An issued coupon can be used for this many days after its issue (count of days).
    #[serde(default)]
    pub valid_days: Option<i32>,
    /// An issued coupon can be used until this instant, whatever `valid_days` says.
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
    /// An issued coupon cannot be used before this instant (absent: from its issue).
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    /// Whether cancelling a redeemed order gives the coupon back to its user (default `true`).
    #[serde(default = "default_true")]
    pub restore_on_cancel: bool,
    /// Stock shards (count, 1 to 64; default 1): how many Redis hash slots the stock is split
    /// over, so one hot drop's admissions spread over several Redis Cluster masters. More than
    /// 1 needs a `total_quantity` of at least that many. Fixed once the policy exists.
    #[serde(default = "one_shard")]
    #[schema(minimum = 1, maximum = 64)]
    pub stock_shards: u16,
}

fn one_shard() -> u16 {
    1
}

fn default_true() -> bool {
    true
}

/// Most days of use after issue (100 years): keeps every expiry within MySQL's range.
pub const MAX_VALID_DAYS: i32 = 36_500;

/// Whether `at` fits MySQL's `DATETIME` (years 1000 to 9999; an earlier or later time is
/// refused or stored as NULL, depending on the server's SQL mode).
pub fn storable(at: DateTime<Utc>) -> bool {
    (1000..=9999).contains(&at.year())
}

/// A [`NewCouponPolicy`] that satisfies every rule a stored policy must, the only form
/// [`crate::policies::insert_policy`] takes. Built by `ValidPolicy::try_from(new)`, which
/// fails with a [`ValidationError`] naming the first field that breaks a rule.
///
/// Times must lie in MySQL's `DATETIME` range, years 1000 to 9999
/// (<https://dev.mysql.com/doc/refman/8.0/en/datetime.html>; [`storable`]), and
/// `valid_days` is at most [`MAX_VALID_DAYS`], so an issue's expiry is storable too.
#[derive(Debug, Clone)]
pub struct ValidPolicy(NewCouponPolicy);

impl TryFrom<NewCouponPolicy> for ValidPolicy {
    type Error = ValidationError;

    fn try_from(new: NewCouponPolicy) -> Result<Self, ValidationError> {
        new.check()?;
        Ok(Self(new))
    }
}

impl std::ops::Deref for ValidPolicy {
    type Target = NewCouponPolicy;

    fn deref(&self) -> &NewCouponPolicy {
        &self.0
    }
}

impl NewCouponPolicy {
    /// The rules of [`ValidPolicy`]; the first broken one.
    fn check(&self) -> Result<(), ValidationError> {
        let fail = |msg: &str| Err(ValidationError(msg.to_owned()));
        let title_len = self.title.trim().chars().count();
        if title_len == 0 || self.title.chars().count() > 200 {
            return fail("title must have 1 to 200 characters");
        }
        match (self.coupon_type, self.total_quantity) {
            (CouponType::FirstComeFirstServed, Some(n)) if n > 0 => {}
            (CouponType::FirstComeFirstServed, _) => {
                return fail(
                    "total_quantity must be a positive integer for FIRST_COME_FIRST_SERVED",
                )
            }
            (CouponType::Unlimited, None) => {}
            (CouponType::Unlimited, Some(_)) => {
                return fail("total_quantity must be absent for UNLIMITED coupons")
            }
        }
        match self.discount_type {
            DiscountType::Fixed => {
                if self.discount_value <= 0 {
                    return fail("discount_value must be a positive amount for FIXED discounts");
                }
                if self.max_discount_amount.is_some() {
                    return fail("max_discount_amount applies to PERCENTAGE discounts only");
                }
            }
            DiscountType::Percentage => {
                if !(1..=100).contains(&self.discount_value) {
                    return fail("discount_value must be a percentage from 1 to 100");
                }
                if self.max_discount_amount.is_some_and(|cap| cap <= 0) {
                    return fail("max_discount_amount must be positive");
                }
            }
        }
        if self.min_order_amount < 0 {
            return fail("min_order_amount must not be negative");
        }
        ShardCount::parse(self.stock_shards)?;
        if self.stock_shards > 1
            && self
                .total_quantity
                .is_none_or(|total| total < i64::from(self.stock_shards))
        {
            return fail("stock_shards above 1 needs a total_quantity of at least that many");
        }
        let times = [
            Some(self.issue_starts_at),
            Some(self.issue_ends_at),
            self.valid_until,
            self.valid_from,
        ];
        if !times.into_iter().flatten().all(storable) {
            return fail("times must lie between the years 1000 and 9999");
        }
        if self.valid_days.is_some_and(|d| d > MAX_VALID_DAYS) {
            return fail("valid_days must be at most 36500");
        }
        if self.issue_starts_at >= self.issue_ends_at {
            return fail("issue_starts_at must be before issue_ends_at");
        }
        if self.valid_days.is_none() && self.valid_until.is_none() {
            return fail("give valid_days, valid_until or both");
        }
        if self.valid_days.is_some_and(|d| d <= 0) {
            return fail("valid_days must be a positive number of days");
        }
        if self
            .valid_until
            .is_some_and(|until| until <= self.issue_starts_at)
        {
            return fail("valid_until must be after issue_starts_at");
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until) {
            if from >= until {
                return fail("valid_from must be before valid_until");
            }
        }
        Ok(())
    }
}

/// A stored coupon policy (`coupons` row), as cached and served. Its stock, discount and
/// validity are enums ([`Stock`], [`Discount`], [`Validity`]), so a policy whose parts
/// contradict each other cannot be built. JSON: [`PolicyRecord`]'s flat shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PolicyRecord", try_from = "PolicyRecord")]
pub struct CouponPolicy {
    /// Primary key.
    pub id: CouponId,
    /// Shown to users.
    pub title: String,
    /// How many units it hands out, over how many stock shards.
    pub stock: Stock,
    /// Rows persisted so far (count), as of the read.
    pub issued_quantity: i64,
    /// What it takes off an order.
    pub discount: Discount,
    /// Smallest order the coupon applies to (smallest currency unit).
    pub min_order_amount: i64,
    /// Issue window start (inclusive).
    pub issue_starts_at: DateTime<Utc>,
    /// Issue window end (exclusive).
    pub issue_ends_at: DateTime<Utc>,
    /// How long an issued coupon stays usable.
    pub validity: Validity,
    /// Absolute start of use (absent: from the issue).
    pub valid_from: Option<DateTime<Utc>>,
    /// Lifecycle state.
    pub status: CouponStatus,
    /// Whether cancelling a redeemed order gives the coupon back.
    pub restore_on_cancel: bool,
    /// Row creation time.
    pub created_at: DateTime<Utc>,
    /// Last row change.
    pub updated_at: DateTime<Utc>,
    /// Raised by every admin change (count, from 1); a change is written only under the
    /// version it read ([`crate::policies::save_policy_admin_fields`]).
    pub version: i64,
}

/// How many units a policy hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stock {
    /// `total` units (count, at least 1 and at least `shards`), first come first served, the
    /// admission state split into `shards` stock shards.
    Limited {
        /// Units (count).
        total: i64,
        /// Stock shards of the admission state.
        shards: ShardCount,
    },
    /// No bound; each user may still hold one (one stock shard).
    Unlimited,
}

impl Stock {
    /// The units, `None` for unlimited.
    pub fn total(self) -> Option<i64> {
        match self {
            Self::Limited { total, .. } => Some(total),
            Self::Unlimited => None,
        }
    }

    /// The stock shards (one for unlimited).
    pub fn shards(self) -> ShardCount {
        match self {
            Self::Limited { shards, .. } => shards,
            Self::Unlimited => ShardCount::ONE,
        }
    }

    /// The stored `coupon_type`.
    pub fn coupon_type(self) -> CouponType {
        match self {
            Self::Limited { .. } => CouponType::FirstComeFirstServed,
            Self::Unlimited => CouponType::Unlimited,
        }
    }
}

/// What a policy takes off an order (amounts in the smallest currency unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// A fixed amount.
    Fixed {
        /// The amount (> 0).
        amount: i64,
    },
    /// A percentage of the order, optionally capped.
    Percentage {
        /// Percent (1 to 100).
        percent: i64,
        /// Most it takes off (> 0), if capped.
        cap: Option<i64>,
    },
}

impl Discount {
    /// The stored `discount_type`.
    pub fn discount_type(self) -> DiscountType {
        match self {
            Self::Fixed { .. } => DiscountType::Fixed,
            Self::Percentage { .. } => DiscountType::Percentage,
        }
    }

    /// The stored `discount_value`: the amount, or the percent.
    pub fn value(self) -> i64 {
        match self {
            Self::Fixed { amount } => amount,
            Self::Percentage { percent, .. } => percent,
        }
    }

    /// The stored `max_discount_amount`: a percentage's cap.
    pub fn cap(self) -> Option<i64> {
        match self {
            Self::Fixed { .. } => None,
            Self::Percentage { cap, .. } => cap,
        }
    }

    /// What it takes off an order of `order_amount`: the amount, or
    /// `floor(order_amount × percent / 100)` capped; never more than the order amount, never
    /// negative.
    pub fn for_order(self, order_amount: i64) -> i64 {
        let raw = match self {
            Self::Fixed { amount } => amount,
            Self::Percentage { percent, cap } => {
                let pct = i128::from(order_amount.max(0)) * i128::from(percent) / 100;
                let pct = i64::try_from(pct).unwrap_or(i64::MAX);
                cap.map_or(pct, |cap| pct.min(cap))
            }
        };
        raw.clamp(0, order_amount.max(0))
    }
}

/// How long an issued coupon stays usable: some days after its issue, until an instant, or
/// whichever of the two comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// `days` days (> 0) after the issue.
    Days(i32),
    /// Until an instant.
    Until(DateTime<Utc>),
    /// `days` days after the issue, but never past `until`.
    DaysUntil {
        /// Days after the issue (> 0).
        days: i32,
        /// The latest end.
        until: DateTime<Utc>,
    },
}

impl Validity {
    /// From the stored `valid_days` and `valid_until`; `None` when neither is set.
    pub fn from_parts(days: Option<i32>, until: Option<DateTime<Utc>>) -> Option<Self> {
        match (days, until) {
            (Some(days), None) => Some(Self::Days(days)),
            (None, Some(until)) => Some(Self::Until(until)),
            (Some(days), Some(until)) => Some(Self::DaysUntil { days, until }),
            (None, None) => None,
        }
    }

    /// The stored `valid_days`.
    pub fn days(self) -> Option<i32> {
        match self {
            Self::Days(days) | Self::DaysUntil { days, .. } => Some(days),
            Self::Until(_) => None,
        }
    }

    /// The stored `valid_until`.
    pub fn until(self) -> Option<DateTime<Utc>> {
        match self {
            Self::Until(until) | Self::DaysUntil { until, .. } => Some(until),
            Self::Days(_) => None,
        }
    }

    /// With the days set to `days` (the end, if any, kept).
    #[must_use]
    pub fn with_days(self, days: i32) -> Self {
        Self::from_parts(Some(days), self.until()).unwrap_or(Self::Days(days))
    }

    /// With the end set to `until` (the days, if any, kept).
    #[must_use]
    pub fn with_until(self, until: DateTime<Utc>) -> Self {
        Self::from_parts(self.days(), Some(until)).unwrap_or(Self::Until(until))
    }

    /// When a coupon issued at `issued_at` stops being usable: the earlier of
    /// `issued_at + days` and `until`.
    pub fn expires_at(self, issued_at: DateTime<Utc>) -> DateTime<Utc> {
        let by_days = |days: i32| issued_at + Duration::days(i64::from(days));
        match self {
            Self::Days(days) => by_days(days),
            Self::Until(until) => until,
            Self::DaysUntil { days, until } => by_days(days).min(until),
        }
    }
}

impl From<CouponPolicy> for PolicyRecord {
    fn from(p: CouponPolicy) -> Self {
        Self {
            id: p.id,
            title: p.title,
            coupon_type: p.stock.coupon_type(),
            total_quantity: p.stock.total(),
            issued_quantity: p.issued_quantity,
            discount_type: p.discount.discount_type(),
            discount_value: p.discount.value(),
            max_discount_amount: p.discount.cap(),
            min_order_amount: p.min_order_amount,
            issue_starts_at: p.issue_starts_at,
            issue_ends_at: p.issue_ends_at,
            valid_days: p.validity.days(),
            valid_until: p.validity.until(),
            valid_from: p.valid_from,
            status: p.status,
            restore_on_cancel: p.restore_on_cancel,
            created_at: p.created_at,
            updated_at: p.updated_at,
            version: p.version,
            stock_shards: p.stock.shards(),
        }
    }
}

impl TryFrom<PolicyRecord> for CouponPolicy {
    type Error = ValidationError;

    /// # Errors
    /// A record whose parts contradict each other: a stock total for an unlimited coupon or
    /// none for a limited one, shards on an unlimited one, a cap on a fixed discount, neither
    /// `valid_days` nor `valid_until`.
    fn try_from(r: PolicyRecord) -> Result<Self, ValidationError> {
        let fail = |msg: &str| ValidationError(format!("stored policy {}: {msg}", r.id));
        let stock = match (r.coupon_type, r.total_quantity) {
            (CouponType::FirstComeFirstServed, Some(total)) => Stock::Limited {
                total,
                shards: r.stock_shards,
            },
            (CouponType::Unlimited, None) if r.stock_shards.is_one() => Stock::Unlimited,
            _ => return Err(fail("the stock contradicts its type")),
        };
        let discount = match (r.discount_type, r.max_discount_amount) {
            (DiscountType::Fixed, None) => Discount::Fixed {
                amount: r.discount_value,
            },
            (DiscountType::Percentage, cap) => Discount::Percentage {
                percent: r.discount_value,
                cap,
            },
            (DiscountType::Fixed, Some(_)) => return Err(fail("a fixed discount has a cap")),
        };
        let validity = Validity::from_parts(r.valid_days, r.valid_until)
            .ok_or_else(|| fail("neither valid_days nor valid_until"))?;
        Ok(Self {
            id: r.id,
            title: r.title,
            stock,
            issued_quantity: r.issued_quantity,
            discount,
            min_order_amount: r.min_order_amount,
            issue_starts_at: r.issue_starts_at,
            issue_ends_at: r.issue_ends_at,
            validity,
            valid_from: r.valid_from,
            status: r.status,
            restore_on_cancel: r.restore_on_cancel,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        })
    }
}

impl utoipa::PartialSchema for CouponPolicy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <PolicyRecord as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for CouponPolicy {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("CouponPolicy")
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <PolicyRecord as utoipa::ToSchema>::schemas(schemas);
    }
}

/// A stored coupon policy as JSON (the Redis policy copy, the API's answers and their
/// OpenAPI schema, named `CouponPolicy`): the flat shape of the `coupons` row.
/// [`CouponPolicy`] is written as it and read from it ([`TryFrom`]), so the JSON other
/// processes read is the same whatever the domain type looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyRecord {
    /// Primary key.
    pub id: CouponId,
    /// Shown to users.
    pub title: String,
    /// Stock model.
    pub coupon_type: CouponType,
    /// Stock (count); `None` for unlimited.
    pub total_quantity: Option<i64>,
    /// Rows persisted so far (count), as of the read.
    pub issued_quantity: i64,
    /// Discount model.
    pub discount_type: DiscountType,
    /// Amount or percent, per `discount_type`.
    pub discount_value: i64,
    /// Cap of a percentage discount (smallest currency unit).
    pub max_discount_amount: Option<i64>,
    /// Smallest order the coupon applies to (smallest currency unit).
    pub min_order_amount: i64,
    /// Issue window start (inclusive).
    pub issue_starts_at: DateTime<Utc>,
    /// Issue window end (exclusive).
    pub issue_ends_at: DateTime<Utc>,
    /// Days an issued coupon stays usable.
    pub valid_days: Option<i32>,
    /// Absolute end of use.
    pub valid_until: Option<DateTime<Utc>>,
    /// Absolute start of use (absent: from the issue).
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    /// Lifecycle state.
    pub status: CouponStatus,
    /// Whether cancelling a redeemed order gives the coupon back.
    #[serde(default = "default_true")]
    pub restore_on_cancel: bool,
    /// Row creation time.
    pub created_at: DateTime<Utc>,
    /// Last row change.
    pub updated_at: DateTime<Utc>,
    /// Raised by every admin change (count, from 1); a change is written only under the
    /// version it read ([`crate::policies::save_policy_admin_fields`]).
    #[serde(default = "first_version")]
    pub version: i64,
    /// Stock shards of its Redis admission state (count, 1 to 64; absent: 1).
    #[serde(default)]
    pub stock_shards: ShardCount,
}

fn first_version() -> i64 {
    1
}

/// Where an instant falls relative to a policy's issue window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueWindow {
    /// Before `issue_starts_at`.
    NotStarted,
    /// In `[issue_starts_at, issue_ends_at)`.
    Open,
    /// At or after `issue_ends_at`.
    Ended,
}

impl CouponPolicy {
    /// Places `now` relative to the half-open issue window `[issue_starts_at, issue_ends_at)`.
    pub fn issue_window(&self, now: DateTime<Utc>) -> IssueWindow {
        if now < self.issue_starts_at {
            IssueWindow::NotStarted
        } else if now < self.issue_ends_at {
            IssueWindow::Open
        } else {
            IssueWindow::Ended
        }
    }

    /// Where its admission state lives in Redis: its stock shards.
    pub fn stock_shards(&self) -> StockShards {
        StockShards::new(self.id, self.stock.shards())
    }

    /// The stock (count), `None` for unlimited.
    pub fn total_quantity(&self) -> Option<i64> {
        self.stock.total()
    }

    /// The discount (smallest currency unit) this policy grants on an order of `order_amount`
    /// ([`Discount::for_order`]).
    pub fn discount_for(&self, order_amount: i64) -> i64 {
        self.discount.for_order(order_amount)
    }

    /// When a coupon issued at `issued_at` stops being usable ([`Validity::expires_at`]).
    pub fn expires_at(&self, issued_at: DateTime<Utc>) -> DateTime<Utc> {
        self.validity.expires_at(issued_at)
    }
}

/// The earlier of `issued_at + valid_days` and `valid_until`.
pub fn expiry(
    valid_days: Option<i32>,
    valid_until: Option<DateTime<Utc>>,
    issued_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let by_days = valid_days.map(|d| issued_at + Duration::days(i64::from(d)));
    match (by_days, valid_until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where one user's issue of one coupon stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IssueState {
    /// Admitted in Redis and published to Kafka, not yet persisted in MySQL.
    Pending,
    /// A `coupon_issues` row exists.
    Issued,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn new_policy() -> NewCouponPolicy {
        NewCouponPolicy {
            title: "spring drop".into(),
            coupon_type: CouponType::FirstComeFirstServed,
            total_quantity: Some(500),
            discount_type: DiscountType::Fixed,
            discount_value: 3000,
            max_discount_amount: None,
            min_order_amount: 10_000,
            issue_starts_at: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            issue_ends_at: Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(),
            valid_days: Some(7),
            valid_until: None,
            valid_from: None,
            restore_on_cancel: true,
            stock_shards: 1,
        }
    }

    fn stored(p: &NewCouponPolicy) -> CouponPolicy {
        CouponPolicy::try_from(PolicyRecord {
            id: CouponId::parse(1).unwrap(),
            title: p.title.clone(),
            coupon_type: p.coupon_type,
            total_quantity: p.total_quantity,
            issued_quantity: 0,
            discount_type: p.discount_type,
            discount_value: p.discount_value,
            max_discount_amount: p.max_discount_amount,
            min_order_amount: p.min_order_amount,
            issue_starts_at: p.issue_starts_at,
            issue_ends_at: p.issue_ends_at,
            valid_days: p.valid_days,
            valid_until: p.valid_until,
            valid_from: p.valid_from,
            status: CouponStatus::Active,
            restore_on_cancel: p.restore_on_cancel,
            created_at: p.issue_starts_at,
            updated_at: p.issue_starts_at,
            version: 1,
            stock_shards: ShardCount::parse(p.stock_shards).unwrap(),
        })
        .unwrap()
    }

    #[test]
    fn a_correlation_id_is_1_to_128_bytes_of_visible_ascii() {
        assert!(CorrelationId::parse("req-1").is_ok());
        assert!(CorrelationId::parse("a".repeat(128)).is_ok());
        assert!(CorrelationId::parse("a".repeat(129)).is_err());
        assert!(CorrelationId::parse("").is_err());
        assert!(CorrelationId::parse("has space").is_err());
        assert!(CorrelationId::parse("naïve").is_err());
        assert!(serde_json::from_str::<CorrelationId>("\"\"").is_err());
        let id: CorrelationId = serde_json::from_str("\"req-2\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"req-2\"");
    }

    #[test]
    fn ids_must_be_positive() {
        assert!(UserId::parse(0).is_err());
        assert!(UserId::parse(-3).is_err());
        assert_eq!(UserId::parse(7).unwrap().get(), 7);
        assert!(serde_json::from_str::<UserId>("0").is_err());
        assert!(serde_json::from_str::<UserId>("\"7\"").is_err());
        assert_eq!(serde_json::from_str::<CouponId>("42").unwrap().get(), 42);
    }

    #[test]
    fn a_sound_policy_validates() {
        assert!(ValidPolicy::try_from(new_policy()).is_ok());
        let sharded = NewCouponPolicy {
            stock_shards: 4,
            ..new_policy()
        };
        assert!(ValidPolicy::try_from(sharded).is_ok());
    }

    #[test]
    fn broken_policies_are_refused() {
        type Breaker = Box<dyn Fn(&mut NewCouponPolicy)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("title", Box::new(|p| p.title = "  ".into())),
            ("total_quantity", Box::new(|p| p.total_quantity = None)),
            ("total_quantity", Box::new(|p| p.total_quantity = Some(0))),
            (
                "total_quantity",
                Box::new(|p| p.coupon_type = CouponType::Unlimited),
            ),
            ("discount_value", Box::new(|p| p.discount_value = 0)),
            (
                "max_discount_amount",
                Box::new(|p| p.max_discount_amount = Some(5)),
            ),
            (
                "percentage",
                Box::new(|p| {
                    p.discount_type = DiscountType::Percentage;
                    p.discount_value = 101;
                }),
            ),
            ("min_order_amount", Box::new(|p| p.min_order_amount = -1)),
            ("stock_shards", Box::new(|p| p.stock_shards = 0)),
            ("stock_shards", Box::new(|p| p.stock_shards = 65)),
            (
                "stock_shards",
                Box::new(|p| {
                    p.total_quantity = Some(3);
                    p.stock_shards = 4;
                }),
            ),
            (
                "issue_starts_at",
                Box::new(|p| p.issue_ends_at = p.issue_starts_at),
            ),
            ("valid_days", Box::new(|p| p.valid_days = None)),
            ("valid_days", Box::new(|p| p.valid_days = Some(0))),
            (
                "valid_until",
                Box::new(|p| p.valid_until = Some(p.issue_starts_at)),
            ),
        ];
        for (field, break_it) in cases {
            let mut p = new_policy();
            break_it(&mut p);
            let err = ValidPolicy::try_from(p).expect_err(field);
            assert!(err.0.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn issue_window_is_half_open() {
        let p = stored(&new_policy());
        let second = Duration::seconds(1);
        assert_eq!(
            p.issue_window(p.issue_starts_at - second),
            IssueWindow::NotStarted
        );
        assert_eq!(p.issue_window(p.issue_starts_at), IssueWindow::Open);
        assert_eq!(p.issue_window(p.issue_ends_at - second), IssueWindow::Open);
        assert_eq!(p.issue_window(p.issue_ends_at), IssueWindow::Ended);
    }

    #[test]
    fn discounts_are_capped_and_never_exceed_the_order() {
        let mut p = stored(&new_policy());
        assert_eq!(p.discount_for(50_000), 3000);
        assert_eq!(p.discount_for(2000), 2000, "never more than the order");
        p.discount = Discount::Percentage {
            percent: 15,
            cap: None,
        };
        assert_eq!(p.discount_for(10_001), 1500, "floored");
        p.discount = Discount::Percentage {
            percent: 15,
            cap: Some(1000),
        };
        assert_eq!(p.discount_for(10_001), 1000, "capped");
        assert_eq!(p.discount_for(0), 0);
    }

    #[test]
    fn expiry_is_the_earlier_of_days_and_until() {
        let at = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let until = Utc.with_ymd_and_hms(2026, 3, 3, 0, 0, 0).unwrap();
        assert_eq!(expiry(Some(7), Some(until), at), Some(until));
        assert_eq!(
            expiry(Some(1), Some(until), at),
            Some(at + Duration::days(1))
        );
        assert_eq!(expiry(None, None, at), None);
        assert_eq!(expiry(None, Some(until), at), Some(until));
        assert_eq!(Validity::DaysUntil { days: 7, until }.expires_at(at), until);
        assert_eq!(
            Validity::DaysUntil { days: 1, until }.expires_at(at),
            at + Duration::days(1)
        );
        assert_eq!(Validity::Until(until).expires_at(at), until);
    }

    #[test]
    fn a_stored_policy_round_trips_its_flat_json_and_refuses_contradictions() {
        let policy = stored(&NewCouponPolicy {
            stock_shards: 4,
            ..new_policy()
        });
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(json["coupon_type"], "FIRST_COME_FIRST_SERVED");
        assert_eq!(json["total_quantity"], 500);
        assert_eq!(json["stock_shards"], 4);
        assert_eq!(json["discount_type"], "FIXED");
        assert_eq!(json["discount_value"], 3000);
        assert_eq!(json["valid_days"], 7);
        let back: CouponPolicy = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, policy);

        let mut unlimited_with_total = json.clone();
        unlimited_with_total["coupon_type"] = "UNLIMITED".into();
        assert!(serde_json::from_value::<CouponPolicy>(unlimited_with_total).is_err());
        let mut no_validity = json.clone();
        no_validity["valid_days"] = serde_json::Value::Null;
        assert!(serde_json::from_value::<CouponPolicy>(no_validity).is_err());
        let mut capped_fixed = json;
        capped_fixed["max_discount_amount"] = 100.into();
        assert!(serde_json::from_value::<CouponPolicy>(capped_fixed).is_err());
    }

    #[test]
    fn enums_round_trip_their_stored_spelling() {
        for t in [CouponType::FirstComeFirstServed, CouponType::Unlimited] {
            assert_eq!(CouponType::parse(t.as_str()), Ok(t));
        }
        assert!(DiscountType::parse("HALF").is_err());
        assert_eq!(
            serde_json::to_string(&CouponType::FirstComeFirstServed).unwrap(),
            "\"FIRST_COME_FIRST_SERVED\""
        );
    }
}
