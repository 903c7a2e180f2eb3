//! The API's one error type and its JSON form.
//!
//! Every error reaches the client as `{"code": "...", "message": "..."}` with a stable `code`.
//! Internal detail (SQL, Redis, Kafka text) is never sent: it travels in a response extension
//! to the logging middleware ([`crate::startup`]), which logs it with its cause chain.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coupon_core::codes::CodeError;
use coupon_core::domain::ValidationError;
use coupon_core::redemption::RedeemError;
use serde::Serialize;

/// Seconds a client is asked to wait (`Retry-After`) after a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

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
        code: &'static str,
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
    pub(crate) fn refused(status: StatusCode, code: &'static str, message: String) -> Self {
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
            CodeError::NotFound => refused(StatusCode::NOT_FOUND, "CODE_NOT_FOUND"),
            CodeError::AlreadyUsed => refused(StatusCode::CONFLICT, "CODE_ALREADY_USED"),
            CodeError::Suspended => refused(StatusCode::CONFLICT, "CODE_SUSPENDED"),
            CodeError::AlreadyIssued => refused(StatusCode::CONFLICT, "ALREADY_ISSUED"),
            CodeError::InProgress => Self::IssueInProgress,
            CodeError::PolicySuspended => refused(StatusCode::CONFLICT, "COUPON_SUSPENDED"),
            CodeError::SoldOut => refused(StatusCode::CONFLICT, "SOLD_OUT"),
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
            RedeemError::NotFound => refused(StatusCode::NOT_FOUND, "COUPON_NOT_FOUND"),
            RedeemError::RedemptionNotFound => {
                refused(StatusCode::NOT_FOUND, "REDEMPTION_NOT_FOUND")
            }
            RedeemError::ReservationNotFound => {
                refused(StatusCode::NOT_FOUND, "RESERVATION_NOT_FOUND")
            }
            RedeemError::AlreadyUsed => refused(StatusCode::CONFLICT, "ALREADY_USED"),
            RedeemError::Reserved => refused(StatusCode::CONFLICT, "COUPON_RESERVED"),
            RedeemError::Expired => refused(StatusCode::CONFLICT, "COUPON_EXPIRED"),
            RedeemError::NotYetValid => refused(StatusCode::CONFLICT, "COUPON_NOT_YET_VALID"),
            RedeemError::Suspended => refused(StatusCode::CONFLICT, "COUPON_SUSPENDED"),
            RedeemError::AlreadyCancelled => refused(StatusCode::CONFLICT, "ALREADY_CANCELLED"),
            RedeemError::RestoreNotAllowed => refused(StatusCode::CONFLICT, "RESTORE_NOT_ALLOWED"),
            RedeemError::OrderOfAnotherUser => {
                refused(StatusCode::CONFLICT, "ORDER_OF_ANOTHER_USER")
            }
            RedeemError::MinOrderNotMet { .. } => {
                refused(StatusCode::UNPROCESSABLE_ENTITY, "MIN_ORDER_AMOUNT_NOT_MET")
            }
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
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyIssued => "ALREADY_ISSUED",
            Self::IssueInProgress => "ISSUE_IN_PROGRESS",
            Self::SoldOut => "SOLD_OUT",
            Self::IssueWindowClosed(_) => "ISSUE_WINDOW_CLOSED",
            Self::CouponSuspended => "COUPON_SUSPENDED",
            Self::CouponNotFound => "COUPON_NOT_FOUND",
            Self::IssueNotFound => "ISSUE_NOT_FOUND",
            Self::RouteNotFound | Self::JobNotFound => "NOT_FOUND",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::IdempotencyKeyInProgress => "IDEMPOTENCY_KEY_IN_PROGRESS",
            Self::BadRequest(_) | Self::Validation(_) => "VALIDATION_FAILED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
            Self::Refused { code, .. } => code,
            Self::InvalidCode(_) => "INVALID_CODE",
            Self::TopicNotFound => "TOPIC_NOT_FOUND",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
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
    pub code: &'static str,
    /// Human-readable explanation, safe to show.
    pub message: String,
}

/// The stable code of an error response, carried to the metrics middleware as a response
/// extension (the `outcome` label of `http_requests_total`).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

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
        response.extensions_mut().insert(ErrorCode(code));
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
