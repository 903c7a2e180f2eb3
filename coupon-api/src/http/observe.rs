//! The request metrics and the error log: every request is counted and timed by its matched
//! route, and the detail of every 5xx is logged (never sent to the client).

use std::collections::HashSet;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use coupon_core::telemetry::names;

use crate::http::error::{ErrorCode, ErrorDetail};

/// Records `http_requests_total` (labels `method`, `route`, `status_class`, `outcome`) and
/// `http_request_duration_seconds` (`method`, `route`, `status_class`), and logs the detail of
/// every 5xx (never sent to the client). `route` is the matched route template, never the URL
/// (monitoring/METRICS.md, cardinality rule); `outcome` is the error body's code, `OK` below
/// 400, or `OTHER` for an error answered without one (a replayed idempotent response).
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| route_label(p.as_str()));
    let response = next.run(request).await;
    let status = response.status();
    if let Some(ErrorDetail(detail)) = response.extensions().get::<ErrorDetail>() {
        tracing::error!(%method, %route, status = status.as_u16(), error = %detail, "request failed");
    }
    let outcome = match response.extensions().get::<ErrorCode>() {
        Some(code) => code.as_str(),
        None if status.as_u16() < 400 => "OK",
        None => "OTHER",
    };
    record_request(method, route, status, outcome, started.elapsed());
    response
}

/// The `status_class` label values, by the status code's first digit.
pub const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `method` label: the standard methods by name, any other `OTHER` (a client picks the
/// method, so it may not pick label values; monitoring/METRICS.md, cardinality rule).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The `route` label: a `'static` copy of the matched route template, made once per template
/// (the router's fixed set), so recording a request allocates no label.
fn route_label(template: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(RwLock::default);
    if let Some(known) = routes
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(template)
    {
        return known;
    }
    let mut routes = routes.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = routes.get(template) {
        return known;
    }
    let leaked: &'static str = Box::leak(template.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

fn record_request(
    method: &'static str,
    route: &'static str,
    status: StatusCode,
    outcome: &'static str,
    elapsed: Duration,
) {
    let class = STATUS_CLASSES[usize::from(status.as_u16() / 100).min(5)];
    metrics::histogram!(
        names::HTTP_REQUEST_DURATION,
        "method" => method, "route" => route, "status_class" => class
    )
    .record(elapsed);
    metrics::counter!(
        names::HTTP_REQUESTS,
        "method" => method, "route" => route, "status_class" => class, "outcome" => outcome
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_outside_the_standard_ones_is_labelled_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }

    #[test]
    fn a_route_template_is_copied_once() {
        let first = route_label("/api/v1/coupons/{coupon_id}/issues");
        let again = route_label(&String::from("/api/v1/coupons/{coupon_id}/issues"));
        assert_eq!(first, "/api/v1/coupons/{coupon_id}/issues");
        assert!(std::ptr::eq(first, again));
    }
}
