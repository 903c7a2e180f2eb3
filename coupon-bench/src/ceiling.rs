//! The machine's ceiling for this stack: an axum server on the API's runtime settings
//! (`#[tokio::main]`, one worker per core) and the API's own accept loop
//! ([`coupon_api::serve::serve`]), whose issue route checks the bearer token and parses the
//! body with the API's own extractors and answers the API's own 202 body, with no I/O at all.
//!
//! The extractors find the token verifier where coupon-api's [`coupon_api::startup::router`]
//! puts it, an [`Authenticator`] request extension; without it every request is a 500. The
//! ceiling leaves out the API's other layers (rate limits, idempotency, request metrics): it
//! measures what answering an issue request costs before any of the API's own work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use coupon_api::http::auth::Authenticator;
use coupon_api::http::extract::{Caller, CouponPath};
use coupon_api::issue::routes::IssueAccepted;
use coupon_core::auth::{AuthConfig, TokenVerifier};
use coupon_core::domain::IssueState;
use coupon_core::shutdown::shutdown_signal;
use uuid::Uuid;

/// Settings of `coupon-bench ceiling-server`.
#[derive(Debug, clap::Args)]
pub struct CeilingArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: SocketAddr,
    /// Longest time (ms) a client may take to send a request's headers: coupon-api's
    /// `HEADER_READ_TIMEOUT_MS` default.
    #[arg(long, default_value_t = 5_000)]
    header_read_timeout_ms: u64,
    /// How tokens are checked: the same settings (and environment variables) as coupon-api.
    #[command(flatten)]
    auth: AuthConfig,
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

/// The ceiling's router: `POST /api/v1/coupons/{coupon_id}/issues`, tokens checked by
/// `verifier` as coupon-api checks them.
fn router(verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/coupons/{coupon_id}/issues", post(accept))
        .layer(Extension(Authenticator(verifier)))
}

/// Serves the ceiling's router until SIGTERM or Ctrl-C.
///
/// # Errors
/// The token settings are invalid or the address cannot be bound.
pub async fn serve(args: CeilingArgs) -> anyhow::Result<()> {
    let verifier =
        Arc::new(TokenVerifier::from_config(&args.auth).context("configuring bearer tokens")?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    coupon_api::serve::serve(
        listener,
        router(verifier),
        Duration::from_millis(args.header_read_timeout_ms),
        Duration::from_secs(1),
        shutdown_signal(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use coupon_core::auth::{Role, TokenSigner};

    use super::*;

    const SECRET: &str = "ceiling-test-secret-of-at-least-32-bytes";

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CeilingArgs,
    }

    /// A ceiling server on a free port, as `coupon-bench issue` starts it; its issue URL.
    async fn spawn_ceiling() -> String {
        let Cli { args } = Cli::parse_from(["ceiling", "--jwt-secret", SECRET]);
        let verifier = Arc::new(TokenVerifier::from_config(&args.auth).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(coupon_api::serve::serve(
            listener,
            router(verifier),
            Duration::from_secs(5),
            Duration::from_secs(1),
            std::future::pending(),
        ));
        format!("http://{addr}/api/v1/coupons/1/issues")
    }

    #[tokio::test]
    async fn the_ceiling_accepts_an_issue_request_with_a_valid_token() {
        let url = spawn_ceiling().await;
        let token = TokenSigner::hs256(SECRET)
            .mint("bench", Role::Admin, 60)
            .unwrap();
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "user_id": 7 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn the_ceiling_refuses_an_issue_request_without_a_token() {
        let url = spawn_ceiling().await;
        let response = reqwest::Client::new()
            .post(&url)
            .json(&serde_json::json!({ "user_id": 7 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
}
