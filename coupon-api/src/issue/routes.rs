//! The FCFS issue path: `POST /api/v1/coupons/{coupon_id}/issues` and the issue status
//! `GET /api/v1/coupons/{coupon_id}/issues/{user_id}`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use coupon_core::domain::{CorrelationId, CouponId, CouponStatus, IssueState, IssueWindow, UserId};
use coupon_core::issue::admission::{AdmitOutcome, StockShards};
use coupon_core::issue::message::IssueMessage;
use coupon_core::telemetry::names;
use serde::Serialize;
use tower_http::request_id::RequestId;
use tracing::Instrument;
use uuid::Uuid;

use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Caller, CouponPath, CouponUserPath, IssueRequestBody};
use crate::issue::breaker::BreakerError;
use std::sync::Arc;

use axum::extract::FromRef;

use crate::issue::sold_out::SoldOut;
use crate::issue::IssuingState;

/// Routes of this module.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<IssuingState>: FromRef<S>,
{
    Router::new()
        .route("/api/v1/coupons/{coupon_id}/issues", post(issue_coupon))
        .route(
            "/api/v1/coupons/{coupon_id}/issues/{user_id}",
            get(issue_status),
        )
}

/// The `outcome` label of `coupon_issue_requests_total` (monitoring/METRICS.md): how an issue
/// request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum IssueOutcome {
    /// 202: admitted and published.
    Issued,
    /// 409 `ALREADY_ISSUED`.
    Duplicate,
    /// 409 `ISSUE_IN_PROGRESS`: the user's first request still waits for the broker.
    InProgress,
    /// 409 `SOLD_OUT`.
    SoldOut,
    /// 409 `ISSUE_WINDOW_CLOSED`.
    WindowClosed,
    /// 409 `COUPON_SUSPENDED`.
    Suspended,
    /// 404 `COUPON_NOT_FOUND`.
    NotFound,
    /// 503 `UNAVAILABLE`.
    Unavailable,
    /// Any other answer (a 4xx of the request's own, a 500).
    Error,
}

impl IssueOutcome {
    /// Every outcome, each pre-registered at 0 so every series exists from the start.
    pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

