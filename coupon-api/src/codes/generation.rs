//! Code generation (a background job whose progress can be read) and the CSV export of a
//! topic's codes.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::Utc;
use coupon_core::codes::jobs::{self, GenerationJob};
use futures::StreamExt;
use serde::Deserialize;
use sqlx::Row;

use super::{topic_id, topic_of};
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath};
use std::sync::Arc;

use crate::codes::CodeState;

/// Most codes one generation request may ask for (count).
pub const MAX_CODES_PER_REQUEST: i64 = 10_000_000;

/// Body of a generation request: `{"count": 1000}` (1–10,000,000).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GenerateBody {
    count: i64,
}

/// Generate codes for a topic
///
/// Needs an admin token. Asks for `count` new codes (1 to 10,000,000). Generation runs in the
/// background: answers 202 with the job, whose progress the generation job's own address
/// reports (`generated` of `requested`, then `DONE`). It carries on if this instance stops. 404
/// `TOPIC_NOT_FOUND` for an unknown topic.
// The job commits 1,000 codes per transaction, so memory stays flat whatever the count; the
// lease lets another instance take it over (crate::codes::jobs).
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/codes",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    request_body = GenerateBody,
    responses(
        (status = 202, description = "generation job started", body = GenerationJob),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn generate_codes(
    State(state): State<Arc<CodeState>>,
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

/// Read a code generation job
///
/// Needs an admin token. Answers 200 with how many codes were `generated` of those `requested`
/// and the job's status. 404 `TOPIC_NOT_FOUND` or `NOT_FOUND` (no such job for this topic).
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}/code-jobs/{job_id}",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id"), ("job_id" = i64, Path, description = "generation job id")),
    responses(
        (status = 200, body = GenerationJob),
        (status = 404, description = "TOPIC_NOT_FOUND or NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn generation_job(
    State(state): State<Arc<CodeState>>,
    _admin: Admin,
    ApiPath((raw_topic, job_id)): ApiPath<(String, i64)>,
) -> Result<Json<GenerationJob>, ApiError> {
    let topic = topic_id(&raw_topic)?;
    let job = jobs::find(&state.pool, topic, job_id)
        .await?
        .ok_or(ApiError::JobNotFound)?;
    Ok(Json(job))
}

/// Download a topic's codes as CSV
///
/// Needs an admin token. Every code that is not deleted, one per line, with its status and,
/// once redeemed, who redeemed it and when: `code,status,redeemed_by,redeemed_at,created_at`.
/// Large topics stream; the download starts at once. 404 `TOPIC_NOT_FOUND`.
// Streamed in keyset pages of 10,000 rows from MySQL.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic_id}/codes.csv",
    tag = "codes",
    params(("topic_id" = i64, Path, description = "topic id")),
    responses(
        (status = 200, description = "CSV: code,status,redeemed_by,redeemed_at,created_at", content_type = "text/csv", body = String),
        (status = 404, description = "TOPIC_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn export_codes(
    State(state): State<Arc<CodeState>>,
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
