//! `Idempotency-Key` support for every state-changing endpoint (POST, PATCH, PUT, DELETE).
//!
//! The first request with a key acts and its response (status and body) is stored; a repeat
//! with the same key and the same method, path and body gets that response back, marked
//! `Idempotent-Replayed: true`, without acting again; the same key with anything else is a 422
//! `IDEMPOTENCY_KEY_REUSED`. Concurrent repeats wait for the first (up to 5 s, then 409
//! `IDEMPOTENCY_KEY_IN_PROGRESS`). Keys expire after `IDEMPOTENCY_TTL_SECS` (24 h by default;
//! coupon-consumer purges them then). Keys belong to the caller (the bearer token's role and
//! subject): two callers never share one.
//!
//! Only answers worth replaying are stored: not a 5xx (our failure), nor a 401, 403 or 429
//! (the caller was not let in, and once it is, the same key must act). The claim is released
//! instead, so a retry acts again.
//!
//! A caller refused at the door writes nothing to MySQL: the rate limit runs outside this layer
//! (429 before any write), and the key is claimed only after the bearer token was verified
//! (401 before any write) and its role may call the route at all ([`may_write`]: 403 before
//! any write, so a user token with fresh keys on an admin route costs no database work). A 403
//! the handler decides later (a user naming another user) comes after the claim, and is
//! released.
//!
//! The order routes ([`ORDER_ROUTES`]) keep their keys through the order side's own pool
//! (`DATABASE_ORDER_MAX_CONNECTIONS`), so a flood on the other routes cannot starve them.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use coupon_core::auth::Role;
use coupon_core::idempotency::{self, Claim};
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;

use crate::http::auth::Principal;
use crate::http::error::ApiError;

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";

/// How long a repeat waits for the first request of its key to finish.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(5);

/// The state-changing routes a `user` token may call (matched paths): an issue request and a
/// redeem by code. Every other state-changing route needs an `admin` token, or for
/// [`ORDER_ROUTES`] a `service` one. `tests/api/idempotency.rs` checks both lists against the
/// handlers' own answers.
pub const USER_WRITES: [&str; 2] = [
    "/api/v1/coupons/{coupon_id}/issues",
    "/api/v1/codes/{code}/redeem",
];

/// The order routes (matched paths; POST): the shop's order service applies and settles
/// coupons with a `service` (or `admin`) token.
pub const ORDER_ROUTES: [&str; 5] = [
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem/cancel",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/confirm",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/cancel",
];

/// Whether `role` may call the state-changing route `route` (a matched path) at all; the
/// handler then decides for whom. An admin may call every route, a user only [`USER_WRITES`],
/// a service only [`ORDER_ROUTES`].
pub fn may_write(role: Role, route: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::User => USER_WRITES.contains(&route),
        Role::Service => ORDER_ROUTES.contains(&route),
    }
}

/// Settings of the middleware.
#[derive(Clone)]
pub struct Idempotency {
    /// Where keys are stored.
    pub pool: MySqlPool,
    /// Where the keys of [`ORDER_ROUTES`] are stored: the order side's own pool.
    pub order_pool: MySqlPool,
    /// How long a key is remembered.
    pub ttl: chrono::Duration,
    /// Largest body buffered (bytes); the same bound as the JSON extractors.
    pub max_body_bytes: usize,
}

/// The stored form of `key`: SHA-256 (hex) of the caller's role, subject and the key, so each
/// caller has a key space of its own.
fn scoped_key(principal: &Principal, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{:?}", principal.claims.role));
    hasher.update(b":");
    hasher.update(&principal.claims.sub);
    hasher.update(b"\n");
    hasher.update(key);
    format!("{:x}", hasher.finalize())
}

/// Whether a response is stored for replay: not a 5xx (our failure: a retry should act), nor a
/// 401, 403 or 429 (the caller was refused; once it is let in, the same key must act).
fn worth_replaying(status: StatusCode) -> bool {
    !(status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        ))
}

/// The middleware; requests without the header, or with a safe method, pass straight through.
/// A request with a key must carry a valid bearer token (401 otherwise) whose role may call
/// the route (403 otherwise): the key is scoped to the caller.
pub async fn middleware(
    State(settings): State<Idempotency>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(HEADER) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => {
            return ApiError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            )
            .into_response()
        }
    };
    claimed(settings, key, request, next).await
}

/// Authenticates, checks the caller's role, claims `key` for the caller, runs the request and
/// stores its answer (or replays the stored one).
async fn claimed(settings: Idempotency, key: String, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    // Keys are per caller: the same key from two users (whose bodies may be identical, even
    // empty) must never replay one user's answer to the other.
    let principal = match Principal::from_request_parts(&mut parts, &()).await {
        Ok(principal) => principal,
        Err(refused) => return refused.into_response(),
    };
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|route| route.as_str().to_owned());
    let Some(route) = route else {
        // No route matched: the fallback answers 404 or 405, with nothing to claim.
        return next.run(Request::from_parts(parts, body)).await;
    };
    if !may_write(principal.claims.role, &route) {
        return ApiError::Forbidden(format!(
            "a {} token may not call this route",
            principal.claims.role.as_str()
        ))
        .into_response();
    }
    let pool = if ORDER_ROUTES.contains(&route.as_str()) {
        &settings.order_pool
    } else {
        &settings.pool
    };
    let key = scoped_key(&principal, &key);
    let Ok(bytes) = to_bytes(body, settings.max_body_bytes).await else {
        return ApiError::BadRequest("request body too large or unreadable".into()).into_response();
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(b" ");
    hasher.update(parts.uri.path_and_query().map_or("", |p| p.as_str()));
    hasher.update(b"\n");
    hasher.update(&bytes);
    let fingerprint = format!("{:x}", hasher.finalize());

    let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
    loop {
        let claim = idempotency::claim(pool, &key, &fingerprint, Utc::now(), settings.ttl).await;
        match claim {
            Err(err) => return ApiError::unavailable(err).into_response(),
            Ok(Claim::Mismatch) => return ApiError::IdempotencyKeyReused.into_response(),
            Ok(Claim::Replay { status, body }) => {
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
                return response;
            }
            Ok(Claim::InProgress) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(Claim::InProgress) => return ApiError::IdempotencyKeyInProgress.into_response(),
            Ok(Claim::Acquired) => break,
        }
    }

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        let _ = idempotency::release(pool, &key).await;
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let stored = if worth_replaying(parts.status) {
        idempotency::complete(pool, &key, parts.status.as_u16(), &bytes).await
    } else {
        idempotency::release(pool, &key).await
    };
    if let Err(err) = stored {
        tracing::error!(%err, "could not store the idempotent response; a repeat will act again");
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_our_failures_are_not_replayed() {
        let stored = [
            StatusCode::OK,
            StatusCode::CREATED,
            StatusCode::ACCEPTED,
            StatusCode::NO_CONTENT,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
            StatusCode::UNPROCESSABLE_ENTITY,
        ];
        let released = [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ];
        assert!(stored.into_iter().all(worth_replaying));
        assert!(!released.into_iter().any(worth_replaying));
    }
}
