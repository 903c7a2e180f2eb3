//! Code coupons: topics, code generation (a background job with progress), CSV export and
//! redeem by code.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use coupon_core::codes::jobs::{self, GenerationJob};
use coupon_core::codes::{
    self, ArchivedCode, BulkAction, Code, CodeCursor, CodeFilter, CodeRedemption, CodeView, Topic,
};
use coupon_core::domain::CouponId;
use coupon_core::queries::{Page, PageOf};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller, IssueRequestBody};
use crate::rate_limit;
use crate::state::AppState;

/// Routes of this module; the redeem by code is rate-limited ([`rate_limit`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/codes/{code}/redeem", post(redeem_code))
        .route_layer(middleware::from_fn(rate_limit::middleware))
        .route("/api/v1/topics", post(create_topic).get(list_topics))
        .route("/api/v1/topics/{topic_id}", get(get_topic))
        .route(
            "/api/v1/topics/{topic_id}/codes",
            post(generate_codes).get(search_codes).delete(delete_codes),
        )
        .route(
            "/api/v1/topics/{topic_id}/codes/suspend",
            post(suspend_codes),
        )
        .route(
            "/api/v1/topics/{topic_id}/codes/activate",
            post(activate_codes),
        )
        .route("/api/v1/topics/{topic_id}/codes.csv", get(export_codes))
        .route(
            "/api/v1/topics/{topic_id}/code-jobs/{job_id}",
            get(generation_job),
        )
        .route("/api/v1/archive/codes/{code}", get(archived_code))
}

/// Most codes one generation request may ask for (count).
pub const MAX_CODES_PER_REQUEST: i64 = 10_000_000;

fn topic_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::Validation("topic_id must be a positive integer".into()))
}

async fn topic_of(state: &AppState, raw: &str) -> Result<Topic, ApiError> {
    codes::find_topic(&state.pool, topic_id(raw)?)
        .await?
        .ok_or(ApiError::TopicNotFound)
}

/// Body of a topic: `{"coupon_id": 1, "name": "Influencer A"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    coupon_id: CouponId,
    name: String,
}

