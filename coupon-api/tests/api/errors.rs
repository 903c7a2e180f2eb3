//! Malformed input gets a JSON error with a stable code and a 4xx status, never a 500.

use crate::helpers::{assert_error, spawn_app, TestApp};

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
        .state
        .admission
        .admitted_count(coupon_core::domain::CouponId::parse(id).unwrap())
        .await;
    assert_eq!(admitted.unwrap(), 0, "no malformed request admitted anyone");
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
