use chrono::Utc;
use coupon_core::domain::{DiscountType, NewCouponPolicy};
use coupon_core::testing;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, TestApp};

/// Creates `policy`, issues it to `user` as coupon-consumer would, returns the issue id.
pub async fn issued(app: &TestApp, policy: &NewCouponPolicy, user: i64) -> i64 {
    let coupon = app.create_policy(policy).await["id"].as_i64().unwrap();
    testing::persist_issue(&app.state.pool, coupon, user).await;
    sqlx::query_scalar("SELECT id FROM coupon_issues WHERE coupon_id = ? AND user_id = ?")
        .bind(coupon)
        .bind(user)
        .fetch_one(&app.state.pool)
        .await
        .unwrap()
}

async fn redeem(
    app: &TestApp,
    user: i64,
    issue: i64,
    order: &str,
    amount: i64,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/users/{user}/coupons/{issue}/redeem")))
        .json(&json!({"order_id": order, "order_amount": amount}))
        .send()
        .await
        .unwrap()
}

async fn cancel(app: &TestApp, user: i64, issue: i64, order: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!(
            "/api/v1/users/{user}/coupons/{issue}/redeem/cancel"
        )))
        .json(&json!({"order_id": order}))
        .send()
        .await
        .unwrap()
}

async fn issue_status(app: &TestApp, issue: i64) -> String {
    sqlx::query_scalar("SELECT status FROM coupon_issues WHERE id = ?")
        .bind(issue)
        .fetch_one(&app.state.pool)
        .await
        .unwrap()
}

fn percentage(value: i64, cap: Option<i64>) -> NewCouponPolicy {
    let mut policy = testing::open_policy(10);
    policy.discount_type = DiscountType::Percentage;
    policy.discount_value = value;
    policy.max_discount_amount = cap;
    policy
}

#[tokio::test]
async fn redeeming_applies_the_fixed_discount_and_marks_the_coupon_used() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;

    let response = redeem(&app, 7, issue, "order-1", 30_000).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["discount_amount"], 1000);
    assert_eq!(body["final_amount"], 29_000);
    assert_eq!(body["status"], "USED");
    assert_eq!(issue_status(&app, issue).await, "USED");
}

#[tokio::test]
async fn percentage_discounts_are_capped_and_never_exceed_the_order() {
    let app = spawn_app().await;
    let capped = issued(&app, &percentage(20, Some(3000)), 1).await;
    let small = issued(&app, &testing::open_policy(10), 2).await;

    let capped: Value = redeem(&app, 1, capped, "o-1", 50_000)
        .await
        .json()
        .await
        .unwrap();
    let small: Value = redeem(&app, 2, small, "o-2", 400)
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(
        capped["discount_amount"], 3000,
        "20% of 50,000 capped at 3,000"
    );
    assert_eq!(
        small["discount_amount"], 400,
        "1,000 off a 400 order is 400"
    );
    assert_eq!(small["final_amount"], 0);
}

#[tokio::test]
async fn another_users_coupon_is_not_found() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;

    assert_error(
        redeem(&app, 8, issue, "o", 30_000).await,
        404,
        "COUPON_NOT_FOUND",
    )
    .await;
    assert_eq!(issue_status(&app, issue).await, "ISSUED");
}

#[tokio::test]
async fn a_used_coupon_cannot_be_used_again() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;
    assert_eq!(redeem(&app, 7, issue, "o-1", 30_000).await.status(), 200);

    assert_error(
        redeem(&app, 7, issue, "o-2", 30_000).await,
        409,
        "ALREADY_USED",
    )
    .await;
}

