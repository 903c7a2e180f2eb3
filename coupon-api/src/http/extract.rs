//! Extractors whose rejections are [`ApiError`]s, so malformed input gets the API's JSON error
//! format, and the extractors that name the user a request acts for (authorised by
//! [`crate::http::auth`]).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use coupon_core::domain::{CouponId, UserId};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::http::auth::{OrderSide, Principal};
use crate::http::error::ApiError;

/// `axum::Json` with [`ApiError`] rejections:
/// - malformed JSON, a missing `Content-Type: application/json`, or a body over the size limit
///   → 400 `VALIDATION_FAILED`;
/// - well-formed JSON with missing, unknown, repeated or wrong-typed fields (a non-positive id
///   included), or an array where an object belongs → 422 `VALIDATION_FAILED`.
///
/// A key repeated in any object of the body (`{"user_id": 7, "user_id": 8}`) is refused rather
/// than read as its last value: JSON leaves duplicates to the parser (RFC 8259 §4, "the names
/// within an object SHOULD be unique"), and a proxy or front end that reads the first value
/// would check a different request than the one this service acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "expected a body with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| unreadable_body(&e))?;
        parse_json_body(&bytes).map(Self)
    }
}

/// `application/json`, or a `+json` type (`application/problem+json`), parameters ignored.
fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(Ok(value)) = headers.get(CONTENT_TYPE).map(|v| v.to_str()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// Reads a request body as `T`: 400 for text that is not JSON, 422 for JSON that is not a `T`
/// (an array, a repeated key anywhere, a missing or wrong-typed field).
fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let refused = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => ApiError::Validation(e.to_string()),
        _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
    };
    let mut checker = serde_json::Deserializer::from_slice(bytes);
    serde::de::DeserializeSeed::deserialize(UniqueKeys, &mut checker).map_err(refused)?;
    checker.end().map_err(refused)?;
    // serde builds a struct from an array of its fields too (`[null, null]`); no body of
    // this API is an array, so one is refused before it can be read that way.
    if bytes.trim_ascii_start().first() == Some(&b'[') {
        return Err(ApiError::Validation(
            "expected a JSON object, not an array".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(refused)
}

/// Walks a JSON document without keeping it, failing on the first object that repeats a key.
#[derive(Clone, Copy)]
struct UniqueKeys;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key `{key}` appears twice in one object"
                )));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
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

/// `{user_id}` and `{coupon_issue_id}` of an order route's path, both positive; the bearer
/// token must be the order service's or an admin's ([`OrderSide`]: 401, 403), which acts for
/// the user the path names.
#[derive(Debug, Clone, Copy)]
pub struct OrderIssuePath(pub UserId, pub i64);

impl<S: Send + Sync> FromRequestParts<S> for OrderIssuePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        OrderSide::from_request_parts(parts, state).await?;
        let Path((user, issue)) = Path::<(i64, i64)>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        let user = UserId::parse(user)?;
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
