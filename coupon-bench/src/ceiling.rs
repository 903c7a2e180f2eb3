//! The machine's ceiling for this stack: an axum server on the API's runtime settings
//! (`#[tokio::main]`, one worker per core) whose issue route parses the body with the API's own
//! extractors and answers the API's own 202 body, with no I/O at all.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use coupon_api::extract::{Caller, CouponPath};
use coupon_api::routes::issues::IssueAccepted;
use coupon_core::domain::IssueState;
use uuid::Uuid;

/// Settings of `coupon-bench ceiling-server`.
#[derive(Debug, clap::Args)]
pub struct CeilingArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: SocketAddr,
}

async fn accept(
    CouponPath(_coupon): CouponPath,
    _caller: Caller,
) -> (StatusCode, Json<IssueAccepted>) {
    (
        StatusCode::ACCEPTED,
        Json(IssueAccepted {
            request_id: Uuid::now_v7(),
            status: IssueState::Pending,
        }),
    )
}

/// Serves `POST /api/v1/coupons/{coupon_id}/issues` until the process is killed.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(args: CeilingArgs) -> anyhow::Result<()> {
    let app = Router::new().route("/api/v1/coupons/{coupon_id}/issues", post(accept));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
