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
//! A caller refused at the door writes nothing to MySQL: the key is claimed only after the
//! bearer token was verified (401 before any write) and, on the rate-limited routes, after the
//! rate limit let the request through (429 before any write). The rate limit is a
//! `route_layer` of those routes' routers, so it runs inside every layer `startup::router` adds,
//! this one included: no order of those layers puts it first. So on the routes of
//! [`RATE_LIMITED_ROUTES`] this middleware runs the rate limit itself
//! ([`rate_limit::middleware`]) and claims behind it, and takes the limiters out of the request,
//! so the route's own rate-limit layer further in lets it through uncounted (each request is
//! counted once). A 403 comes from the handler, after the claim, and is released.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use coupon_core::idempotency::{self, Claim};
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;
use tower::{Layer, ServiceExt};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::rate_limit::{self, RateLimits};

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";

/// How long a repeat waits for the first request of its key to finish.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(5);

/// The routes behind the rate limit (the `route_layer(rate_limit::middleware)` of
/// `routes/issues.rs`, `routes/redemptions.rs` and `routes/codes/mod.rs`), as matched paths;
/// POST is their only state-changing method. On these the limit runs before the key is
/// claimed. A limited route missing here would still answer 429 and release its claim, but
/// only after writing it; `tests/api/idempotency.rs` checks this list against the routes the
/// limit covers.
pub const RATE_LIMITED_ROUTES: [&str; 7] = [
    "/api/v1/coupons/{coupon_id}/issues",
    "/api/v1/codes/{code}/redeem",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem/cancel",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/confirm",
    "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/reserve/cancel",
];

/// Settings of the middleware.
#[derive(Clone)]
pub struct Idempotency {
    /// Where keys are stored.
    pub pool: MySqlPool,
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
/// A request with a key must carry a valid bearer token (401 otherwise): the key is scoped to
/// the caller. On a rate-limited route the limit is applied first (module doc).
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
    let limited = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|route| RATE_LIMITED_ROUTES.contains(&route.as_str()));
    if !limited {
        return claimed(settings, key, request, next).await;
    }
    let behind_the_limit = tower::service_fn(move |mut request: Request| {
        let (settings, key, next) = (settings.clone(), key.clone(), next.clone());
        async move {
            // Counted once: the route's own rate-limit layer lets a request without limiters
            // through.
            request.extensions_mut().remove::<RateLimits>();
            Ok::<_, Infallible>(claimed(settings, key, request, next).await)
        }
    });
    match from_fn(rate_limit::middleware)
        .layer(behind_the_limit)
        .oneshot(request)
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Authenticates, claims `key` for the caller, runs the request and stores its answer (or
/// replays the stored one).
async fn claimed(settings: Idempotency, key: String, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    // Keys are per caller: the same key from two users (whose bodies may be identical, even
    // empty) must never replay one user's answer to the other.
    let principal = match Principal::from_request_parts(&mut parts, &()).await {
        Ok(principal) => principal,
        Err(refused) => return refused.into_response(),
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
        let claim =
            idempotency::claim(&settings.pool, &key, &fingerprint, Utc::now(), settings.ttl).await;
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
        let _ = idempotency::release(&settings.pool, &key).await;
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let stored = if worth_replaying(parts.status) {
        idempotency::complete(&settings.pool, &key, parts.status.as_u16(), &bytes).await
    } else {
        idempotency::release(&settings.pool, &key).await
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
