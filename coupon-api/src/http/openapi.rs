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
use utoipa::openapi::tag::TagBuilder;
use utoipa::OpenApi;

/// The document's tags, in the order an API user meets them, with their descriptions.
const TAGS: [(&str, &str); 7] = [
    (
        "coupons",
        "Coupon policies: what a coupon gives, how many there are and when they can be had. \
         Anyone may read them; operators (admin) create, change, suspend and delete them.",
    ),
    (
        "issues",
        "Asking for a coupon of a first-come-first-served drop, and where that request stands.",
    ),
    ("users", "A user's own coupons."),
    (
        "redemptions",
        "Using a coupon for an order: redeem at once, or reserve during checkout and then \
         confirm or release; cancelling a redemption when the order is cancelled. Called by \
         the shop's order service (role `service`), not by shoppers.",
    ),
    (
        "codes",
        "Code coupons: a user trades a printed code for a coupon. Operators create topics, \
         generate, export, search and suspend codes.",
    ),
    (
        "admin",
        "Operators' repairs: reconciliation of the admission state against what was stored.",
    ),
    (
        "health",
        "Liveness and readiness for load balancers and orchestrators.",
    ),
];

/// The whole document: every module's paths, the schemas they use, the tags in [`TAGS`]'s
/// order and the bearer scheme.
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
        crate::policies::routes::Doc::openapi(),
        crate::issue::routes::Doc::openapi(),
        crate::users::Doc::openapi(),
        crate::orders::Doc::openapi(),
        crate::codes::Doc::openapi(),
        crate::operations::reconciliations::Doc::openapi(),
        crate::operations::health::Doc::openapi(),
    ] {
        doc.merge(part);
    }
    doc.tags = Some(
        TAGS.iter()
            .map(|(name, description)| {
                TagBuilder::new()
                    .name(*name)
                    .description(Some(*description))
                    .build()
            })
            .collect(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT (HS256, or RS256/ES256) with the claims `sub` (the user id, or the \
                     service's name), `role` (`user`, `service` for the shop's order or \
                     checkout backend, or `admin`) and `exp`. Each operation lists the roles \
                     that may call it; a `user` token acts only for its own user id. For a \
                     local stack, mint one with `coupon-api token --sub 7` (add `--role \
                     service` for the order service, `--role admin` for an operator).",
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
/// (`ApiJson`), 401 and 403 where a bearer token is required (the 403 worded by the roles the
/// operation names), and 503 for a request past
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
            let roles = roles(operation);
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
                shared.push((
                    "403",
                    if roles == ["admin"] {
                        "FORBIDDEN: the token lacks the admin role"
                    } else if roles.iter().any(|role| role == "service") {
                        "FORBIDDEN: the token is neither the order service's (role service) nor an admin's"
                    } else {
                        "FORBIDDEN: a user token may act only for its own user id"
                    },
                ));
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

/// The roles an operation's bearer requirement names (`security(("bearer" = ["admin"]))`).
/// OpenAPI 3.1 lets a non-OAuth requirement list role names (Security Requirement Object);
/// utoipa keeps them private, so they are read back from JSON.
fn roles(operation: &utoipa::openapi::path::Operation) -> Vec<String> {
    let security = serde_json::to_value(&operation.security).unwrap_or_default();
    security
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|requirement| requirement.get("bearer")?.as_array().cloned())
        .flatten()
        .filter_map(|role| role.as_str().map(str::to_owned))
        .collect()
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
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
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

const INDEX: &[u8] = include_bytes!("../../assets/swagger-ui/index.html");
const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

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

    #[test]
    fn tags_come_in_the_order_a_user_meets_them_and_every_operation_has_one_of_them() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        let tags: Vec<&str> = doc["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(
            tags,
            [
                "coupons",
                "issues",
                "users",
                "redemptions",
                "codes",
                "admin",
                "health"
            ]
        );
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let tag = operation["tags"][0].as_str().unwrap_or_default();
                assert!(tags.contains(&tag), "{method} {path} has tag {tag:?}");
            }
        }
    }

    #[test]
    fn summaries_speak_to_api_users_not_to_rust_readers() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                operations += 1;
                let summary = operation["summary"].as_str().unwrap_or_default();
                let description = operation["description"].as_str().unwrap_or_default();
                assert!(
                    !summary.is_empty() && summary.len() <= 60 && !summary.contains('\n'),
                    "{method} {path}: the summary should be one short line: {summary:?}"
                );
                assert!(
                    !summary.contains("/api/v1") && !summary.contains('`'),
                    "{method} {path}: the summary repeats the path or code: {summary:?}"
                );
                for text in [summary, description] {
                    for rust in ["[`", "crate::", "coupon_core::", "Caller"] {
                        assert!(
                            !text.contains(rust),
                            "{method} {path}: {rust:?} in {text:?}"
                        );
                    }
                }
            }
        }
        assert!(operations >= 30, "{operations}");
    }

    #[test]
    fn secured_operations_name_their_roles_and_word_403_by_them() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        let operation = |method: &str, path: &str| doc["paths"][path][method].clone();
        let create = operation("post", "/api/v1/coupons");
        assert_eq!(
            create["security"][0]["bearer"],
            serde_json::json!(["admin"])
        );
        assert!(create["responses"]["403"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("admin role"));
        let issue = operation("post", "/api/v1/coupons/{coupon_id}/issues");
        assert_eq!(
            issue["security"][0]["bearer"],
            serde_json::json!(["user", "admin"])
        );
        assert!(issue["responses"]["403"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("its own user id"));
        let redeem = operation(
            "post",
            "/api/v1/users/{user_id}/coupons/{coupon_issue_id}/redeem",
        );
        assert_eq!(
            redeem["security"][0]["bearer"],
            serde_json::json!(["service", "admin"])
        );
        assert!(redeem["responses"]["403"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("role service"));
        // Public reads name no roles and document no token answers.
        let read = operation("get", "/api/v1/coupons/{coupon_id}");
        assert!(read["security"].is_null(), "{read}");
        assert!(read["responses"]["401"].is_null(), "{read}");
    }
}
