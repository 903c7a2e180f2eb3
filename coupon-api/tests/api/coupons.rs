use coupon_core::domain::CouponId;
use coupon_core::testing;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn creating_a_policy_answers_201_and_prepares_its_redis_state() {
    let app = spawn_app().await;

    let body = app.create_policy(&testing::open_policy(500)).await;

    assert_eq!(body["total_quantity"], 500);
    assert_eq!(body["coupon_type"], "FIRST_COME_FIRST_SERVED");
    assert_eq!(body["status"], "ACTIVE");
    assert_eq!(body["issued_quantity"], 0);
    let id = CouponId::parse(body["id"].as_i64().unwrap()).unwrap();
    let copy = app
        .state
        .policies
        .copies
        .get(id)
        .await
        .unwrap()
        .expect("policy copy in Redis");
    assert_eq!(copy.total_quantity(), Some(500));
}

#[tokio::test]
async fn a_policy_reads_back_with_live_counts() {
    let app = spawn_app().await;
    let id = app.open_coupon(10).await;
    assert_eq!(app.issue(id, 1).await.status(), 202);
    assert_eq!(app.issue(id, 2).await.status(), 202);

    let body: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/coupons/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(body["id"], id);
    assert_eq!(body["issued"], 0, "no consumer runs in this test");
    assert_eq!(body["pending"], 2);
    assert_eq!(body["remaining"], 8);
}

#[tokio::test]
async fn unlimited_policies_have_no_remaining_count() {
    let app = spawn_app().await;
    let mut policy = testing::open_policy(1);
    policy.coupon_type = coupon_core::domain::CouponType::Unlimited;
    policy.total_quantity = None;
    let id = app.create_policy(&policy).await["id"].as_i64().unwrap();

    let body: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/coupons/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(body["remaining"], serde_json::Value::Null);
    assert_eq!(body["total_quantity"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_policy_with_stock_shards_splits_its_stock_and_issues_it_all() {
    let app = spawn_app().await;
    let mut policy = testing::open_policy(6);
    policy.stock_shards = 3;
    let body = app.create_policy(&policy).await;
    assert_eq!(body["stock_shards"], 3);
    let id = body["id"].as_i64().unwrap();

    let mut answers = Vec::new();
    for user in 1..=10 {
        answers.push(app.issue(id, user).await.status().as_u16());
    }
    assert_eq!(
        answers.iter().filter(|&&s| s == 202).count(),
        6,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|&&s| s == 409).count(),
        4,
        "{answers:?}"
    );
    let read: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/coupons/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["stock_shards"], 3);
    assert_eq!(read["pending"], 6);
    assert_eq!(read["remaining"], 0);
    // A user admitted in their home shard is not admitted again.
    let first = (1..=10)
        .zip(&answers)
        .find(|(_, &status)| status == 202)
        .unwrap()
        .0;
    assert_error(app.issue(id, first).await, 409, "ALREADY_ISSUED").await;
}

#[tokio::test]
async fn an_unknown_policy_is_404_coupon_not_found() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/api/v1/coupons/987654"))
        .send()
        .await
        .unwrap();

    assert_error(response, 404, "COUPON_NOT_FOUND").await;
}

#[tokio::test]
async fn policies_breaking_a_rule_are_422_and_store_nothing() {
    let app = spawn_app().await;
    let mut zero_stock = serde_json::to_value(testing::open_policy(1)).unwrap();
    zero_stock["total_quantity"] = json!(0);
    let mut backwards = serde_json::to_value(testing::open_policy(1)).unwrap();
    backwards["issue_ends_at"] = backwards["issue_starts_at"].clone();
    let mut typo = serde_json::to_value(testing::open_policy(1)).unwrap();
    typo["totl_quantity"] = json!(5);
    let mut bad_type = serde_json::to_value(testing::open_policy(1)).unwrap();
    bad_type["coupon_type"] = json!("LOTTERY");
    let mut no_shards = serde_json::to_value(testing::open_policy(10)).unwrap();
    no_shards["stock_shards"] = json!(0);
    let mut too_many_shards = serde_json::to_value(testing::open_policy(100)).unwrap();
    too_many_shards["stock_shards"] = json!(65);
    let mut more_shards_than_units = serde_json::to_value(testing::open_policy(3)).unwrap();
    more_shards_than_units["stock_shards"] = json!(4);
    let mut negative_shards = serde_json::to_value(testing::open_policy(10)).unwrap();
    negative_shards["stock_shards"] = json!(-2);

    for body in [
        zero_stock,
        backwards,
        typo,
        bad_type,
        no_shards,
        too_many_shards,
        more_shards_than_units,
        negative_shards,
    ] {
        let response = app
            .client
            .post(app.url("/api/v1/coupons"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(response, 422, "VALIDATION_FAILED").await;
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}
