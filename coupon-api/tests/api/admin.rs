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
    assert_eq!(again.status(), 204, "a repeated delete completes, not 404");
}

#[tokio::test]
async fn an_admin_change_computed_from_a_stale_read_is_refused_not_written() {
    // A PATCH reads the policy (ACTIVE), a suspend commits, then the PATCH writes every field
    // it read: the policy was back to ACTIVE. The write is conditional on the version read.
    let app = spawn_app().await;
    let id = app.open_coupon(10).await;
    let coupon = coupon_core::domain::CouponId::parse(id).unwrap();
    let read = coupon_core::policies::find_policy(&app.state.pool, coupon)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        post(&app, &format!("/api/v1/coupons/{id}/suspend"))
            .await
            .status(),
        200
    );

    let stale = coupon_core::domain::CouponPolicy {
        title: "renamed from a stale read".into(),
        ..read.clone()
    };
    let saved = coupon_core::policies::save_policy_admin_fields(&app.state.pool, &stale)
        .await
        .unwrap();
    assert_eq!(saved, coupon_core::policies::Saved::Conflict);
    let now = coupon_core::policies::find_policy(&app.state.pool, coupon)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, coupon_core::domain::CouponStatus::Suspended);
    assert_eq!(now.title, read.title);
    assert_eq!(now.version, read.version + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patches_racing_a_suspend_never_put_the_policy_back_to_active() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(app.open_coupon(10).await);
    }
    let races = ids.iter().map(|&id| {
        let app = &app;
        async move {
            let suspend = format!("/api/v1/coupons/{id}/suspend");
            let (patched, suspended) = tokio::join!(
                patch(app, id, json!({"title": format!("renamed {id}")})),
                post(app, &suspend),
            );
            (id, patched.status().as_u16(), suspended.status().as_u16())
        }
    });
    for (id, patched, suspended) in futures::future::join_all(races).await {
        assert!(matches!(patched, 200 | 409), "PATCH {id}: {patched}");
        assert!(matches!(suspended, 200 | 409), "suspend {id}: {suspended}");
        if suspended == 200 {
            let policy: Value = app
                .client
                .get(app.url(&format!("/api/v1/coupons/{id}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(policy["status"], "SUSPENDED", "coupon {id}: {policy}");
        }
    }
}

#[tokio::test]
async fn the_redis_policy_copy_expires_so_a_lost_delete_or_refresh_cannot_outlive_it() {
    let app = spawn_app().await;
    let id = app.open_coupon(10).await;
    let coupon = coupon_core::domain::CouponId::parse(id).unwrap();
    assert_eq!(
        post(&app, &format!("/api/v1/coupons/{id}/suspend"))
            .await
            .status(),
        200
    );
    let mut redis = app
        .stores
        .connect_redis(Duration::from_secs(2))
        .await
        .unwrap();
    let key = coupon_core::issue::admission::RedisKeys::new(app.stores.redis.key_prefix.clone())
        .policy(coupon);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let bound = coupon_core::issue::admission::POLICY_COPY_TTL_SECS as i64;
    assert!((1..=bound).contains(&ttl), "the copy {key} has TTL {ttl}");
}
