//! HTTP routes, one module per resource; [`router`] merges them.

pub mod codes;
pub mod coupons;
pub mod health;
pub mod issues;
pub mod reconciliations;
pub mod redemptions;
pub mod users;

use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// Every public route, with a JSON 404 for anything else.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(coupons::router())
        .merge(codes::router())
        .merge(issues::router())
        .merge(reconciliations::router())
        .merge(redemptions::router())
        .merge(users::router())
        .merge(health::router())
        .merge(crate::openapi::router())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}
