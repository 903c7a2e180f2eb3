//! One request id from HTTP to MySQL (issue 17 item 2): the `x-request-id` a client sends, or
//! the one coupon-api makes up, comes back on the answer, names the request's log lines, rides
//! in the issue message, is logged by coupon-consumer with the row it persists, and is kept in
//! `coupon_issues.correlation_id`. Both services run in this process, on the real stores, and
//! their log lines are captured from the global subscriber.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

mod common;

use common::Stack;
use coupon_core::auth::TokenSigner;
use coupon_core::domain::CouponId;
use coupon_core::issue::admission::StockShards;
use coupon_core::testing;
use tracing_subscriber::fmt::MakeWriter;

/// Every log line written in this test binary, as plain text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// Installs the capturing subscriber once for the binary: INFO and up, no colours.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(captured.clone())
            .init();
        captured
    })
}

/// What one issue request was answered: the `x-request-id` header, the status and the body's
/// (admission) `request_id`.
struct Answer {
    x_request_id: String,
    status: u16,
    admission_id: String,
}

async fn ask(
    client: &reqwest::Client,
    base: &str,
    coupon: CouponId,
    user: i64,
    sent: Option<&str>,
) -> Answer {
    let mut request = client
        .post(format!("{base}/api/v1/coupons/{coupon}/issues"))
        .bearer_auth(testing::user_token(user));
    if let Some(id) = sent {
        request = request.header("x-request-id", id);
    }
    let response = request.send().await.unwrap();
    let x_request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    Answer {
        x_request_id,
        status,
        admission_id: body["request_id"].as_str().unwrap_or_default().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_request_id_leads_from_the_http_answer_to_the_persisted_row() {
    let logs = logs();
    let stack = Stack::start(false, "request-id").await;
    let client = reqwest::Client::new();
    let signer = TokenSigner::hs256(testing::JWT_SECRET);
    let coupon = coupon_demo::create_coupon(&client, &stack.base, &signer, 10, 1)
        .await
        .unwrap();

    // Arrange three ways in: a client's own id, none, and one too long to keep.
    let sent = "checkout-7f3a:retry=1";
    let too_long = "x".repeat(129);
    let kept = ask(&client, &stack.base, coupon, 1, Some(sent)).await;
    let made_up = ask(&client, &stack.base, coupon, 2, None).await;
    let replaced = ask(&client, &stack.base, coupon, 3, Some(&too_long)).await;

    // The answers: the client's id comes back; the others are fresh UUIDs.
    for answer in [&kept, &made_up, &replaced] {
        assert_eq!(answer.status, 202);
    }
    assert_eq!(kept.x_request_id, sent);
    for answer in [&made_up, &replaced] {
        assert!(
            uuid::Uuid::parse_str(&answer.x_request_id).is_ok(),
            "a generated id is a UUID: {}",
            answer.x_request_id
        );
    }
    assert_ne!(made_up.x_request_id, replaced.x_request_id);

    // The rows: each keeps the id its answer carried, beside the admission's own id.
    coupon_demo::wait_until_drained(&stack.state.pool, coupon, 3, Duration::from_secs(60))
        .await
        .unwrap();
    let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "SELECT user_id, request_id, correlation_id FROM coupon_issues \
         WHERE coupon_id = ? ORDER BY user_id",
    )
    .bind(coupon.get())
    .fetch_all(&stack.state.pool)
    .await
    .unwrap();
    let expected: Vec<(i64, String, Option<String>)> = [&kept, &made_up, &replaced]
        .iter()
        .zip(1..)
        .map(|(answer, user)| {
            (
                user,
                answer.admission_id.clone(),
                Some(answer.x_request_id.clone()),
            )
        })
        .collect();
    assert_eq!(rows, expected);

    // The logs: coupon-consumer's line for the row names it.
    let persisted = testing::eventually("the consumer's line", Duration::from_secs(10), || {
        let lines = logs.lines_with(&format!("correlation_id={sent}"));
        async move { (!lines.is_empty()).then_some(lines) }
    })
    .await;
    assert!(
        persisted[0].contains("issue persisted")
            && persisted[0].contains(&format!("request_id={}", kept.admission_id)),
        "{persisted:?}"
    );

    // And coupon-api's: a request that fails logs from inside the span `request`, which names
    // its id. Losing the coupon's Redis state makes the next request a 503 (and starts a
    // rebuild).
    let mut redis = stack
        .stores
        .connect_redis(Duration::from_secs(5))
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(
            stack
                .state
                .issue
                .admission
                .keys()
                .stock(StockShards::single(coupon).all().next().unwrap()),
        )
        .query_async(&mut redis)
        .await
        .unwrap();
    let failed = ask(&client, &stack.base, coupon, 4, Some("lost-state-1")).await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.x_request_id, "lost-state-1");
    let refused = logs.lines_with("request_id=lost-state-1");
    assert!(
        refused
            .iter()
            .any(|line| line.contains("request{") && line.contains("request failed")),
        "a log line inside the failed request names its id: {refused:?}"
    );
    stack.stop().await;
}
