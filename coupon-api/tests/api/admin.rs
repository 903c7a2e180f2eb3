//! Policy administration, and its reach to every API instance through the invalidation broadcast.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

async fn post(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.post(app.url(path)).send().await.unwrap()
}

async fn patch(app: &TestApp, id: i64, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/api/v1/coupons/{id}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Polls `app` with issue requests from fresh users until one answers `status` `code`; fails
/// after one second.
async fn rejected_within_a_second(app: &TestApp, id: i64, status: u16, code: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut user = 1_000;
    loop {
        user += 1;
        let response = app.issue(id, user).await;
        if response.status().as_u16() == status {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], code);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} after 1 s",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_policy_can_be_renamed_and_its_window_extended() {
    let app = spawn_app().await;
    let id = app.open_coupon(10).await;
    let ends = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();

    let response = patch(
        &app,
        id,
        json!({"title": "Renamed", "issue_ends_at": ends, "valid_days": 3}),
    )
    .await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["title"], "Renamed");
    assert_eq!(body["valid_days"], 3);
    assert_eq!(body["total_quantity"], 10, "the stock is untouched");
}

#[tokio::test]
async fn updates_that_break_a_rule_are_refused() {
    let app = spawn_app().await;
    let id = app.open_coupon(10).await;
    let before = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();

    assert_error(
        patch(&app, id, json!({"issue_ends_at": before})).await,
        422,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        patch(&app, id, json!({"total_quantity": 11})).await,
        422,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        patch(&app, id, json!({"valid_days": 0})).await,
        422,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        patch(&app, 99_999, json!({"title": "x"})).await,
        404,
        "COUPON_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn a_suspended_policy_issues_nothing_until_resumed() {
    let app = spawn_app().await;
    let id = app.open_coupon(10).await;

    let suspended: Value = post(&app, &format!("/api/v1/coupons/{id}/suspend"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(suspended["status"], "SUSPENDED");
    rejected_within_a_second(&app, id, 409, "COUPON_SUSPENDED").await;

    assert_eq!(
        post(&app, &format!("/api/v1/coupons/{id}/resume"))
            .await
            .status(),
        200
    );
    crate::helpers::eventually_status(&app, id, 202).await;
}

#[tokio::test]
async fn suspending_on_one_instance_reaches_the_other_within_a_second() {
    let a = spawn_app().await;
    let b = spawn_app_with(|config| config.stores = a.stores.clone()).await;
    let id = a.open_coupon(100).await;
    assert_eq!(
        b.issue(id, 1).await.status(),
        202,
        "b has the policy cached now"
    );

    assert_eq!(
        post(&a, &format!("/api/v1/coupons/{id}/suspend"))
            .await
            .status(),
        200
    );

    rejected_within_a_second(&b, id, 409, "COUPON_SUSPENDED").await;
}

#[tokio::test]
async fn deleting_on_one_instance_reaches_the_other_within_a_second() {
    let a = spawn_app().await;
    let b = spawn_app_with(|config| config.stores = a.stores.clone()).await;
    let id = a.open_coupon(100).await;
    assert_eq!(b.issue(id, 1).await.status(), 202);

    let deleted = a
        .client
        .delete(a.url(&format!("/api/v1/coupons/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    rejected_within_a_second(&b, id, 404, "COUPON_NOT_FOUND").await;
    let read = b
        .client
        .get(b.url(&format!("/api/v1/coupons/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(read, 404, "COUPON_NOT_FOUND").await;
    let again = a
        .client
        .delete(a.url(&format!("/api/v1/coupons/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(again, 404, "COUPON_NOT_FOUND").await;
}
