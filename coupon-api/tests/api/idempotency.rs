//! `Idempotency-Key` on state-changing endpoints.

use coupon_core::testing;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, TestApp};

async fn create_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/coupons"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn policy_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM coupons")
        .fetch_one(&app.state.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_repeat_with_the_same_key_returns_the_first_response_without_acting() {
    let app = spawn_app().await;
    let body = serde_json::to_value(testing::open_policy(10)).unwrap();

    let first = create_with_key(&app, "create-1", &body).await;
    let repeat = create_with_key(&app, "create-1", &body).await;

    assert_eq!(first.status(), 201);
    assert_eq!(repeat.status(), 201);
    assert_eq!(repeat.headers()["idempotent-replayed"], "true");
    let first: Value = first.json().await.unwrap();
    let repeat: Value = repeat.json().await.unwrap();
    assert_eq!(first, repeat);
    assert_eq!(policy_rows(&app).await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_idempotency_key_reused() {
    let app = spawn_app().await;
    let body = serde_json::to_value(testing::open_policy(10)).unwrap();
    let mut other = body.clone();
    other["total_quantity"] = json!(11);
    assert_eq!(create_with_key(&app, "create-2", &body).await.status(), 201);

    assert_error(
        create_with_key(&app, "create-2", &other).await,
        422,
        "IDEMPOTENCY_KEY_REUSED",
    )
    .await;
    assert_eq!(policy_rows(&app).await, 1);
}

#[tokio::test]
async fn concurrent_repeats_of_one_key_act_once() {
    let app = spawn_app().await;
    let body = serde_json::to_value(testing::open_policy(10)).unwrap();

    let attempts = (0..20).map(|_| async {
        let response = create_with_key(&app, "create-3", &body).await;
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    });
    let answers = futures::future::join_all(attempts).await;

    assert_eq!(policy_rows(&app).await, 1);
    let first_id = &answers[0].1["id"];
    for (status, body) in &answers {
        assert_eq!(*status, 201, "{body}");
        assert_eq!(&body["id"], first_id);
    }
}

#[tokio::test]
async fn an_issue_repeated_with_its_key_gets_the_same_request_id() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;
    let send = || {
        app.client
            .post(app.url(&format!("/api/v1/coupons/{coupon}/issues")))
            .header("Idempotency-Key", "issue-7")
            .json(&json!({"user_id": 7}))
            .send()
    };

    let first: Value = send().await.unwrap().json().await.unwrap();
    let repeat = send().await.unwrap();

    assert_eq!(
        repeat.status(),
        202,
        "not ALREADY_ISSUED: the first answer is replayed"
    );
    assert_eq!(
        repeat.json::<Value>().await.unwrap()["request_id"],
        first["request_id"]
    );
}

#[tokio::test]
async fn an_expired_key_acts_again() {
    let app = spawn_app().await;
    let body = serde_json::to_value(testing::open_policy(10)).unwrap();
    assert_eq!(create_with_key(&app, "create-4", &body).await.status(), 201);
    sqlx::query("UPDATE idempotency_keys SET expires_at = NOW(6) - INTERVAL 1 SECOND")
        .execute(&app.state.pool)
        .await
        .unwrap();

    let again = create_with_key(&app, "create-4", &body).await;

    assert_eq!(again.status(), 201);
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_eq!(policy_rows(&app).await, 2);
}

#[tokio::test]
async fn a_malformed_key_is_validation_failed() {
    let app = spawn_app().await;
    let body = serde_json::to_value(testing::open_policy(10)).unwrap();

    assert_error(
        create_with_key(&app, &"k".repeat(256), &body).await,
        400,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(policy_rows(&app).await, 0);
}
