//! Malformed input gets a JSON error with a stable code and a 4xx status, never a 500.

use std::time::Duration;

use coupon_core::issue::admission::StockShards;
use coupon_core::testing;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn malformed_issue_bodies_are_validation_failed() {
    let app = spawn_app().await;
    let id = app.open_coupon(5).await;
    let path = format!("/api/v1/coupons/{id}/issues");
    let json = Some("application/json");

    let cases: [(Option<&str>, String, u16); 9] = [
        (json, "{\"user_id\": ".into(), 400),
        (json, "not json".into(), 400),
        (None, "{\"user_id\": 1}".into(), 400),
        (json, "{}".into(), 422),
        (json, "{\"user_id\": \"7\"}".into(), 422),
        (json, "{\"user_id\": 1.5}".into(), 422),
        (json, "{\"user_id\": 0}".into(), 422),
        (json, "{\"user_id\": -4}".into(), 422),
        (
            json,
            format!("{{\"user_id\": 1, \"pad\": \"{}\"}}", "x".repeat(64 * 1024)),
            400,
        ),
    ];
    for (content_type, body, status) in cases {
        let shown = body.chars().take(40).collect::<String>();
        let response = post_raw(&app, &path, content_type, body).await;
        assert_eq!(response.status().as_u16(), status, "body {shown:?}");
        assert_error(response, status, "VALIDATION_FAILED").await;
    }
    let admitted = app
        .admitted_count(coupon_core::domain::CouponId::parse(id).unwrap())
        .await;
    assert_eq!(admitted, 0, "no malformed request admitted anyone");
}

