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

/// POSTs `body` to `path` with `token`.
async fn post_as(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    app.anonymous
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_order_routes_take_service_and_admin_tokens_and_refuse_user_tokens() {
    // User 7 once redeemed their coupon for order-1001, cancelled it and redeemed it again for
    // order-1002 with their own token: order routes are the order service's now.
    let app = spawn_app().await;
    let policy = testing::open_policy(10);
    let user_token = testing::user_token(7);
    let service = testing::service_token();
    let admin = testing::admin_token();
    for (caller, token, allowed) in [
        ("user", user_token.as_str(), false),
        ("service", service.as_str(), true),
        ("admin", admin.as_str(), true),
    ] {
        // Each caller gets a fresh coupon and its own orders; every route in turn.
        let issue = issued(&app, &policy, 7).await;
        let base = format!("/api/v1/users/7/coupons/{issue}");
        let redeem_order = format!("{caller}-redeemed");
        let hold_order = format!("{caller}-held");
        let released_order = format!("{caller}-released");
        let steps = [
            (
                "redeem",
                json!({"order_id": redeem_order, "order_amount": 30_000}),
                "USED",
            ),
            ("redeem/cancel", json!({"order_id": redeem_order}), "ISSUED"),
            (
                "reserve",
                json!({"order_id": hold_order, "order_amount": 30_000}),
                "RESERVED",
            ),
            ("reserve/cancel", json!({"order_id": hold_order}), "ISSUED"),
            (
                "reserve",
                json!({"order_id": released_order, "order_amount": 30_000}),
                "RESERVED",
            ),
            (
                "reserve/confirm",
                json!({"order_id": released_order}),
                "USED",
            ),
        ];
        for (route, body, after) in steps {
            let response = post_as(&app, token, &format!("{base}/{route}"), body).await;
            if allowed {
                assert_eq!(response.status(), 200, "{caller} {route}");
                assert_eq!(issue_status(&app, issue).await, after, "{caller} {route}");
            } else {
                let message = assert_error(response, 403, "FORBIDDEN").await;
                assert!(message.contains("role service"), "{route}: {message}");
                assert_eq!(
                    issue_status(&app, issue).await,
                    "ISSUED",
                    "{route} changed nothing"
                );
            }
        }
    }
    let redemptions: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM coupon_redemptions WHERE order_id LIKE 'user-%'")
            .fetch_one(&app.state.pool)
            .await
            .unwrap();
    assert_eq!(redemptions, 0, "a user token recorded no redemption");

    // A service token acts for nobody on the user routes.
    let coupon = app.open_coupon(5).await;
    let issue_request = post_as(
        &app,
        &service,
        &format!("/api/v1/coupons/{coupon}/issues"),
        json!({"user_id": 7}),
    )
    .await;
    assert_error(issue_request, 403, "FORBIDDEN").await;
    let list = app
        .anonymous
        .get(app.url("/api/v1/users/7/coupons"))
        .bearer_auth(&service)
        .send()
        .await
        .unwrap();
    assert_error(list, 403, "FORBIDDEN").await;
    let create = post_as(&app, &service, "/api/v1/coupons", json!({})).await;
    assert_error(create, 403, "FORBIDDEN").await;
}

#[tokio::test]
async fn an_order_belongs_to_the_user_it_was_first_used_for() {
    let app = spawn_app().await;
    let policy = testing::open_policy(10);
    let sevens = issued(&app, &policy, 7).await;
    let eights = issued(&app, &policy, 8).await;
    let service = testing::service_token();
    let redeem_path =
        |user: i64, issue: i64| format!("/api/v1/users/{user}/coupons/{issue}/redeem");
    let order = json!({"order_id": "order-1001", "order_amount": 30_000});
    let first = post_as(&app, &service, &redeem_path(7, sevens), order.clone()).await;
    assert_eq!(first.status(), 200);

    // The same order on user 8's coupon: neither used nor held.
    let other = post_as(&app, &service, &redeem_path(8, eights), order.clone()).await;
    assert_error(other, 409, "ORDER_OF_ANOTHER_USER").await;
    let hold = post_as(
        &app,
        &service,
        &format!("/api/v1/users/8/coupons/{eights}/reserve"),
        order.clone(),
    )
    .await;
    assert_error(hold, 409, "ORDER_OF_ANOTHER_USER").await;
    assert_eq!(issue_status(&app, eights).await, "ISSUED");

    // Cancelling order-1001 gives back user 7's coupon only; a payment result for it finds no
    // hold of user 8's.
    let cancel = post_as(
        &app,
        &service,
        &format!("/api/v1/users/8/coupons/{eights}/redeem/cancel"),
        json!({"order_id": "order-1001"}),
    )
    .await;
    assert_error(cancel, 404, "REDEMPTION_NOT_FOUND").await;
    let order_id = coupon_core::redemption::OrderId::parse("order-1001").unwrap();
    let settled =
        coupon_core::redemption::settle_order(&app.state.pool, &order_id, true, Utc::now())
            .await
            .unwrap();
    assert_eq!(
        settled.unchanged(),
        Some(coupon_core::redemption::Unchanged::NoHold)
    );
    assert_eq!(issue_status(&app, eights).await, "ISSUED");
    assert_eq!(issue_status(&app, sevens).await, "USED");

    // User 7 may use the order again (a second coupon on the same order).
    let another = issued(&app, &policy, 7).await;
    let again = post_as(&app, &service, &redeem_path(7, another), order).await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_redeem_repeated_for_the_same_order_returns_the_same_redemption() {
    let app = spawn_app().await;
    let issue = issued(&app, &testing::open_policy(10), 7).await;

    let first = redeem(&app, 7, issue, "order-1", 30_000).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    // Its answer was lost; the order service sends it again, once more at the same time.
    let (again, racing) = tokio::join!(
        redeem(&app, 7, issue, "order-1", 30_000),
        redeem(&app, 7, issue, "order-1", 30_000)
    );
    for repeat in [again, racing] {
        assert_eq!(repeat.status(), 200);
        let repeat: Value = repeat.json().await.unwrap();
        assert_eq!(repeat, first, "a repeat answers the first redemption");
    }
    let other = redeem(&app, 7, issue, "order-2", 30_000).await;
    assert_error(other, 409, "ALREADY_USED").await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_redemptions")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "one coupon, one discount");
}

#[tokio::test]
async fn order_ids_differing_only_in_case_are_different_orders() {
    let app = spawn_app().await;
    let policy = testing::open_policy(10);
    let sevens = issued(&app, &policy, 7).await;
    let eights = issued(&app, &policy, 8).await;
    let sevens_hold = issued(&app, &policy, 7).await;
    let service = testing::service_token();
    let path = |user: i64, issue: i64, action: &str| {
        format!("/api/v1/users/{user}/coupons/{issue}/{action}")
    };

    let upper = json!({"order_id": "order-AbC", "order_amount": 30_000});
    let lower = json!({"order_id": "order-abc", "order_amount": 30_000});
    let first = post_as(&app, &service, &path(7, sevens, "redeem"), upper.clone()).await;
    assert_eq!(first.status(), 200);
    let second = post_as(&app, &service, &path(8, eights, "redeem"), lower).await;
    assert_eq!(second.status(), 200, "{}", second.text().await.unwrap());

    // A payment result for order-abc settles nothing of order-AbC's.
    let hold = post_as(&app, &service, &path(7, sevens_hold, "reserve"), upper).await;
    assert_eq!(hold.status(), 200, "{}", hold.text().await.unwrap());
    let lower_id = coupon_core::redemption::OrderId::parse("order-abc").unwrap();
    coupon_core::redemption::settle_order(&app.state.pool, &lower_id, false, Utc::now())
        .await
        .unwrap();
    assert_eq!(issue_status(&app, sevens_hold).await, "RESERVED");
}