    /// The outcome of an issue request's answer.
    pub fn of(result: Result<&Uuid, &ApiError>) -> Self {
        match result {
            Ok(_) => Self::Issued,
            Err(ApiError::AlreadyIssued) => Self::Duplicate,
            Err(ApiError::IssueInProgress) => Self::InProgress,
            Err(ApiError::SoldOut) => Self::SoldOut,
            Err(ApiError::IssueWindowClosed(_)) => Self::WindowClosed,
            Err(ApiError::CouponSuspended) => Self::Suspended,
            Err(ApiError::CouponNotFound) => Self::NotFound,
            Err(ApiError::Unavailable(_)) => Self::Unavailable,
            Err(_) => Self::Error,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Registers `coupon_issue_requests_total` for every outcome and the rollback counter at 0.
pub(crate) fn register_metrics() {
    for outcome in IssueOutcome::ALL {
        metrics::counter!(names::ISSUE_REQUESTS, "outcome" => outcome.as_str()).increment(0);
    }
    metrics::counter!(names::ISSUE_ADMISSION_ROLLBACKS).increment(0);
}

/// Body of a `202 Accepted`: `{"request_id": "0193…", "status": "PENDING"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssueAccepted {
    /// Id of this issue request (UUIDv7); stored with the row.
    pub request_id: Uuid,
    /// Always `PENDING`: the row is written by coupon-consumer shortly after.
    pub status: IssueState,
}

/// Ask for a coupon
///
/// Needs a user token (an admin token names the user in `user_id`). First come, first served:
/// the answer is 202 when the coupon is yours. The coupon is then stored within moments; its
/// issue status reads `PENDING` until then and `ISSUED` after, and it appears in your coupons.
///
/// Refusals: 404 `COUPON_NOT_FOUND`; 409 `ALREADY_ISSUED` (you hold it already, or a request of
/// yours got it), `ISSUE_IN_PROGRESS` (another request of yours is still being answered: its
/// answer, or the issue status, tells whether you got it), `SOLD_OUT`, `ISSUE_WINDOW_CLOSED`
/// (outside the issue window) or `COUPON_SUSPENDED`; 429 `RATE_LIMITED` when asking too often (wait `Retry-After` seconds).
/// A 503 means nothing was granted: ask again after `Retry-After`.
// Steps: the policy from the local cache (Redis, then MySQL, behind it); the policy's status
// and issue window; a user this instance already admitted (409 at once); a sold-out mark
// broadcast by the consumer (409 from the instance's copy of the holders, or a read-only
// SISMEMBER, instead of the script); the atomic admission script, which marks the admission
// pending under this request's id; the issue message, published and acknowledged by Kafka
// (202), then the mark cleared. A failed publish, or a lost script answer, undoes the admission
// under that id only (503). Lost Redis
// state (no stock key) is a 503 while it is rebuilt (coupon_core::issue::recovery). Redis calls
// go through the circuit breaker (crate::issue::breaker): while it is open, 503 at once.
#[tracing::instrument(name = "issue_coupon", skip_all, fields(coupon_id = %coupon, user_id = %caller.user_id))]
#[utoipa::path(
    post,
    path = "/api/v1/coupons/{coupon_id}/issues",
    tag = "issues",
    params(("coupon_id" = i64, Path, description = "coupon policy id")),
    request_body(content = Option<IssueRequestBody>, description = "none, {}, or {\"user_id\": n} (must be the token's user; names the user for an admin token)"),
    responses(
        (status = 202, description = "admitted; the issue message is on the broker", body = IssueAccepted),
        (status = 404, description = "COUPON_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "ALREADY_ISSUED, ISSUE_IN_PROGRESS, SOLD_OUT, ISSUE_WINDOW_CLOSED or COUPON_SUSPENDED", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED: over the user or address limit; Retry-After", body = ErrorBody)
    ),
    security(("bearer" = ["user", "admin"]))
)]
async fn issue_coupon(
    State(state): State<Arc<IssuingState>>,
    CouponPath(coupon): CouponPath,
    x_request_id: Option<Extension<RequestId>>,
    caller: Caller,
) -> Result<(StatusCode, Json<IssueAccepted>), ApiError> {
    let user = caller.user_id;
    let correlation_id = crate::http::request_id::of(x_request_id.as_deref());
    let shards = match check(&state, coupon, user).await {
        Ok(shards) => shards,
        Err(rejected) => {
            record_outcome(Err(&rejected));
            return Err(rejected);
        }
    };
    // From the admission on, the request must run to its end even if the client goes away
    // (axum drops a handler's future on disconnect): an admitted user must get either a
    // published message or an undone admission, and is counted either way. A spawned task is
    // not dropped with the handler. It runs in the request's span, so its log lines name the
    // request too.
    let owner = Arc::clone(&state);
    let request_id = owner
        .tasks
        .spawn(
            async move {
                let result = admit_and_publish(state, shards, user, correlation_id).await;
                record_outcome(result.as_ref());
                result
            }
            .in_current_span(),
        )
        .await
        .map_err(|join_err| ApiError::Internal(join_err.into()))??;
    Ok((
        StatusCode::ACCEPTED,
        Json(IssueAccepted {
            request_id,
            status: IssueState::Pending,
        }),
    ))
}

/// Counts one answer in `coupon_issue_requests_total`.
fn record_outcome(result: Result<&Uuid, &ApiError>) {
    let outcome = IssueOutcome::of(result).as_str();
    metrics::counter!(names::ISSUE_REQUESTS, "outcome" => outcome).increment(1);
}

/// The checks before the admission: the policy exists, is active and in its issue window, the
/// user is not one this instance already admitted, and the coupon is not sold out. Returns
/// where the coupon's admission state lives.
async fn check(
    state: &IssuingState,
    coupon: CouponId,
    user: UserId,
) -> Result<StockShards, ApiError> {
    let policy = state.policies.get(coupon).await?;
    let shards = policy.stock_shards();
    if policy.status != CouponStatus::Active {
        return Err(ApiError::CouponSuspended);
    }
    match policy.issue_window(Utc::now()) {
        IssueWindow::NotStarted => {
            return Err(ApiError::IssueWindowClosed(
                "the issue window has not opened yet",
            ))
        }
        IssueWindow::Ended => {
            return Err(ApiError::IssueWindowClosed("the issue window has closed"))
        }
        IssueWindow::Open => {}
    }
    if state.admitted_here.contains(coupon, user) {
        // This instance admitted the user and published the message: a repeat click.
        return Err(ApiError::AlreadyIssued);
    }
    if let Some(sold_out) = state.sold_out.get(coupon).await {
        // MySQL holds the whole stock: no admission can succeed, so a membership check
        // replaces the script: in the local copy of the holders when there is one, else a
        // read-only SISMEMBER. A holder asking again still hears ALREADY_ISSUED.
        let holder = match sold_out {
            SoldOut::WithHolders(holders) => holders.contains(user),
            SoldOut::Marked => {
                state
                    .breaker
                    .call(state.admission.is_admitted(shards, user))
                    .await?
            }
        };
        return Err(match holder {
            true => ApiError::AlreadyIssued,
            false => ApiError::SoldOut,
        });
    }
    Ok(shards)
}