#[tokio::test]
async fn bad_path_ids_are_validation_failed() {
    let app = spawn_app().await;

    assert_error(
        app.client
            .get(app.url("/api/v1/coupons/abc"))
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        app.client
            .get(app.url("/api/v1/coupons/0"))
            .send()
            .await
            .unwrap(),
        422,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(app.issue(-1, 1).await, 422, "VALIDATION_FAILED").await;
    let overflow = app.url("/api/v1/coupons/1/issues/99999999999999999999");
    assert_error(
        app.client.get(overflow).send().await.unwrap(),
        400,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(app.issue_status(1, 0).await, 422, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/api/v2/everything"))
        .send()
        .await
        .unwrap();

    assert_error(response, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn unknown_fields_huge_numbers_and_non_utf8_bodies_are_refused_as_json() {
    let app = spawn_app().await;
    let id = app.open_coupon(5).await;
    let issue = format!("/api/v1/coupons/{id}/issues");
    let json = Some("application/json");
    let cases: [(&str, String, u16); 5] = [
        (issue.as_str(), r#"{"user_id": 1, "admin": true}"#.into(), 422),
        (issue.as_str(), r#"{"user_id": 99999999999999999999999999}"#.into(), 422),
        (issue.as_str(), r#"{"user_id": 1e400}"#.into(), 400),
        (
            "/api/v1/coupons",
            r#"{"title":"t","coupon_type":"FIRST_COME_FIRST_SERVED","total_quantity":1e30,"discount_type":"FIXED","discount_value":1,"issue_starts_at":"2026-01-01T00:00:00Z","issue_ends_at":"2027-01-01T00:00:00Z","valid_days":7}"#.into(),
            422,
        ),
        (
            "/api/v1/coupons",
            r#"{"title":"t","coupon_type":"FIRST_COME_FIRST_SERVED","total_quantity":18446744073709551616,"discount_type":"FIXED","discount_value":1,"issue_starts_at":"2026-01-01T00:00:00Z","issue_ends_at":"2027-01-01T00:00:00Z","valid_days":7}"#.into(),
            422,
        ),
    ];
    for (path, body, status) in cases {
        let shown = body.chars().take(60).collect::<String>();
        let response = post_raw(&app, path, json, body).await;
        assert_eq!(response.status().as_u16(), status, "{path} {shown}");
        assert_error(response, status, "VALIDATION_FAILED").await;
    }

    let not_utf8 = app
        .client
        .post(app.url(&issue))
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    assert_error(not_utf8, 400, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn codes_with_path_tricks_are_invalid_codes_not_files() {
    let app = spawn_app().await;

    for code in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc",
        "ABCD%00EFGH23456789",
        "ABCDEFGH2345678%C3%A9",
    ] {
        let redeem = app
            .client
            .post(app.url(&format!("/api/v1/codes/{code}/redeem")))
            .header("content-type", "application/json")
            .body(r#"{"user_id": 7}"#)
            .send()
            .await
            .unwrap();
        assert_error(redeem, 400, "INVALID_CODE").await;
        let archived = app
            .client
            .get(app.url(&format!("/api/v1/archive/codes/{code}")))
            .send()
            .await
            .unwrap();
        assert_error(archived, 400, "INVALID_CODE").await;
    }
}

/// Raw HTTP/1.1 over TCP, for clients no HTTP library would imitate.
async fn raw_client(app: &TestApp) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| c.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = raw_client(&app).await;

    stream
        .write_all(b"POST /api/v1/coupons/1/issues HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buffer),
    )
    .await;

    assert!(read.is_ok(), "the connection was still open after 10 s");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| c.body_read_timeout = Duration::from_millis(300)).await;
    let id = app.open_coupon(5).await;
    let mut stream = raw_client(&app).await;

    let head = format!(
        "POST /api/v1/coupons/{id}/issues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"user_id\"",
        coupon_core::testing::admin_token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buffer = vec![0; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buffer))
        .await
        .expect("an answer before the client sent the rest")
        .unwrap();
    let answer = String::from_utf8_lossy(&buffer[..n]);

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"REQUEST_TIMEOUT\""), "{answer}");
}

#[tokio::test]
async fn an_unsupported_method_and_a_mistyped_path_segment_are_json_errors() {
    // Both found by the schemathesis run (scripts/fuzz.sh): axum's own answers had no JSON body.
    let app = spawn_app().await;

    for method in ["PUT", "TRACE"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), app.url("/api/v1/coupons"))
            .send()
            .await
            .unwrap();
        assert_error(response, 405, "METHOD_NOT_ALLOWED").await;
    }
    let job = app
        .client
        .get(app.url("/api/v1/topics/1/code-jobs/not-a-number"))
        .send()
        .await
        .unwrap();
    assert_error(job, 400, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn policy_times_outside_mysqls_datetime_range_are_422_not_500() {
    // The body the schemathesis run found answered 500: MySQL cannot store the year 0199.
    let app = spawn_app().await;
    let found = r#"{"issue_ends_at": "2026-11-22T02:40:26.382774Z", "title": "t", "valid_until": "1357-07-18T22:51:59-23:26", "issue_starts_at": "0199-03-06T18:42:48-06:26", "min_order_amount": 0, "discount_value": 3, "coupon_type": "UNLIMITED", "discount_type": "PERCENTAGE"}"#;
    let long = r#"{"title": "t", "coupon_type": "UNLIMITED", "discount_type": "FIXED", "discount_value": 1, "issue_starts_at": "2026-01-01T00:00:00Z", "issue_ends_at": "2027-01-01T00:00:00Z", "valid_days": 2000000000}"#;

    for body in [found, long] {
        let response = post_raw(
            &app,
            "/api/v1/coupons",
            Some("application/json"),
            body.into(),
        )
        .await;
        assert_error(response, 422, "VALIDATION_FAILED").await;
    }
    let id = app.open_coupon(5).await;
    let patch = app
        .client
        .patch(app.url(&format!("/api/v1/coupons/{id}")))
        .json(&serde_json::json!({ "valid_until": "0999-12-31T23:59:59Z" }))
        .send()
        .await
        .unwrap();
    assert_error(patch, 422, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn policy_times_outside_1970_to_2038_are_stored_and_returned() {
    // The schemathesis run found these answered 500 (1969) or lost the value (2100): MySQL's
    // TIMESTAMP range, not the DATETIME columns' own.
    let app = spawn_app().await;
    let body = r#"{"title": "t", "coupon_type": "UNLIMITED", "discount_type": "FIXED", "discount_value": 1, "issue_starts_at": "1969-07-20T20:17:00Z", "issue_ends_at": "2037-01-01T00:00:00Z", "valid_until": "2100-12-31T23:59:59Z"}"#;
    let created = post_raw(
        &app,
        "/api/v1/coupons",
        Some("application/json"),
        body.into(),
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    assert_eq!(created["issue_starts_at"], "1969-07-20T20:17:00Z");
    assert_eq!(created["valid_until"], "2100-12-31T23:59:59Z");

    let id = created["id"].as_i64().unwrap();
    let patch = app
        .client
        .patch(app.url(&format!("/api/v1/coupons/{id}")))
        .json(&serde_json::json!({ "issue_ends_at": "2040-01-01T00:00:00Z" }))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    let read: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/coupons/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["issue_ends_at"], "2040-01-01T00:00:00Z");
    assert_eq!(read["valid_until"], "2100-12-31T23:59:59Z");
}

#[tokio::test]
async fn a_json_null_issue_body_is_no_body() {
    // The document allows `null` for the optional body; it acts as no body at all.
    let app = spawn_app().await;
    let id = app.open_coupon(5).await;
    let response = app
        .anonymous
        .post(app.url(&format!("/api/v1/coupons/{id}/issues")))
        .bearer_auth(testing::user_token(7))
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let admitted = app
        .state
        .issue
        .admission
        .is_admitted(
            StockShards::single(coupon_core::domain::CouponId::parse(id).unwrap()),
            coupon_core::domain::UserId::parse(7).unwrap(),
        )
        .await;
    assert!(admitted.unwrap());
}

#[tokio::test]
async fn a_key_repeated_in_any_json_body_is_refused_not_read_as_its_last_value() {
    // `{"user_id": 7, "user_id": 8}` under an admin token once issued for user 8: a front end
    // reading the first value checks a different request than the one acted on.
    let app = spawn_app().await;
    let id = app.open_coupon(5).await;
    let issue = format!("/api/v1/coupons/{id}/issues");
    let policy = r#"{"title":"t","coupon_type":"FIRST_COME_FIRST_SERVED","total_quantity":5,"discount_type":"FIXED","discount_value":1,"issue_starts_at":"2026-01-01T00:00:00Z","issue_ends_at":"2027-01-01T00:00:00Z","valid_days":7,"total_quantity":500}"#;
    let cases: [(&str, &str); 4] = [
        (&issue, r#"{"user_id": 7, "user_id": 8}"#),
        (&issue, r#"{"user_id": 7, "user_\u0069d": 8}"#),
        ("/api/v1/coupons", policy),
        (&issue, r#"[{"user_id": 7}, {"a": {"b": 1, "b": 2}}]"#),
    ];
    for (path, body) in cases {
        let response = post_raw(&app, path, Some("application/json"), body.into()).await;
        let message = assert_error(response, 422, "VALIDATION_FAILED").await;
        assert!(
            message.contains("twice"),
            "{path} {body}: the message names the repeated key: {message}"
        );
    }
    let coupon = coupon_core::domain::CouponId::parse(id).unwrap();
    let admitted = app.admitted_count(coupon).await;
    assert_eq!(admitted, 0, "nobody was admitted by a repeated key");
    let policies: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert_eq!(policies, 1, "no policy was created by a repeated key");

    // The same body without the repeat is taken.
    let ok = post_raw(
        &app,
        &issue,
        Some("application/json"),
        r#"{"user_id": 8}"#.into(),
    )
    .await;
    assert_eq!(ok.status(), 202);
}
