//! Extractors whose rejections are [`ApiError`]s, so malformed input gets the API's JSON error
//! format, and the extractors that name the user a request acts for (authorised by
//! [`crate::auth`]).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use coupon_core::domain::{CouponId, UserId};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::Principal;
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
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            // serde builds a struct from an array of its fields too (`[null, null]`); no body
            // of this API is an array, so one is refused before it can be read that way.
            Ok(axum::Json(serde_json::Value::Array(_))) => Err(ApiError::Validation(
                "expected a JSON object, not an array".into(),
            )),
            Ok(axum::Json(value)) => serde_json::from_value(value)
                .map(Self)
                .map_err(|e| ApiError::Validation(e.to_string())),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Validation(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "expected a body with `Content-Type: application/json`".into(),
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(unreadable_body(&e)),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// A body that could not be read: 408 when the client stopped sending it in time
/// (`BODY_READ_TIMEOUT_MS`), else 400 (too large, broken connection).
fn unreadable_body(rejection: &BytesRejection) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = cause {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::RequestTimeout;
        }
        cause = err.source();
    }
    ApiError::BadRequest(format!(
        "request body could not be read: {}",
        rejection.body_text()
    ))
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

/// `axum::extract::Path` whose rejection (a segment of the wrong type, not UTF-8) is a 400
/// `VALIDATION_FAILED` JSON error instead of axum's plain-text one.
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(path_rejection)
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

/// `{coupon_id}` and `{user_id}` of the path, both positive; the bearer token must act for
/// that user ([`Principal::act_for`]: 401, 403).
#[derive(Debug, Clone, Copy)]
pub struct CouponUserPath(pub CouponId, pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for CouponUserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let Path((coupon, user)) = Path::<(i64, i64)>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        let user = principal.act_for(Some(UserId::parse(user)?))?;
        Ok(Self(CouponId::parse(coupon)?, user))
    }
}

/// `{user_id}` of the path, positive; the bearer token must act for that user (401, 403).
#[derive(Debug, Clone, Copy)]
pub struct UserPath(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let raw = first_path_param(parts, state).await?;
        Ok(Self(principal.act_for(Some(UserId::parse(raw)?))?))
    }
}

/// `{user_id}` and `{coupon_issue_id}` of the path, both positive; the bearer token must act
/// for that user (401, 403).
#[derive(Debug, Clone, Copy)]
pub struct UserIssuePath(pub UserId, pub i64);

impl<S: Send + Sync> FromRequestParts<S> for UserIssuePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let Path((user, issue)) = Path::<(i64, i64)>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        let user = principal.act_for(Some(UserId::parse(user)?))?;
        if issue <= 0 {
            return Err(ApiError::Validation(
                "coupon_issue_id must be a positive integer".into(),
            ));
        }
        Ok(Self(user, issue))
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

/// Body of an issue (`POST /api/v1/coupons/{coupon_id}/issues`) or of a redeem by code: none,
/// `null`, `{}` or `{"user_id": 7}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequestBody {
    /// The user the request acts for; defaults to the token's subject.
    pub user_id: Option<UserId>,
}

/// Who an issue or a redeem by code acts for: the bearer token's user (see [`Principal::act_for`]). The
/// body may be absent; a `user_id` in it must match a user token's subject (403 otherwise)
/// and names the user for an admin token.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The user the request acts for.
    pub user_id: UserId,
}

impl<S: Send + Sync> FromRequest<S> for Caller {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let principal = Principal::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let body = if req.headers().contains_key(CONTENT_TYPE) {
            // JSON `null` is no body too.
            ApiJson::<Option<IssueRequestBody>>::from_request(req, state)
                .await?
                .0
                .unwrap_or_default()
        } else {
            let bytes = Bytes::from_request(req, state)
                .await
                .map_err(|e| unreadable_body(&e))?;
            if !bytes.is_empty() {
                return Err(ApiError::BadRequest(
                    "expected a body with `Content-Type: application/json`".into(),
                ));
            }
            IssueRequestBody::default()
        };
        Ok(Self {
            user_id: principal.act_for(body.user_id)?,
        })
    }
}