/// The admission script, then the publish (undoing the admission when the publish fails, or
/// when the script's answer was lost). `correlation_id` is the request's `x-request-id`.
async fn admit_and_publish(
    state: Arc<IssuingState>,
    shards: StockShards,
    user: UserId,
    correlation_id: Option<CorrelationId>,
) -> Result<Uuid, ApiError> {
    let coupon = shards.coupon();
    let request_id = Uuid::now_v7();
    let outcome = match state
        .breaker
        .call(state.admission.admit(shards, user, request_id))
        .await
    {
        Ok(outcome) => outcome,
        Err(err) => {
            if let BreakerError::Failed(admit_err) = &err {
                if admit_err.may_have_admitted() {
                    // The script may have run: undo under this request's id, which removes
                    // its admission if it ran and nothing otherwise. In the background, so
                    // the 503 is not held up by a Redis that just failed a call. Best effort:
                    // a script still queued in a stalled Redis may run after the undo;
                    // reconciliation finds such an admission (no message, no row) and
                    // re-publishes it.
                    Arc::clone(&state).tasks.spawn(
                        undo(
                            state,
                            shards,
                            user,
                            request_id,
                            "the admission's answer was lost",
                        )
                        .in_current_span(),
                    );
                }
            }
            return Err(err.into());
        }
    };
    match outcome {
        AdmitOutcome::Admitted => {}
        AdmitOutcome::AlreadyIssued => return Err(ApiError::AlreadyIssued),
        AdmitOutcome::InProgress => return Err(ApiError::IssueInProgress),
        AdmitOutcome::SoldOut => return Err(ApiError::SoldOut),
        AdmitOutcome::NotPrepared => {
            state.rebuilds.start(coupon);
            return Err(ApiError::unavailable(anyhow::anyhow!(
                "coupon {coupon} has no stock bound in Redis; its admission state is being rebuilt"
            )));
        }
    }
    let message = IssueMessage {
        coupon_id: coupon,
        user_id: user,
        request_id,
        admitted_at: Utc::now(),
        stock_shards: shards.shard_count(),
        correlation_id,
    };
    match state.publisher.publish(&message).await {
        Ok(()) => {
            state.admitted_here.note(coupon, user).await;
            // Durable now: the pending mark goes (batched, in the background; see
            // `crate::issue::settle`), so a repeat on any instance hears ALREADY_ISSUED.
            state.settler.settle(shards, user);
            Ok(request_id)
        }
        Err(publish_err) => {
            match undo(state.clone(), shards, user, request_id, "publish failed").await {
                Undo::Removed | Undo::Deferred => {
                    metrics::counter!(names::ISSUE_ADMISSION_ROLLBACKS).increment(1);
                    Err(ApiError::unavailable(
                        anyhow::Error::new(publish_err)
                            .context("publishing the issue message failed"),
                    ))
                }
                Undo::AlreadyDurable => {
                    // The broker wrote the message and the consumer claimed it before the
                    // acknowledgement came (librdkafka reports such a send failed, "possibly
                    // persisted"): the coupon is the user's, and a 503 would be untrue.
                    tracing::warn!(
                        error = %publish_err, %request_id,
                        "the publish reported a failure, but the consumer had already claimed \
                         the message: answering 202"
                    );
                    state.admitted_here.note(coupon, user).await;
                    Ok(request_id)
                }
            }
        }
    }
}

/// What [`undo`] did with an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// Removed: the unit is back in stock, the user holds nothing.
    Removed,
    /// Nothing pending under the request id: the consumer claimed the admission's message
    /// (`claim.lua`), which is durable and becomes the user's row. (Or the admission never
    /// ran; [`admit_and_publish`] only asks after an admission that did.)
    AlreadyDurable,
    /// Redis did not answer the undo: it is retried in the background, and the caller answers
    /// as if it was removed.
    Deferred,
}