#[tokio::test]
async fn use_validity_and_the_minimum_order_are_enforced() {
    let app = spawn_app().await;
    let expired = issued(&app, &testing::open_policy(10), 1).await;
    sqlx::query("UPDATE coupon_issues SET expires_at = ? WHERE id = ?")
        .bind(Utc::now() - chrono::Duration::seconds(1))
        .bind(expired)
        .execute(&app.state.pool)
        .await
        .unwrap();
    let mut later = testing::open_policy(10);
    later.valid_from = Some(Utc::now() + chrono::Duration::days(1));
    let not_yet = issued(&app, &later, 2).await;
    let mut minimum = testing::open_policy(10);
    minimum.min_order_amount = 20_000;
    let small_order = issued(&app, &minimum, 3).await;

    assert_error(
        redeem(&app, 1, expired, "o", 30_000).await,
        409,
        "COUPON_EXPIRED",
    )
    .await;
    assert_error(
        redeem(&app, 2, not_yet, "o", 30_000).await,
        409,
        "COUPON_NOT_YET_VALID",
    )
    .await;
    assert_error(
        redeem(&app, 3, small_order, "o", 19_999).await,
        422,
        "MIN_ORDER_AMOUNT_NOT_MET",
    )
    .await;
    assert_eq!(
        redeem(&app, 3, small_order, "o", 20_000).await.status(),
        200,
        "the minimum itself is enough"
    );
}

#[tokio::test]
async fn a_suspended_policys_coupons_cannot_be_used() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;
    sqlx::query("UPDATE coupons SET status = 'SUSPENDED'")
        .execute(&app.state.pool)
        .await
        .unwrap();

    assert_error(
        redeem(&app, 7, issue, "o", 30_000).await,
        409,
        "COUPON_SUSPENDED",
    )
    .await;
}

#[tokio::test]
async fn two_hundred_concurrent_redeems_of_one_coupon_succeed_exactly_once() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;

    let attempts = (0..200).map(|n| {
        let app = &app;
        async move {
            redeem(app, 7, issue, &format!("order-{n}"), 30_000)
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(attempts).await;

    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 199);
    let redemptions: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM coupon_redemptions WHERE coupon_issue_id = ?")
            .bind(issue)
            .fetch_one(&app.state.pool)
            .await
            .unwrap();
    assert_eq!(redemptions, 1);
}

#[tokio::test]
async fn cancelling_an_order_restores_the_coupon_once() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;
    assert_eq!(redeem(&app, 7, issue, "o-1", 30_000).await.status(), 200);

    assert_error(
        cancel(&app, 7, issue, "o-other").await,
        404,
        "REDEMPTION_NOT_FOUND",
    )
    .await;
    assert_eq!(cancel(&app, 7, issue, "o-1").await.status(), 200);
    assert_eq!(issue_status(&app, issue).await, "ISSUED");
    assert_error(
        cancel(&app, 7, issue, "o-1").await,
        409,
        "ALREADY_CANCELLED",
    )
    .await;

    assert_eq!(
        redeem(&app, 7, issue, "o-2", 30_000).await.status(),
        200,
        "usable again"
    );
}

#[tokio::test]
async fn policies_that_forbid_it_do_not_restore_cancelled_orders() {
    let app = spawn_app().await;
    let mut policy = testing::open_policy(10);
    policy.restore_on_cancel = false;
    let issue = issued(&app, &policy, 7).await;
    assert_eq!(redeem(&app, 7, issue, "o-1", 30_000).await.status(), 200);

    assert_error(
        cancel(&app, 7, issue, "o-1").await,
        409,
        "RESTORE_NOT_ALLOWED",
    )
    .await;
    assert_eq!(issue_status(&app, issue).await, "USED");
}

#[tokio::test]
async fn malformed_redeem_requests_are_validation_failed() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;

    assert_error(
        redeem(&app, 7, issue, "", 30_000).await,
        422,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        redeem(&app, 7, issue, "o/../x", 30_000).await,
        422,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        redeem(&app, 7, issue, "o", 0).await,
        422,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(redeem(&app, 7, 0, "o", 10).await, 422, "VALIDATION_FAILED").await;
    assert_eq!(issue_status(&app, issue).await, "ISSUED");
}
