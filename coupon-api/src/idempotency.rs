//! `Idempotency-Key` support for every state-changing endpoint (POST, PATCH, PUT, DELETE).
//!
//! The first request with a key acts and its response (status and body) is stored; a repeat
//! with the same key and the same method, path and body gets that response back, marked
//! `Idempotent-Replayed: true`, without acting again; the same key with anything else is a 422
//! `IDEMPOTENCY_KEY_REUSED`. Concurrent repeats wait for the first (up to 5 s, then 409
//! `IDEMPOTENCY_KEY_IN_PROGRESS`). A 5xx is not stored: repeating it acts again. Keys expire
//! after `IDEMPOTENCY_TTL_SECS` (24 h by default). Keys belong to the caller (the bearer
//! token's role and subject): two callers never share one.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use coupon_core::idempotency::{self, Claim};
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;

use crate::auth::Principal;
use crate::error::ApiError;

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";

/// How long a repeat waits for the first request of its key to finish.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(5);

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

/// The middleware; requests without the header, or with a safe method, pass straight through.
/// A request with a key must carry a valid bearer token (401 otherwise): the key is scoped to
/// the caller.
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
    let stored = if parts.status.is_server_error() {
        idempotency::release(&settings.pool, &key).await
    } else {
        idempotency::complete(&settings.pool, &key, parts.status.as_u16(), &bytes).await
    };
    if let Err(err) = stored {
        tracing::error!(%err, "could not store the idempotent response; a repeat will act again");
    }
    Response::from_parts(parts, Body::from(bytes))
}
