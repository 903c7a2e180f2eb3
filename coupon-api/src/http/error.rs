//! The API's one error type and its JSON form.
//!
//! Every error reaches the client as `{"code": "...", "message": "..."}` with a stable `code`.
//! Internal detail (SQL, Redis, Kafka text) is never sent: it travels in a response extension
//! to the logging middleware ([`crate::http::observe`]), which logs it with its cause chain.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coupon_core::codes::CodeError;
use coupon_core::domain::ValidationError;
use coupon_core::redemption::RedeemError;
use serde::Serialize;

/// Seconds a client is asked to wait (`Retry-After`) after a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The stable `code` of every error body, its JSON string the variant's name in
/// SCREAMING_SNAKE_CASE (`ErrorCode::as_str`); the OpenAPI document lists every value
/// (`ErrorBody`'s `code`), and it is the `outcome` label of `http_requests_total`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// `ALREADY_ISSUED`.
    AlreadyIssued,
    /// `ISSUE_IN_PROGRESS`.
    IssueInProgress,
    /// `SOLD_OUT`.
    SoldOut,
    /// `ISSUE_WINDOW_CLOSED`.
    IssueWindowClosed,
    /// `COUPON_SUSPENDED`.
    CouponSuspended,
    /// `COUPON_NOT_FOUND`.
    CouponNotFound,
    /// `ISSUE_NOT_FOUND`.
    IssueNotFound,
    /// `NOT_FOUND`.
    NotFound,
    /// `IDEMPOTENCY_KEY_REUSED`.
    IdempotencyKeyReused,
    /// `IDEMPOTENCY_KEY_IN_PROGRESS`.
    IdempotencyKeyInProgress,
    /// `VALIDATION_FAILED`.
    ValidationFailed,
    /// `UNAVAILABLE`.
    Unavailable,
    /// `INTERNAL`.
    Internal,
    /// `INVALID_CODE`.
    InvalidCode,
    /// `TOPIC_NOT_FOUND`.
    TopicNotFound,
    /// `UNAUTHORIZED`.
    Unauthorized,
    /// `FORBIDDEN`.
    Forbidden,
    /// `METHOD_NOT_ALLOWED`.
    MethodNotAllowed,
    /// `REQUEST_TIMEOUT`.
    RequestTimeout,
    /// `RATE_LIMITED`.
    RateLimited,
    /// `POLICY_CHANGED`.
    PolicyChanged,
    /// `CODE_NOT_FOUND`.
    CodeNotFound,
    /// `CODE_ALREADY_USED`.
    CodeAlreadyUsed,
    /// `CODE_SUSPENDED`.
    CodeSuspended,
    /// `REDEMPTION_NOT_FOUND`.
    RedemptionNotFound,
    /// `RESERVATION_NOT_FOUND`.
    ReservationNotFound,
    /// `ALREADY_USED`.
    AlreadyUsed,
    /// `COUPON_RESERVED`.
    CouponReserved,
    /// `COUPON_EXPIRED`.
    CouponExpired,
    /// `COUPON_NOT_YET_VALID`.
    CouponNotYetValid,
    /// `ALREADY_CANCELLED`.
    AlreadyCancelled,
    /// `RESTORE_NOT_ALLOWED`.
    RestoreNotAllowed,
    /// `ORDER_OF_ANOTHER_USER`.
    OrderOfAnotherUser,
    /// `MIN_ORDER_AMOUNT_NOT_MET`.
    MinOrderAmountNotMet,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The code as sent (`SOLD_OUT`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why a request failed. Each variant names its status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 409 `ALREADY_ISSUED`: this user already holds this coupon, or was granted it by a request
    /// whose issue message the broker acknowledged (it is being stored).
    #[error("this user has already been issued this coupon")]
    AlreadyIssued,
    /// 409 `ISSUE_IN_PROGRESS`: another request of this user for this coupon was admitted and
    /// is not yet settled (its issue message not yet acknowledged, or its code redeem not yet
    /// committed); that request's own answer tells whether the coupon is the user's.
    #[error("another request of this user for this coupon is still being processed; its answer, or the issue status, tells the outcome")]
    IssueInProgress,
    /// 409 `SOLD_OUT`: the stock is exhausted.
    #[error("the coupon is sold out")]
    SoldOut,
    /// 409 `ISSUE_WINDOW_CLOSED`: outside `[issue_starts_at, issue_ends_at)` or not active.
    #[error("{0}")]
    IssueWindowClosed(&'static str),
    /// 409 `COUPON_SUSPENDED`: an operator suspended the policy.
    #[error("the coupon policy is suspended")]
    CouponSuspended,
    /// 404 `COUPON_NOT_FOUND`: no policy has this id.
    #[error("no coupon policy has this id")]
    CouponNotFound,
    /// 404 `ISSUE_NOT_FOUND`: this user holds no issue of this coupon.
    #[error("this user has no issue of this coupon")]
    IssueNotFound,
    /// 404 `NOT_FOUND`: no route matches.
    #[error("no such resource")]
    RouteNotFound,
    /// 404 `NOT_FOUND`: no reconciliation or code generation job has this id (under this
    /// topic).
    #[error("no job has this id")]
    JobNotFound,
    /// 422 `IDEMPOTENCY_KEY_REUSED`: this `Idempotency-Key` was used for a different request
    /// (method, path or body) by the same caller.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// 409 `IDEMPOTENCY_KEY_IN_PROGRESS`: the first request with this key is still being
    /// processed after the repeat waited 5 s for it.
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyKeyInProgress,
    /// 400 `VALIDATION_FAILED`: the body or path could not be read (malformed JSON, wrong
    /// content type, too large, a path segment that is not a number).
    #[error("{0}")]
    BadRequest(String),
    /// 422 `VALIDATION_FAILED`: well-formed input that breaks a rule (missing or wrong-typed
    /// field, non-positive id, inconsistent policy).
    #[error("{0}")]
    Validation(String),
    /// 503 `UNAVAILABLE` with `Retry-After`: Redis, Kafka or MySQL cannot serve now; nothing
    /// was admitted.
    #[error("the service is temporarily unavailable; retry shortly")]
    Unavailable(#[source] anyhow::Error),
    /// 500 `INTERNAL`: a fault of ours; detail is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// A redemption or redeem-by-code rule refused the request: the status and code of the
    /// refusal (see the `From<RedeemError>` and `From<CodeError>` impls), its text as the
    /// message.
    #[error("{message}")]
    Refused {
        /// 404, 409 or 422.
        status: StatusCode,
        /// The refusal's stable code, e.g. `ALREADY_USED`, `CODE_NOT_FOUND`.
        code: ErrorCode,
        /// What the rule says.
        message: String,
    },
    /// 400 `INVALID_CODE`: not 16 letters and digits (separators aside).
    #[error("{0}")]
    InvalidCode(String),
    /// 404 `TOPIC_NOT_FOUND`: no topic has this id.
    #[error("no topic has this id")]
    TopicNotFound,
    /// 401 `UNAUTHORIZED` with `WWW-Authenticate: Bearer`: the bearer token is missing,
    /// malformed, expired or wrongly signed.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `FORBIDDEN`: a valid token that may not do this (wrong role, another user's id).
    #[error("{0}")]
    Forbidden(String),
    /// 405 `METHOD_NOT_ALLOWED`: the route exists, not with this method.
    #[error("this resource does not support this method")]
    MethodNotAllowed,
    /// 408 `REQUEST_TIMEOUT`: the client stopped sending the body (`BODY_READ_TIMEOUT_MS`).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 429 `RATE_LIMITED` with `Retry-After` (whole seconds, at least 1): this user or client
    /// address sent more requests than its limit allows.
    #[error("too many requests; retry after the time in Retry-After")]
    RateLimited {
        /// Seconds until the next request would be allowed.
        retry_after_secs: u64,
    },
}

impl ApiError {
    pub(crate) fn refused(status: StatusCode, code: ErrorCode, message: String) -> Self {
        Self::Refused {
            status,
            code,
            message,
        }
    }
}

impl From<CodeError> for ApiError {
    /// A refusal: `CODE_NOT_FOUND` 404; `CODE_ALREADY_USED`, `CODE_SUSPENDED`,
    /// `ALREADY_ISSUED`, `ISSUE_IN_PROGRESS`, `COUPON_SUSPENDED`, `SOLD_OUT` 409. A database error as
    /// `From<sqlx::Error>`; the admission state unreachable or missing 503 `UNAVAILABLE`
    /// (nothing was issued).
    fn from(err: CodeError) -> Self {
        let message = err.to_string();
        let refused = |status, code| Self::refused(status, code, message);
        match err {
            CodeError::Database(db) => db.into(),
            CodeError::NotFound => refused(StatusCode::NOT_FOUND, ErrorCode::CodeNotFound),
            CodeError::AlreadyUsed => refused(StatusCode::CONFLICT, ErrorCode::CodeAlreadyUsed),
            CodeError::Suspended => refused(StatusCode::CONFLICT, ErrorCode::CodeSuspended),
            CodeError::AlreadyIssued => refused(StatusCode::CONFLICT, ErrorCode::AlreadyIssued),
            CodeError::InProgress => Self::IssueInProgress,
            CodeError::PolicySuspended => refused(StatusCode::CONFLICT, ErrorCode::CouponSuspended),
            CodeError::SoldOut => refused(StatusCode::CONFLICT, ErrorCode::SoldOut),
            CodeError::AdmissionUnavailable(err) => Self::unavailable(err),
            err @ CodeError::NotPrepared(_) => Self::unavailable(err),
        }
    }
}

impl From<RedeemError> for ApiError {
    /// A refusal: `COUPON_NOT_FOUND` 404 (also for another user's coupon),
    /// `REDEMPTION_NOT_FOUND` and `RESERVATION_NOT_FOUND` 404; `ALREADY_USED`,
    /// `COUPON_RESERVED`, `COUPON_EXPIRED`, `COUPON_NOT_YET_VALID`, `COUPON_SUSPENDED`,
    /// `ALREADY_CANCELLED`, `RESTORE_NOT_ALLOWED`, `ORDER_OF_ANOTHER_USER` 409; `MIN_ORDER_AMOUNT_NOT_MET` 422. A
    /// database error as `From<sqlx::Error>`.
    fn from(err: RedeemError) -> Self {
        let message = err.to_string();
        let refused = |status, code| Self::refused(status, code, message);
        match err {
            RedeemError::Database(db) => db.into(),
            RedeemError::NotFound => refused(StatusCode::NOT_FOUND, ErrorCode::CouponNotFound),
            RedeemError::RedemptionNotFound => {
                refused(StatusCode::NOT_FOUND, ErrorCode::RedemptionNotFound)
            }
            RedeemError::ReservationNotFound => {
                refused(StatusCode::NOT_FOUND, ErrorCode::ReservationNotFound)
            }
            RedeemError::AlreadyUsed => refused(StatusCode::CONFLICT, ErrorCode::AlreadyUsed),
            RedeemError::Reserved => refused(StatusCode::CONFLICT, ErrorCode::CouponReserved),
            RedeemError::Expired => refused(StatusCode::CONFLICT, ErrorCode::CouponExpired),
            RedeemError::NotYetValid => refused(StatusCode::CONFLICT, ErrorCode::CouponNotYetValid),
            RedeemError::Suspended => refused(StatusCode::CONFLICT, ErrorCode::CouponSuspended),
            RedeemError::AlreadyCancelled => {
                refused(StatusCode::CONFLICT, ErrorCode::AlreadyCancelled)
            }
            RedeemError::RestoreNotAllowed => {
                refused(StatusCode::CONFLICT, ErrorCode::RestoreNotAllowed)
            }
            RedeemError::OrderOfAnotherUser => {
                refused(StatusCode::CONFLICT, ErrorCode::OrderOfAnotherUser)
            }
            RedeemError::MinOrderNotMet { .. } => refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::MinOrderAmountNotMet,
            ),
        }
    }
}

impl ApiError {
    /// Wraps a dependency failure as [`ApiError::Unavailable`].
    pub fn unavailable(err: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(err.into())
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::AlreadyIssued
            | Self::IssueInProgress
            | Self::SoldOut
            | Self::IssueWindowClosed(_)
            | Self::CouponSuspended
            | Self::IdempotencyKeyInProgress => StatusCode::CONFLICT,
            Self::CouponNotFound
            | Self::IssueNotFound
            | Self::RouteNotFound
            | Self::JobNotFound => StatusCode::NOT_FOUND,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Refused { status, .. } => *status,
            Self::InvalidCode(_) => StatusCode::BAD_REQUEST,
            Self::TopicNotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyIssued => ErrorCode::AlreadyIssued,
            Self::IssueInProgress => ErrorCode::IssueInProgress,
            Self::SoldOut => ErrorCode::SoldOut,
            Self::IssueWindowClosed(_) => ErrorCode::IssueWindowClosed,
            Self::CouponSuspended => ErrorCode::CouponSuspended,
            Self::CouponNotFound => ErrorCode::CouponNotFound,
            Self::IssueNotFound => ErrorCode::IssueNotFound,
            Self::RouteNotFound | Self::JobNotFound => ErrorCode::NotFound,
            Self::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            Self::IdempotencyKeyInProgress => ErrorCode::IdempotencyKeyInProgress,
            Self::BadRequest(_) | Self::Validation(_) => ErrorCode::ValidationFailed,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Refused { code, .. } => *code,
            Self::InvalidCode(_) => ErrorCode::InvalidCode,
            Self::TopicNotFound => ErrorCode::TopicNotFound,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::RequestTimeout => ErrorCode::RequestTimeout,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        Self::Validation(err.0)
    }
}

impl From<sqlx::Error> for ApiError {
    /// Connectivity trouble is a 503 (retry helps); anything else is our fault.
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err.into()),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    /// Redis failing (unreachable, timed out, refusing) is a 503: nothing was admitted and a
    /// retry may succeed.
    fn from(err: redis::RedisError) -> Self {
        Self::Unavailable(err.into())
    }
}

/// Error body: `{"code": "SOLD_OUT", "message": "the coupon is sold out"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation, safe to show.
    pub message: String,
}

/// The logged detail of a 5xx, carried from [`ApiError::into_response`] to the logging
/// middleware as a response extension.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let body = ErrorBody {
            code,
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        // The metrics middleware's `outcome` label of `http_requests_total`.
        response.extensions_mut().insert(code);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        match &self {
            Self::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"couponrush\""),
                );
            }
            Self::RateLimited { retry_after_secs } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_secs).max(1)),
                );
            }
            _ => {}
        }
        if let Self::Unavailable(cause) | Self::Internal(cause) = &self {
            response
                .extensions_mut()
                .insert(ErrorDetail(format!("{cause:?}")));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_sent_as_its_own_string() {
        let mut sent = Vec::new();
        for &code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str(), "serde and the label agree");
            sent.push(code.as_str());
        }
        sent.sort_unstable();
        sent.dedup();
        assert_eq!(
            sent.len(),
            ErrorCode::ALL.len(),
            "no two codes share a string"
        );
        assert_eq!(
            ErrorCode::MinOrderAmountNotMet.as_str(),
            "MIN_ORDER_AMOUNT_NOT_MET"
        );
    }
}
