//! Topics: create, list and read the topic that ties a batch of codes to a coupon policy.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use coupon_core::codes::{self, Topic};
use coupon_core::domain::CouponId;
use coupon_core::queries::{Page, PageOf};
use serde::Deserialize;

use super::topic_of;
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use std::sync::Arc;

use crate::codes::CodeState;

/// Body of a topic: `{"coupon_id": 1, "name": "Influencer A"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTopic {
    coupon_id: CouponId,
    name: String,
}

/// Create a topic for code coupons
///
/// Needs an admin token. A topic ties a batch of printed codes to one coupon policy: redeeming
/// one of its codes issues that coupon. Answers 201 with the topic. 404 `COUPON_NOT_FOUND` for an
/// unknown policy; 422 for a name that is empty or longer than 200 characters.
#[utoipa::path(
    post,
    path = "/api/v1/topics",
    tag = "codes",
    request_body = NewTopic,
    responses(
        (status = 201, body = Topic),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn create_topic(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiJson(body): ApiJson<NewTopic>,
) -> Result<(StatusCode, Json<Topic>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::Validation(
            "name must have 1 to 200 characters".into(),
        ));
    }
    let topic = codes::create_topic(&state.pool, body.coupon_id, name)
        .await?
        .ok_or(ApiError::CouponNotFound)?;
    Ok((StatusCode::CREATED, Json(topic)))
}

/// Query of the topic list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// The `next_cursor` of the previous page; absent for the first page.
    cursor: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    limit: Option<u32>,
}

/// List topics
///
/// Needs an admin token. Newest first; pass the answer's `next_cursor` as `cursor` for the next
/// page.
#[utoipa::path(
    get,
    path = "/api/v1/topics",
    tag = "codes",
    params(ListParams),
    responses(
        (status = 200, body = PageOf<Topic>)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn list_topics(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<PageOf<Topic>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let mut items = codes::list_topics(&state.pool, page.before_id, page.limit + 1).await?;
    let more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    let next_cursor = more
        .then(|| items.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(PageOf { items, next_cursor }))
}

/// Read a topic
///
/// Needs an admin token. 404 `TOPIC_NOT_FOUND` for an unknown topic.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = Topic),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn get_topic(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Topic>, ApiError> {
    Ok(Json(topic_of(&state, &raw).await?))
}