/// Undoes `request_id`'s admission of `user` (a no-op unless it is still pending under that
/// id). An undo that fails (a Redis call timed out while a burst of publishes failed at once,
/// as when a broker dies mid-drop) is retried in the background with back-off (100 ms doubling
/// to 2 s, 8 more attempts, about 10 s in all): retrying is safe because the undo removes the
/// admission only while it is pending under this request's id, and it must land before
/// reconciliation (whose grace is twice the producer's message timeout) takes the slot for a
/// lost message and gives the coupon to a user who heard 503. Only when every attempt failed
/// is the slot left to reconciliation, which re-publishes it. Returns what the first attempt
/// did ([`Undo`]).
async fn undo(
    state: Arc<IssuingState>,
    shards: StockShards,
    user: UserId,
    request_id: Uuid,
    why: &'static str,
) -> Undo {
    let coupon = shards.coupon();
    match state.admission.undo(shards, user, request_id).await {
        Ok(true) => return Undo::Removed,
        Ok(false) => return Undo::AlreadyDurable,
        Err(_) => {}
    }
    let owner = Arc::clone(&state);
    owner.tasks.spawn(async move {
        let attempt = || state.admission.undo(shards, user, request_id);
        let retried = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(8)
                    .with_jitter(),
            )
            .notify(|err: &redis::RedisError, pause: Duration| {
                tracing::warn!(%err, ?pause, coupon_id = %coupon, user_id = %user, %request_id, "{why}; undoing the admission failed, retrying");
            })
            .await;
        match retried {
            Err(undo_err) => tracing::error!(
                %undo_err, coupon_id = %coupon, user_id = %user, %request_id,
                "{why} AND the admission could not be undone: the slot is held without a message \
                 until the admission set is reconciled"
            ),
            // Nothing pending under this request by then: after a failed publish, the consumer
            // claimed the message while the undo was retried, so a client told 503 holds the
            // coupon; after a lost script answer, the script may never have run.
            Ok(false) => tracing::warn!(
                coupon_id = %coupon, user_id = %user, %request_id,
                "{why}; the retried undo found nothing pending under this request (after a \
                 failed publish: the consumer claimed its message, and the client told 503 \
                 holds the coupon)"
            ),
            Ok(true) => {}
        }
    }.in_current_span());
    Undo::Deferred
}

/// Body of the issue status: `{"coupon_id": 42, "user_id": 7, "status": "ISSUED"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssueStatusView {
    /// The coupon policy.
    pub coupon_id: CouponId,
    /// The user.
    pub user_id: UserId,
    /// `PENDING` (admitted, not yet persisted) or `ISSUED` (row in MySQL).
    pub status: IssueState,
}

/// Read where a user's issue request stands
///
/// Needs a user token for that user (or an admin token). Answers 200 with `ISSUED` when the
/// coupon is stored, or `PENDING` when it was granted and is being stored. 404
/// `ISSUE_NOT_FOUND` when the user was not granted the coupon; 404 `COUPON_NOT_FOUND` for an
/// unknown coupon.
// `ISSUED` when MySQL has the row, `PENDING` when only the admission set has the user.
#[tracing::instrument(name = "issue_status", skip_all, fields(coupon_id = %coupon, user_id = %user))]
#[utoipa::path(
    get,
    path = "/api/v1/coupons/{coupon_id}/issues/{user_id}",
    tag = "issues",
    params(("coupon_id" = i64, Path, description = "coupon policy id"), ("user_id" = i64, Path, description = "user id; must be the token's subject unless the token is admin")),
    responses(
        (status = 200, body = IssueStatusView),
        (status = 404, description = "COUPON_NOT_FOUND or ISSUE_NOT_FOUND", body = ErrorBody)
    ),
    security(("bearer" = ["user", "admin"]))
)]
async fn issue_status(
    State(state): State<Arc<IssuingState>>,
    CouponUserPath(coupon, user): CouponUserPath,
) -> Result<Json<IssueStatusView>, ApiError> {
    let policy = state.policies.get(coupon).await?;
    let status = if coupon_core::issue::persistence::issue_exists(&state.pool, coupon, user).await?
    {
        IssueState::Issued
    } else if state
        .admission
        .is_admitted(policy.stock_shards(), user)
        .await?
    {
        IssueState::Pending
    } else {
        return Err(ApiError::IssueNotFound);
    };
    Ok(Json(IssueStatusView {
        coupon_id: coupon,
        user_id: user,
        status,
    }))
}

/// The OpenAPI description of this module's routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(issue_coupon, issue_status))]
pub(crate) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_has_a_pre_registered_outcome_with_its_own_label() {
        let id = Uuid::nil();
        let answers = [
            Ok(&id),
            Err(&ApiError::AlreadyIssued),
            Err(&ApiError::IssueInProgress),
            Err(&ApiError::SoldOut),
            Err(&ApiError::CouponSuspended),
            Err(&ApiError::CouponNotFound),
            Err(&ApiError::RouteNotFound),
        ];
        for answer in answers {
            let outcome = IssueOutcome::of(answer);
            assert!(
                IssueOutcome::ALL.contains(&outcome),
                "{outcome:?} is not registered"
            );
        }
        let mut labels: Vec<&str> = IssueOutcome::ALL.iter().map(|o| o.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), IssueOutcome::ALL.len());
    }
}
