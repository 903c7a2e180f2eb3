//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types (`utoipa`), served at `GET /openapi.json`,
//! and a Swagger UI at `GET /docs` that needs no network: its assets are vendored in
//! `coupon-api/assets/swagger-ui/` and embedded in the binary.

use std::sync::OnceLock;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use crate::routes;
use crate::state::AppState;

/// The whole document: every module's paths, the schemas they use, and the bearer scheme.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("couponrush")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "First-come-first-served coupons: exactly N issued, nobody twice. Errors are \
                     {\"code\", \"message\"} with a stable code.",
                ))
                .build(),
        )
        .build();
    for part in [
        routes::issues::Doc::openapi(),
        routes::reconciliations::Doc::openapi(),
        routes::coupons::Doc::openapi(),
        routes::codes::Doc::openapi(),
        routes::redemptions::Doc::openapi(),
        routes::users::Doc::openapi(),
        routes::health::Doc::openapi(),
    ] {
        doc.merge(part);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "HS256 (or RS256/ES256) token; claims sub, role (user|admin), exp. \
                     Mint one with `coupon-api token --sub 7`.",
                ))
                .build(),
        ),
    );
    add_shared_responses(&mut doc);
    doc
}

/// Adds to every operation the error answers that its extractors and middleware can give
/// whatever the handler does, where its own annotation does not list them: 400 and 422 for a
/// path id that is not a number or not positive (`ApiPath`, `CouponPath`), 422 for a bad query
/// parameter (`ApiQuery`), 400, 408 and 422 for an unreadable, stalled or invalid JSON body
/// (`ApiJson`), 401 and 403 where a bearer token is required, and 503 for a request past
/// `REQUEST_TIMEOUT_MS`. Every one is an `ErrorBody`.
fn add_shared_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let parameters = operation.parameters.as_deref().unwrap_or_default();
            let in_path = parameters
                .iter()
                .any(|p| matches!(p.parameter_in, ParameterIn::Path));
            let in_query = parameters
                .iter()
                .any(|p| matches!(p.parameter_in, ParameterIn::Query));
            let body = operation.request_body.is_some();
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut shared = Vec::new();
            if in_path || body {
                shared.push((
                    "400",
                    "VALIDATION_FAILED: an unreadable path segment or body",
                ));
            }
            if in_path || in_query || body {
                shared.push((
                    "422",
                    "VALIDATION_FAILED: a parameter or field breaks a rule",
                ));
            }
            if body {
                shared.push(("408", "REQUEST_TIMEOUT: the body stopped arriving"));
            }
            if secured {
                shared.push((
                    "401",
                    "UNAUTHORIZED: missing, malformed, expired or forged token",
                ));
                shared.push(("403", "FORBIDDEN: the token may not do this"));
            }
            shared.push((
                "503",
                "UNAVAILABLE: a store cannot serve now, or the request timed out",
            ));
            for (status, description) in shared {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
}

/// The document as JSON, rendered once.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

/// `/openapi.json`, `/docs` and the UI's two assets.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([(CONTENT_TYPE, "application/json")], document_json()) }),
        )
        .route(
            "/docs",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript; charset=utf-8", BUNDLE) }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
}

const INDEX: &[u8] = include_bytes!("../assets/swagger-ui/index.html");
const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

fn asset(content_type: &'static str, body: &'static [u8]) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(method: &str, path: &str) -> Vec<String> {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        doc["paths"][path][method]["responses"]
            .as_object()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_operation_lists_the_answers_its_extractors_give() {
        let delete = statuses("delete", "/api/v1/coupons/{coupon_id}");
        for status in ["400", "401", "403", "422", "503"] {
            assert!(
                delete.contains(&status.to_owned()),
                "{status} in {delete:?}"
            );
        }
        let issue = statuses("post", "/api/v1/coupons/{coupon_id}/issues");
        for status in ["202", "400", "408", "409", "422", "429", "503"] {
            assert!(issue.contains(&status.to_owned()), "{status} in {issue:?}");
        }
        // Public and without parameters: no token or validation answers to document.
        let health = statuses("get", "/health");
        assert!(health.contains(&"503".to_owned()), "{health:?}");
        for status in ["400", "401", "403", "422"] {
            assert!(
                !health.contains(&status.to_owned()),
                "{status} in {health:?}"
            );
        }
    }
}
