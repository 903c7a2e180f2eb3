//! Operating on a topic's codes: bulk suspend, activate and delete, search, and reading a code
//! the archival job moved out of the hot table.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use coupon_core::codes::{self, ArchivedCode, BulkAction, Code, CodeCursor, CodeFilter, CodeView};
use coupon_core::queries::{Page, PageOf};
use serde::{Deserialize, Serialize};

use super::topic_of;
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiPath, ApiQuery};
use std::sync::Arc;

use crate::codes::CodeState;

/// Answer of a bulk change: `{"topic_id": 3, "changed": 1000000}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct BulkChanged {
    topic_id: i64,
    changed: u64,
}

async fn bulk(
    state: &CodeState,
    raw: &str,
    action: BulkAction,
) -> Result<Json<BulkChanged>, ApiError> {
    let topic = topic_of(state, raw).await?;
    let changed = codes::bulk_change(&state.pool, topic.id, action, Utc::now()).await?;
    tracing::info!(
        topic_id = topic.id,
        ?action,
        changed,
        "bulk change of codes"
    );
    Ok(Json(BulkChanged {
        topic_id: topic.id,
        changed,
    }))
}

/// Suspend a topic's codes
///
/// Needs an admin token. Every active code of the topic stops being redeemable (409
/// `CODE_SUSPENDED`) until activated again. Answers 200 with how many codes changed (0 on a
/// repeat). 404 `TOPIC_NOT_FOUND`.
// In batches of 1,000 short transactions.
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/codes/suspend",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = BulkChanged),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn suspend_codes(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<BulkChanged>, ApiError> {
    bulk(&state, &raw, BulkAction::Suspend).await
}

/// Activate a topic's suspended codes
///
/// Needs an admin token. Every suspended code of the topic is redeemable again. Answers 200 with
/// how many codes changed (0 on a repeat). 404 `TOPIC_NOT_FOUND`.
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/codes/activate",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = BulkChanged),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn activate_codes(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<BulkChanged>, ApiError> {
    bulk(&state, &raw, BulkAction::Activate).await
}

/// Delete a topic's codes
///
/// Needs an admin token. Every code of the topic not deleted yet is deleted: none can be
/// redeemed any more and the export no longer lists them; coupons already redeemed with them
/// stay with their users. Answers 200 with how many codes changed (0 on a repeat). 404 `TOPIC_NOT_FOUND`.
// Soft delete: status `DELETED`; the archival job moves them out of the hot table later.
#[utoipa::path(
    delete,
    path = "/api/v1/topics/{topic_id}/codes",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = BulkChanged),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn delete_codes(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<BulkChanged>, ApiError> {
    bulk(&state, &raw, BulkAction::Delete).await
}

/// Query of the code search.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchParams {
    /// Only codes in this status: `ACTIVE`, `SUSPENDED` or `DELETED`.
    status: Option<String>,
    /// Only redeemed codes (`true`) or only unredeemed ones (`false`).
    redeemed: Option<bool>,
    /// Only codes created at or after this time (RFC 3339).
    created_from: Option<chrono::DateTime<Utc>>,
    /// Only codes created before this time (RFC 3339).
    created_to: Option<chrono::DateTime<Utc>>,
    /// The `next_cursor` of the previous page; absent for the first page.
    cursor: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    limit: Option<u32>,
}

/// Search a topic's codes
///
/// Needs an admin token. Filters: `status` (`ACTIVE`, `SUSPENDED` or `DELETED`), `redeemed`
/// (true or false) and a creation range (`created_from` inclusive, `created_to` exclusive, RFC
/// 3339). Newest first, 20 per page unless `limit` says otherwise (1 to 100); pass the answer's
/// `next_cursor` as `cursor` for the next page of the same search (422 with another search's
/// cursor). 404 `TOPIC_NOT_FOUND`.
// Ordered by id; by creation time for a creation range alone.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}/codes",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id"), SearchParams),
    responses(
        (status = 200, body = PageOf<CodeView>),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn search_codes(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<PageOf<CodeView>>, ApiError> {
    let topic = topic_of(&state, &raw).await?;
    if let Some(status) = &params.status {
        if !["ACTIVE", "SUSPENDED", "DELETED"].contains(&status.as_str()) {
            return Err(ApiError::Validation(
                "status must be ACTIVE, SUSPENDED or DELETED".into(),
            ));
        }
    }
    let page = Page::parse(params.limit, None)?;
    let filter = CodeFilter {
        status: params.status,
        redeemed: params.redeemed,
        created_from: params.created_from,
        created_to: params.created_to,
    };
    let before = params
        .cursor
        .as_deref()
        .map(|raw| CodeCursor::parse(raw, &filter))
        .transpose()?;
    let mut items =
        codes::search_codes(&state.pool, topic.id, &filter, before, page.limit + 1).await?;
    let more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    let next_cursor = more
        .then(|| {
            items
                .last()
                .map(|c| CodeCursor::after(c, &filter).to_string())
        })
        .flatten();
    Ok(Json(PageOf { items, next_cursor }))
}

/// Look up an archived code
///
/// Needs an admin token. Codes deleted long ago are moved to an archive; this finds one there,
/// with its redemption if it had one. 400 `INVALID_CODE`; 404 `CODE_NOT_FOUND` when the archive
/// does not hold it.
#[utoipa::path(
    get,
    path = "/api/v1/archive/codes/{code}",
    tag = "codes",
    params(("code" = String, Path, description = "16 letters and digits; any case, with - _ or space separators")),
    responses(
        (status = 200, body = ArchivedCode),
        (status = 400, description = "INVALID_CODE", body = ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn archived_code(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<ArchivedCode>, ApiError> {
    let code = Code::parse(&raw).map_err(|e| ApiError::InvalidCode(e.0))?;
    let archived = codes::find_archived(&state.pool, &code).await?;
    Ok(Json(archived.ok_or_else(|| {
        ApiError::from(codes::CodeError::NotFound)
    })?))
}
