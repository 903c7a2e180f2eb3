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
    doc
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