/// `POST /api/v1/topics`: 201 with the topic; 404 `COUPON_NOT_FOUND` for an unknown policy.
#[utoipa::path(
    post,
    path = "/api/v1/topics",
    tag = "codes",
    request_body = NewTopic,
    responses(
        (status = 201, body = Topic),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 400, description = "VALIDATION_FAILED: unreadable body or path", body = ErrorBody),
        (status = 422, description = "VALIDATION_FAILED: a field breaks a rule", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn create_topic(
    State(state): State<AppState>,
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
struct ListParams {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/topics?cursor=&limit=`: newest first.
#[utoipa::path(
    get,
    path = "/api/v1/topics",
    tag = "codes",
    params(ListParams),
    responses(
        (status = 200, body = PageOf<Topic>),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 422, description = "VALIDATION_FAILED: a field breaks a rule", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn list_topics(
    State(state): State<AppState>,
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

/// `GET /api/v1/topics/{topic_id}`: the topic, or 404 `TOPIC_NOT_FOUND`.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, body = Topic),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn get_topic(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Topic>, ApiError> {
    Ok(Json(topic_of(&state, &raw).await?))
}

/// Body of a generation request: `{"count": 1000}` (1–10,000,000).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    count: i64,
}

/// `POST /api/v1/topics/{topic_id}/codes`: 202 with a job (`{"job_id": 4, "topic_id": 3,
/// "requested": 1000000, "generated": 0, "status": "RUNNING"}`) whose progress
/// `GET …/code-jobs/{job_id}` reports. The job commits 1,000 codes per transaction, so memory
/// stays flat whatever the count, and it survives this instance: see [`crate::code_jobs`].
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/codes",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    request_body = GenerateBody,
    responses(
        (status = 202, description = "generation job started", body = GenerationJob),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody),
        (status = 400, description = "VALIDATION_FAILED: unreadable body or path", body = ErrorBody),
        (status = 422, description = "VALIDATION_FAILED: a field breaks a rule", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn generate_codes(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<(StatusCode, Json<GenerationJob>), ApiError> {
    let topic = topic_of(&state, &raw).await?;
    if !(1..=MAX_CODES_PER_REQUEST).contains(&body.count) {
        return Err(ApiError::Validation(format!(
            "count must be from 1 to {MAX_CODES_PER_REQUEST}"
        )));
    }
    let job = jobs::create(
        &state.pool,
        topic.id,
        body.count,
        state.code_jobs.lease(),
        Utc::now(),
    )
    .await?;
    state.code_jobs.spawn(job.job_id);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// `GET /api/v1/topics/{topic_id}/code-jobs/{job_id}`: a generation job's progress, or 404.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}/code-jobs/{job_id}",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id"), ("job_id" = i64, Path, description = "generation job id")),
    responses(
        (status = 200, body = GenerationJob),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND or NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn generation_job(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath((raw_topic, job_id)): ApiPath<(String, i64)>,
) -> Result<Json<GenerationJob>, ApiError> {
    let topic = topic_id(&raw_topic)?;
    let job = jobs::find(&state.pool, topic, job_id)
        .await?
        .ok_or(ApiError::JobNotFound)?;
    Ok(Json(job))
}

/// `GET /api/v1/topics/{topic_id}/codes.csv`: every live code of the topic as CSV
/// (`code,status,redeemed_by,redeemed_at,created_at`), streamed row by row from MySQL.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}/codes.csv",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, description = "CSV: code,status,redeemed_by,redeemed_at,created_at", content_type = "text/csv", body = String),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the admin role", body = ErrorBody),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn export_codes(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    let topic = topic_of(&state, &raw).await?;
    let pool = state.pool.clone();
    let header_line = futures::stream::once(async {
        Ok::<_, std::io::Error>(String::from(
            "code,status,redeemed_by,redeemed_at,created_at\n",
        ))
    });
    let rows = csv_rows(pool, topic.id);
    let body = Body::from_stream(header_line.chain(rows));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"topic-{}-codes.csv\"", topic.id),
        )
        .body(body)
        .map_err(|e| ApiError::Internal(e.into()))
}

/// The topic's codes as CSV lines, read with one streaming query.
fn csv_rows(
    pool: sqlx::MySqlPool,
    topic: i64,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::unfold(Some((pool, None::<i64>)), move |state| async move {
        // Keyset pages of 10,000 rows: bounded memory, no long-held cursor.
        let (pool, after) = state?;
        let rows = sqlx::query(
            "SELECT id, code, status, redeemed_by, redeemed_at, created_at FROM coupon_codes \
             WHERE topic_id = ? AND status <> 'DELETED' AND id > ? ORDER BY id LIMIT 10000",
        )
        .bind(topic)
        .bind(after.unwrap_or(0))
        .fetch_all(&pool)
        .await;
        let rows = match rows {
            Ok(rows) if rows.is_empty() => return None,
            Ok(rows) => rows,
            Err(err) => return Some((Err(std::io::Error::other(err)), None)),
        };
        let mut chunk = String::with_capacity(rows.len() * 64);
        let mut last = after;
        for row in &rows {
            let id: i64 = row.try_get("id").unwrap_or_default();
            let code: String = row.try_get("code").unwrap_or_default();
            let status: String = row.try_get("status").unwrap_or_default();
            let by: Option<i64> = row.try_get("redeemed_by").unwrap_or_default();
            let at: Option<chrono::DateTime<Utc>> = row.try_get("redeemed_at").unwrap_or_default();
            let created: chrono::DateTime<Utc> = row.try_get("created_at").unwrap_or_default();
            chunk.push_str(&format!(
                "{code},{status},{},{},{}\n",
                by.map(|b| b.to_string()).unwrap_or_default(),
                at.map(|a| a.to_rfc3339()).unwrap_or_default(),
                created.to_rfc3339(),
            ));
            last = Some(id);
        }
        Some((Ok(chunk), Some((pool, last))))
    })
}

/// `POST /api/v1/codes/{code}/redeem`: issues the topic's coupon to the user; 200 with the
/// issued coupon; acts for the token's user ([`Caller`]: 401, 403). 400 `INVALID_CODE`; 404 `CODE_NOT_FOUND`; 409 `CODE_ALREADY_USED`,
/// `CODE_SUSPENDED`, `ALREADY_ISSUED`, `COUPON_SUSPENDED`, `SOLD_OUT`. Runs on MySQL alone.
#[tracing::instrument(name = "redeem_code", skip_all)]
#[utoipa::path(
    post,
    path = "/api/v1/codes/{code}/redeem",
    tag = "codes",
    params(("code" = String, Path, description = "16 letters and digits; any case, with - _ or space separators")),
    request_body(content = Option<IssueRequestBody>, description = "none, {}, or {\"user_id\": n}"),
    responses(
        (status = 200, body = CodeRedemption),
        (status = 400, description = "INVALID_CODE or VALIDATION_FAILED", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: missing, malformed, expired or wrongly signed token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the token may not act for this user", body = ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "CODE_ALREADY_USED, CODE_SUSPENDED, ALREADY_ISSUED, COUPON_SUSPENDED or SOLD_OUT", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn redeem_code(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    caller: Caller,
) -> Result<Json<CodeRedemption>, ApiError> {
    let code = Code::parse(&raw).map_err(|e| ApiError::InvalidCode(e.0))?;
    Ok(Json(
        codes::redeem_code(&state.pool, &code, caller.user_id, Utc::now()).await?,
    ))
}

/// Answer of a bulk change: `{"topic_id": 3, "changed": 1000000}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BulkChanged {
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
async fn suspend_codes(
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
async fn activate_codes(
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
async fn delete_codes(
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
struct SearchParams {
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
async fn search_codes(
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
async fn archived_code(
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

/// The OpenAPI description of this module's routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_topic,
    list_topics,
    get_topic,
    generate_codes,
    generation_job,
    export_codes,
    redeem_code,
    suspend_codes,
    activate_codes,
    delete_codes,
    search_codes,
    archived_code
))]
pub(crate) struct Doc;
