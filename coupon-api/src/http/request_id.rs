//! One request id from HTTP to MySQL: every request carries an `x-request-id`, every response
//! answers it, and every log line written while the request runs names it.
//!
//! The id is the client's (or its proxy's) when the request brought a [valid](is_valid) one,
//! else a fresh UUIDv4 (`tower-http`'s request-id layers). The request's span, `request`, at
//! INFO level, carries it as `request_id`, so every event logged inside the request (the issue
//! handler's own span is a child of it) prints it, and an OTLP exporter
//! ([`coupon_core::telemetry`]) ships it as a span attribute. The issue path copies it into
//! the issue message ([`coupon_core::issue::message::IssueMessage::correlation_id`]), and
//! coupon-consumer logs it with the row it persists and stores it in
//! `coupon_issues.correlation_id`.
//!
//! Not to be confused with the issue's own `request_id` (a UUIDv7 answered in the 202 body),
//! which marks the admission in Redis and must be unique per admission; a client may well send
//! one `x-request-id` twice.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use coupon_core::domain::CorrelationId;
use tower_http::request_id::RequestId;
use tracing::Span;

/// The header: `x-request-id`, as proxies (nginx `$request_id`, Envoy, Heroku) name it.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a request (bytes); a longer one is replaced.
pub const MAX_LEN: usize = CorrelationId::MAX_LEN;

/// Whether `value` may be kept as the request's id: a [`CorrelationId`], 1 to [`MAX_LEN`]
/// bytes of visible ASCII (`!` to `~`, no spaces or control characters), so it can go into log
/// lines, a Kafka message and a `VARCHAR(128)` column unchanged.
pub fn is_valid(value: &HeaderValue) -> bool {
    CorrelationId::is_valid(value.as_bytes())
}

/// Drops every `x-request-id` of `request` unless there is exactly one and it [`is_valid`], so
/// the set-id layer behind it generates a fresh one. Runs before that layer, as a plain
/// function (`tower`'s `MapRequestLayer`: no boxed future per request).
pub fn drop_invalid(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let mut values = headers.get_all(&HEADER).iter();
    let keep = match (values.next(), values.next()) {
        (None, _) => true,
        (Some(value), None) => is_valid(value),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove(&HEADER);
    }
    request
}

/// The request's id as the set-id layer left it in the extensions: `None` only on a router
/// built without that layer.
pub fn of(request_id: Option<&RequestId>) -> Option<CorrelationId> {
    request_id
        .and_then(text)
        .and_then(|id| CorrelationId::parse(id).ok())
}

/// The id's text (always ASCII once [`drop_invalid`] and the set-id layer have run).
fn text(id: &RequestId) -> Option<&str> {
    id.header_value().to_str().ok()
}

/// The span of one request, at INFO: `request{method=POST route=/api/v1/… request_id=…}`.
/// `route` is the matched route template (never the URL, which may carry ids).
pub fn span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(text)
        .unwrap_or("");
    tracing::info_span!("request", method = %request.method(), route = %route, request_id = %id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_up_to_128_bytes_is_kept() {
        for good in [
            "a",
            "0193d2c4-8f1e-7b2a-9c3d-5e6f7a8b9c0d",
            "req:42/x+y=z",
            &"x".repeat(128),
        ] {
            assert!(is_valid(&HeaderValue::from_str(good).unwrap()), "{good}");
        }
    }

    #[test]
    fn empty_long_spaced_or_binary_ids_are_replaced() {
        for bad in [
            &b""[..],
            &[b'x'; 129],
            b"two words",
            b"tab\there",
            &[0xc3, 0xa9],
        ] {
            let value = HeaderValue::from_bytes(bad).unwrap();
            assert!(!is_valid(&value), "{bad:?}");
        }
    }

    #[test]
    fn a_repeated_header_is_dropped() {
        let request = Request::builder()
            .header(&HEADER, "one")
            .header(&HEADER, "two")
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(drop_invalid(request).headers().get(&HEADER).is_none());
        let request = Request::builder()
            .header(&HEADER, "one")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(drop_invalid(request).headers()[&HEADER], "one");
    }
}
