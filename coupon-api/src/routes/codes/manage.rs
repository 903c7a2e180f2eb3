//! Operating on a topic's codes: bulk suspend, activate and delete, search, and reading a code
//! the archival job moved out of the hot table.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use coupon_core::codes::{self, ArchivedCode, BulkAction, Code, CodeCursor, CodeFilter, CodeView};
use coupon_core::queries::{Page, PageOf};
use serde::{Deserialize, Serialize};

use super::topic_of;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// Answer of a bulk change: `{"topic_id": 3, "changed": 1000000}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct BulkChanged {
    topic_id: i64,
    changed: u64,
}

async fn bulk(
    state: &AppState,
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

/// `POST /api/v1/topics/{topic_id}/codes/suspend`: every active code suspended, in batches of
/// 1,000 short transactions; 200 with the count changed (0 on a repeat).
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/codes/suspend",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = BulkChanged),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn suspend_codes(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<BulkChanged>, ApiError> {
    bulk(&state, &raw, BulkAction::Suspend).await
}

/// `POST /api/v1/topics/{topic_id}/codes/activate`: every suspended code active again.
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/codes/activate",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = BulkChanged),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn activate_codes(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<BulkChanged>, ApiError> {
    bulk(&state, &raw, BulkAction::Activate).await
}

/// `DELETE /api/v1/topics/{topic_id}/codes`: every code soft-deleted (`DELETED`).
#[utoipa::path(
    delete,
    path = "/api/v1/topics/{topic_id}/codes",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = BulkChanged),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete_codes(
    State(state): State<AppState>,
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
    status: Option<String>,
    redeemed: Option<bool>,
    created_from: Option<chrono::DateTime<Utc>>,
    created_to: Option<chrono::DateTime<Utc>>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/topics/{topic_id}/codes?status=&redeemed=&created_from=&created_to=&cursor=&limit=`:
/// newest first (by id; by creation time for a creation range alone), keyset pagination,
/// `{"items": [...], "next_cursor": ...}`; a cursor from another search shape is 422.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}/codes",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id"), SearchParams),
    responses(
        (status = 200, body = PageOf<CodeView>),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody),
        (status = 422, description = "VALIDATION_FAILED: a field breaks a rule", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn search_codes(
    State(state): State<AppState>,
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

/// `GET /api/v1/archive/codes/{code}`: a code the archival job moved out of the hot table
/// (soft-deleted long ago), with its redemption; 404 `CODE_NOT_FOUND` otherwise.
#[utoipa::path(
    get,
    path = "/api/v1/archive/codes/{code}",
    tag = "codes",
    params(("code" = String, Path, description = "16 letters and digits; any case, with - _ or space separators")),
    responses(
        (status = 200, body = ArchivedCode),
        (status = 400, description = "INVALID_CODE", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn archived_code(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<ArchivedCode>, ApiError> {
    let code = Code::parse(&raw).map_err(|e| ApiError::InvalidCode(e.0))?;
    let archived = codes::find_archived(&state.pool, &code).await?;
    Ok(Json(archived.ok_or_else(|| {
        ApiError::from(codes::CodeError::NotFound)
    })?))
}
