//! Checkout holds over HTTP.

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, TestApp};
use crate::redemptions::issued;

async fn call(
    app: &TestApp,
    user: i64,
    issue: i64,
    action: &str,
    body: Value,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/users/{user}/coupons/{issue}/{action}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_held_coupon_is_confirmed_into_a_use_once() {
    let app = spawn_app().await;
    let issue = issued(&app, &coupon_core::testing::open_policy(10), 7).await;

    let held = call(
        &app,
        7,
        issue,
        "reserve",
        json!({"order_id": "o-1", "order_amount": 30_000}),
    )
    .await;
    assert_eq!(held.status(), 200);
    let held: Value = held.json().await.unwrap();
    assert_eq!(held["status"], "RESERVED");
    assert_eq!(held["discount_amount"], 1000);

    let redeem = call(
        &app,
        7,
        issue,
        "redeem",
        json!({"order_id": "o-2", "order_amount": 30_000}),
    )
    .await;
    assert_error(redeem, 409, "COUPON_RESERVED").await;
    let other = call(
        &app,
        7,
        issue,
        "reserve",
        json!({"order_id": "o-2", "order_amount": 30_000}),
    )
    .await;
    assert_error(other, 409, "COUPON_RESERVED").await;

    let confirmed = call(
        &app,
        7,
        issue,
        "reserve/confirm",
        json!({"order_id": "o-1"}),
    )
    .await;
    assert_eq!(confirmed.status(), 200);
    let confirmed: Value = confirmed.json().await.unwrap();
    assert_eq!(confirmed["status"], "USED");
    assert_eq!(confirmed["final_amount"], 29_000);
    let again = call(
        &app,
        7,
        issue,
        "reserve/confirm",
        json!({"order_id": "o-1"}),
    )
    .await;
    assert_error(again, 404, "RESERVATION_NOT_FOUND").await;
}

#[tokio::test]
async fn a_released_hold_makes_the_coupon_usable_again() {
    let app = spawn_app().await;
    let issue = issued(&app, &coupon_core::testing::open_policy(10), 7).await;
    let body = json!({"order_id": "o-1", "order_amount": 30_000, "hold_seconds": 30});
    assert_eq!(call(&app, 7, issue, "reserve", body).await.status(), 200);

    let wrong = call(&app, 7, issue, "reserve/cancel", json!({"order_id": "o-9"})).await;
    assert_error(wrong, 404, "RESERVATION_NOT_FOUND").await;
    let released = call(&app, 7, issue, "reserve/cancel", json!({"order_id": "o-1"})).await;
    assert_eq!(released.status(), 200);

    let redeem = call(
        &app,
        7,
        issue,
        "redeem",
        json!({"order_id": "o-2", "order_amount": 30_000}),
    )
    .await;
    assert_eq!(redeem.status(), 200);
}

#[tokio::test]
async fn hold_lengths_are_bounded() {
    let app = spawn_app().await;
    let issue = issued(&app, &coupon_core::testing::open_policy(10), 7).await;

    for seconds in [0, 86_401] {
        let body = json!({"order_id": "o-1", "order_amount": 30_000, "hold_seconds": seconds});
        assert_error(
            call(&app, 7, issue, "reserve", body).await,
            422,
            "VALIDATION_FAILED",
        )
        .await;
    }
}
