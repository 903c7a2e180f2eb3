//! Extractors whose rejections are [`ApiError`]s, so malformed input gets the API's JSON error
//! format, and the extractor that names the caller.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use coupon_core::domain::{CouponId, UserId};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;

/// `axum::Json` with [`ApiError`] rejections:
/// - malformed JSON, a missing `Content-Type: application/json`, or a body over the size limit
///   → 400 `VALIDATION_FAILED`;
/// - well-formed JSON with missing, unknown or wrong-typed fields (a non-positive id included)
///   → 422 `VALIDATION_FAILED`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Validation(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "expected a body with `Content-Type: application/json`".into(),
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::BadRequest(format!(
                "request body could not be read: {}",
                e.body_text()
            ))),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// `axum::extract::Query` whose rejection (unknown or wrong-typed parameter) is a 422
/// `VALIDATION_FAILED`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|e| ApiError::Validation(e.body_text()))
    }
}

/// `{coupon_id}` of the path, parsed as a positive [`CouponId`]: not a number → 400,
/// zero or negative → 422.
#[derive(Debug, Clone, Copy)]
pub struct CouponPath(pub CouponId);

impl<S: Send + Sync> FromRequestParts<S> for CouponPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = first_path_param(parts, state).await?;
        Ok(Self(CouponId::parse(raw)?))
    }
}

/// `{coupon_id}` and `{user_id}` of the path, both positive.
#[derive(Debug, Clone, Copy)]
pub struct CouponUserPath(pub CouponId, pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for CouponUserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((coupon, user)) = Path::<(i64, i64)>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(Self(CouponId::parse(coupon)?, UserId::parse(user)?))
    }
}

/// `{user_id}` of the path, positive.
#[derive(Debug, Clone, Copy)]
pub struct UserPath(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = first_path_param(parts, state).await?;
        Ok(Self(UserId::parse(raw)?))
    }
}

/// `{user_id}` and `{coupon_issue_id}` of the path, both positive.
#[derive(Debug, Clone, Copy)]
pub struct UserIssuePath(pub UserId, pub i64);

impl<S: Send + Sync> FromRequestParts<S> for UserIssuePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((user, issue)) = Path::<(i64, i64)>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        if issue <= 0 {
            return Err(ApiError::Validation(
                "coupon_issue_id must be a positive integer".into(),
            ));
        }
        Ok(Self(UserId::parse(user)?, issue))
    }
}

async fn first_path_param<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<i64, ApiError> {
    let Path(raw) = Path::<i64>::from_request_parts(parts, state)
        .await
        .map_err(path_rejection)?;
    Ok(raw)
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(format!(
        "path parameters must be integers: {}",
        rejection.body_text()
    ))
}

/// Body of `POST /api/v1/coupons/{coupon_id}/issues`: `{"user_id": 7}`.
#[derive(Debug, Deserialize)]
struct IssueRequestBody {
    user_id: UserId,
}

/// Who is asking. Today the caller names itself in the request body (`user_id`, a positive
/// integer); this extractor is the one place that knows, so authentication can replace it
/// (for example with a verified token's subject) without touching the handlers.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The user the request acts for.
    pub user_id: UserId,
}

impl<S: Send + Sync> FromRequest<S> for Caller {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiJson(body) = ApiJson::<IssueRequestBody>::from_request(req, state).await?;
        Ok(Self {
            user_id: body.user_id,
        })
    }
}
