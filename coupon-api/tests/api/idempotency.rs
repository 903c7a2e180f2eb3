//! `Idempotency-Key` on state-changing endpoints.

use std::collections::BTreeSet;
use std::time::Duration;

use coupon_core::testing;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

async fn create_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/coupons"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// An app whose rate limit lets one user send one request per second (no address limit).
async fn one_request_per_second() -> TestApp {
    spawn_app_with(|c| {
        c.rate_limits.rate_limits = true;
        c.rate_limits.rate_limit_user_per_sec = 1;
        c.rate_limits.rate_limit_user_burst = 1;
        c.rate_limits.rate_limit_ip_per_sec = 0;
    })
    .await
}

async fn key_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
        .fetch_one(&app.state.pool)
        .await
        .unwrap()
}

/// From now on, every row ever inserted into `idempotency_keys` is also counted in a table of
/// its own (a trigger), so a claim written and deleted again is still seen.
async fn count_claims(app: &TestApp) {
    sqlx::raw_sql(
        "CREATE TABLE claims_written (n INT NOT NULL); \
         CREATE TRIGGER count_claims AFTER INSERT ON idempotency_keys \
         FOR EACH ROW INSERT INTO claims_written VALUES (1)",
    )
    .execute(&app.state.pool)
    .await
    .unwrap();
}

async fn claims_written(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM claims_written")
        .fetch_one(&app.state.pool)
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

#[tokio::test]
async fn a_key_with_a_bad_token_writes_nothing() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;
    count_claims(&app).await;

    for path in [
        "/api/v1/coupons".to_owned(),
        format!("/api/v1/coupons/{coupon}/issues"),
    ] {
        let refused = app
            .anonymous
            .post(app.url(&path))
            .bearer_auth("not-a-token")
            .header("Idempotency-Key", "bad-token")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_error(refused, 401, "UNAUTHORIZED").await;
    }

    assert_eq!(claims_written(&app).await, 0);
    assert_eq!(key_rows(&app).await, 0);
}

#[tokio::test]
async fn a_throttled_request_writes_no_key_and_its_retry_acts_once_allowed() {
    let app = one_request_per_second().await;
    let coupon = app.open_coupon(5).await;
    count_claims(&app).await;
    let issue_with_key = || {
        app.client
            .post(app.url(&format!("/api/v1/coupons/{coupon}/issues")))
            .bearer_auth(testing::user_token(7))
            .header("Idempotency-Key", "issue-after-429")
            .send()
    };
    // User 7's one token, on a coupon that does not exist (answered at once, nothing published).
    assert_eq!(app.issue(coupon + 1_000, 7).await.status(), 404);

    let throttled = issue_with_key().await.unwrap();
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_error(throttled, 429, "RATE_LIMITED").await;
    assert_eq!(
        claims_written(&app).await,
        0,
        "a throttled request writes no key"
    );
    assert_eq!(key_rows(&app).await, 0);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let allowed = issue_with_key().await.unwrap();

    assert_eq!(allowed.status(), 202, "acted, not the 429 replayed");
    assert!(allowed.headers().get("idempotent-replayed").is_none());
    let coupon = coupon_core::domain::CouponId::parse(coupon).unwrap();
    assert_eq!(app.admitted_count(coupon).await, 1);
    assert_eq!(key_rows(&app).await, 1, "the 202 is stored for replay");
}

#[tokio::test]
async fn a_request_with_a_key_counts_once_against_the_rate_limit() {
    let app = spawn_app_with(|c| {
        c.rate_limits.rate_limits = true;
        c.rate_limits.rate_limit_user_per_sec = 1;
        c.rate_limits.rate_limit_user_burst = 2;
        c.rate_limits.rate_limit_ip_per_sec = 0;
    })
    .await;

    // Coupons that do not exist: answered at once, so the bucket has no time to refill.
    for (coupon, key) in [(1_001, "first"), (1_002, "second")] {
        let response = app
            .client
            .post(app.url(&format!("/api/v1/coupons/{coupon}/issues")))
            .bearer_auth(testing::user_token(7))
            .header("Idempotency-Key", key)
            .send()
            .await
            .unwrap();
        assert_error(response, 404, "COUPON_NOT_FOUND").await;
    }
}

#[tokio::test]
async fn a_forbidden_request_stores_no_answer_and_its_repeat_is_answered_afresh() {
    let app = spawn_app().await;
    let body = serde_json::to_value(testing::open_policy(10)).unwrap();
    let create_as_user = || {
        app.client
            .post(app.url("/api/v1/coupons"))
            .bearer_auth(testing::user_token(7))
            .header("Idempotency-Key", "create-as-user")
            .json(&body)
            .send()
    };

    assert_error(create_as_user().await.unwrap(), 403, "FORBIDDEN").await;
    assert_eq!(key_rows(&app).await, 0, "the claim is released");

    let repeat = create_as_user().await.unwrap();
    assert!(
        repeat.headers().get("idempotent-replayed").is_none(),
        "the 403 is not replayed"
    );
    assert_error(repeat, 403, "FORBIDDEN").await;
    assert_eq!(policy_rows(&app).await, 0);
}

/// The role check made before a key is claimed (`idempotency::may_write`) agrees with every
/// handler: each state-changing operation of the OpenAPI document is called by a user token
/// and by a service token, once without a key (the handler decides) and once with a fresh key
/// (the middleware decides first), on ids that name nothing; the two answers are 403 together
/// or not at all, and a 403 before the claim writes no key.
#[tokio::test]
async fn the_role_check_before_a_claim_agrees_with_every_handler() {
    let app = spawn_app().await;
    count_claims(&app).await;
    let doc: Value = app
        .anonymous
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let mut refused_early = 0;
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = app.url(&fill_parameters(path));
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            if item.get(method.to_lowercase()).is_none() {
                continue;
            }
            operations.insert(format!("{method} {path}"));
            for (caller, token) in [
                ("user", testing::user_token(7)),
                ("service", testing::service_token()),
            ] {
                let call = |key: Option<String>| {
                    let mut request = app
                        .anonymous
                        .request(method.parse().unwrap(), &url)
                        .bearer_auth(&token);
                    if let Some(key) = key {
                        request = request.header("Idempotency-Key", key);
                    }
                    request.send()
                };
                let handler = call(None).await.unwrap().status().as_u16();
                let before = claims_written(&app).await;
                let early = call(Some(format!("{caller}-{method}-{path}")))
                    .await
                    .unwrap();
                let early = early.status().as_u16();
                assert_eq!(
                    handler == 403,
                    early == 403,
                    "{caller} {method} {path}: {handler} without a key, {early} with one"
                );
                if early == 403 {
                    refused_early += 1;
                    assert_eq!(
                        claims_written(&app).await,
                        before,
                        "{caller} {method} {path} wrote a key"
                    );
                }
            }
        }
    }
    assert!(operations.len() > 10, "{operations:?}");
    assert!(
        refused_early > operations.len(),
        "most operations refuse one of the two callers"
    );
}

/// `path` with every `{parameter}` replaced by `1`.
fn fill_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}
