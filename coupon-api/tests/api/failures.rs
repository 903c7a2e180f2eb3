//! Failure handling against a Redis of the test's own, stopped and frozen mid-test: one node,
//! or a six-node cluster when the suite runs with `REDIS_MODE=cluster`
//! ([`testing::OwnRedisDeployment`]).

use std::time::{Duration, Instant};

use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::StockShards;
use coupon_core::testing::{self, OwnRedisDeployment};

use crate::helpers::{assert_error, spawn_app_with, TestApp};

async fn app_on(redis: &OwnRedisDeployment) -> TestApp {
    let (url, mode) = (redis.url(), redis.mode());
    spawn_app_with(move |c| {
        c.stores.redis.url = url.into();
        c.stores.redis.mode = mode;
        c.stores.redis.timeout = Duration::from_millis(300);
        c.breaker.failures = 2;
        c.breaker.open_wait = Duration::from_millis(200);
    })
    .await
}

async fn admitted(app: &TestApp, coupon: i64) -> i64 {
    let coupon = CouponId::parse(coupon).unwrap();
    app.admitted_count(coupon).await
}

#[tokio::test]
async fn a_dead_redis_opens_the_breaker_and_issuing_fails_closed_until_it_answers_again() {
    let mut redis = OwnRedisDeployment::start(true).await;
    let app = app_on(&redis).await;
    let coupon = app.open_coupon(10).await;
    assert_eq!(app.issue(coupon, 1).await.status(), 202);

    redis.stop();
    for user in 2..=6 {
        let response = app.issue(coupon, user).await;
        assert!(
            response.headers().contains_key("retry-after"),
            "user {user}"
        );
        assert_error(response, 503, "UNAVAILABLE").await;
    }
    assert!(
        app.state.issue.breaker.is_open(),
        "5 failures in a row left the breaker closed"
    );

    redis.restart().await;
    testing::eventually("the breaker closes", Duration::from_secs(10), || async {
        (!app.state.issue.breaker.is_open()).then_some(())
    })
    .await;
    assert_eq!(app.issue(coupon, 2).await.status(), 202);
    assert_eq!(
        admitted(&app, coupon).await,
        2,
        "someone was admitted while Redis was down"
    );
}

#[tokio::test]
async fn a_frozen_redis_answers_503_within_the_timeout_instead_of_hanging() {
    let redis = OwnRedisDeployment::start(false).await;
    let app = app_on(&redis).await;
    let coupon = app.open_coupon(10).await;
    assert_eq!(app.issue(coupon, 1).await.status(), 202);

    redis.pause();
    let mut slowest = Duration::ZERO;
    for user in 2..=5 {
        let started = Instant::now();
        let response = app.issue(coupon, user).await;
        slowest = slowest.max(started.elapsed());
        assert_error(response, 503, "UNAVAILABLE").await;
    }
    redis.resume();

    // The bound is behaviour, not speed: a hung request would take as long as the client
    // waits; each call has REDIS_TIMEOUT_MS (300 ms here) and at most one retry.
    assert!(
        slowest < Duration::from_secs(3),
        "a request hung for {slowest:?}"
    );
    testing::eventually("the breaker closes", Duration::from_secs(10), || async {
        (!app.state.issue.breaker.is_open()).then_some(())
    })
    .await;
    // The scripts sent while Redis was frozen may still run once it thaws: those admissions
    // are in doubt (the user heard 503, no message was published). Each request's undo, sent
    // on the same or a new connection, may run before its script on thaw, so some may stay;
    // reconciliation settles them. Issuing goes on.
    assert_eq!(app.issue(coupon, 6).await.status(), 202);
    assert!((2..=6).contains(&admitted(&app, coupon).await));
}

#[tokio::test]
async fn a_request_still_unanswered_at_the_request_timeout_gets_503() {
    let redis = OwnRedisDeployment::start(false).await;
    let (url, mode) = (redis.url(), redis.mode());
    let app = spawn_app_with(move |c| {
        c.stores.redis.url = url.into();
        c.stores.redis.mode = mode;
        c.stores.redis.timeout = Duration::from_millis(20_000);
        c.request_timeout = Duration::from_millis(300);
    })
    .await;
    let coupon = app.open_coupon(10).await;

    redis.pause();
    let started = Instant::now();
    let response = app.issue(coupon, 1).await;
    let waited = started.elapsed();
    redis.resume();

    assert_error(response, 503, "UNAVAILABLE").await;
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
}

#[tokio::test]
async fn after_redis_lost_its_data_the_set_is_rebuilt_from_mysql_and_unpersisted_messages_first() {
    let mut redis = OwnRedisDeployment::start(false).await;
    let (url, mode) = (redis.url(), redis.mode());
    let app = spawn_app_with(move |c| {
        c.stores.redis.url = url.into();
        c.stores.redis.mode = mode;
        c.stores.kafka.message_timeout = Duration::from_millis(3_000);
    })
    .await;
    let coupon = app.open_coupon(5).await;
    // Users 1 and 2: admitted and published; no consumer runs here, so only the topic has them.
    assert_eq!(app.issue(coupon, 1).await.status(), 202);
    assert_eq!(app.issue(coupon, 2).await.status(), 202);
    // User 3: a row in MySQL whose message the consumer group already committed.
    testing::persist_issue(&app.state.pool, coupon, 3).await;

    redis.restart().await; // no persistence: every key is gone
    let id = CouponId::parse(coupon).unwrap();
    let prepared = testing::eventually(
        "the restarted Redis answers",
        Duration::from_secs(10),
        || async {
            app.state
                .issue
                .admission
                .is_prepared(StockShards::single(id))
                .await
                .ok()
        },
    )
    .await;
    assert!(!prepared, "the restart kept the stock key");

    // Closed (503) until the rebuild wrote the stock key back, then open again.
    let refused = std::sync::atomic::AtomicUsize::new(0);
    testing::eventually("issuing resumes", Duration::from_secs(30), || async {
        if app.issue(coupon, 4).await.status() == 202 {
            return Some(());
        }
        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    })
    .await;
    let refused = refused.into_inner();
    assert!(refused >= 1, "a request was admitted before the rebuild");
    let mut members = app
        .state
        .issue
        .admission
        .members(StockShards::single(id))
        .await
        .unwrap();
    members.sort_unstable();
    assert_eq!(members, ids(&[1, 2, 3, 4]));
    assert_error(app.issue(coupon, 3).await, 409, "ALREADY_ISSUED").await;
    assert_eq!(app.issue(coupon, 5).await.status(), 202);
    assert_error(app.issue(coupon, 6).await, 409, "SOLD_OUT").await;
}

#[tokio::test]
async fn reconciliation_republishes_lost_admissions_readmits_rows_and_fixes_the_count_once() {
    use coupon_core::issue::reconciliation::Reconciler;
    use coupon_core::issue::recovery::IssueLog;

    let app = crate::helpers::spawn_app().await;
    let coupon = app.open_coupon(10).await;
    let id = CouponId::parse(coupon).unwrap();
    // Users 1 and 2: admitted and published (on the topic; no consumer runs here).
    assert_eq!(app.issue(coupon, 1).await.status(), 202);
    assert_eq!(app.issue(coupon, 2).await.status(), 202);
    // User 3: admitted, but the message never reached the broker.
    app.state
        .issue
        .admission
        .add_members(StockShards::single(id), &ids(&[3]))
        .await
        .unwrap();
    // User 4: a row whose admission the set lost.
    testing::persist_issue(&app.state.pool, coupon, 4).await;
    // And a drifted count.
    sqlx::query("UPDATE coupons SET issued_quantity = 7 WHERE id = ?")
        .bind(coupon)
        .execute(&app.state.pool)
        .await
        .unwrap();
    let log = IssueLog {
        brokers: app.stores.kafka.brokers.clone(),
        topic: app.stores.kafka.issue_topic.clone(),
        group: "coupon-consumer".into(),
        timeout: Duration::from_secs(5),
    };
    let reconciler = Reconciler {
        pool: &app.state.pool,
        admission: &app.state.issue.admission,
        log: &log,
        publisher: &app.state.issue.publisher,
        grace: Duration::from_millis(200),
        dry_run: false,
    };

    let first = reconciler.reconcile(StockShards::single(id)).await.unwrap();

    assert_eq!(first.republished, [3]);
    assert_eq!(first.readmitted, [4]);
    assert_eq!(
        (first.issued_quantity_before, first.issued_quantity_after),
        (7, 1)
    );
    assert_eq!(first.in_flight, 2);
    assert!(log.unpersisted_users(id).await.unwrap().contains(&3));
    assert!(app
        .state
        .issue
        .admission
        .is_admitted(StockShards::single(id), UserId::parse(4).unwrap())
        .await
        .unwrap());

    let second = reconciler.reconcile(StockShards::single(id)).await.unwrap();
    assert!(
        second.republished.is_empty() && second.readmitted.is_empty(),
        "{second:?}"
    );
    assert_eq!(
        (second.issued_quantity_before, second.issued_quantity_after),
        (1, 1)
    );
    assert_eq!(second.in_flight, 3);
}

#[tokio::test]
async fn reconciliation_through_the_admin_api_runs_as_a_job_and_reports_its_repairs() {
    let app =
        spawn_app_with(|c| c.stores.kafka.message_timeout = Duration::from_millis(1_000)).await;
    let coupon = app.open_coupon(10).await;
    let id = CouponId::parse(coupon).unwrap();
    assert_eq!(app.issue(coupon, 1).await.status(), 202);
    // User 3: admitted, but the message never reached the broker.
    app.state
        .issue
        .admission
        .add_members(StockShards::single(id), &ids(&[3]))
        .await
        .unwrap();
    let start = |body: serde_json::Value| {
        app.client
            .post(app.url("/api/v1/admin/reconciliations"))
            .json(&body)
            .send()
    };

    // A grace period shorter than the message timeout could re-publish a publish in flight.
    let short = start(serde_json::json!({ "coupon_id": coupon, "grace_secs": 0 }))
        .await
        .unwrap();
    assert_error(short, 422, "VALIDATION_FAILED").await;
    for body in [
        serde_json::json!([null, null]),
        serde_json::json!({ "coupon_id": "x" }),
    ] {
        let refused = start(body).await.unwrap();
        assert_error(refused, 422, "VALIDATION_FAILED").await;
    }
    let unknown = start(serde_json::json!({ "coupon_id": 999_999 }))
        .await
        .unwrap();
    assert_error(unknown, 404, "COUPON_NOT_FOUND").await;
    let as_user = app
        .anonymous
        .post(app.url("/api/v1/admin/reconciliations"))
        .bearer_auth(testing::user_token(1))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_error(as_user, 403, "FORBIDDEN").await;

    let started = start(serde_json::json!({ "coupon_id": coupon, "grace_secs": 1 }))
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let job: serde_json::Value = started.json().await.unwrap();
    assert_eq!(job["status"], "RUNNING");
    assert_eq!(
        location,
        format!("/api/v1/admin/reconciliations/{}", job["job_id"])
    );
    let done = testing::eventually("the job is done", Duration::from_secs(30), || async {
        let job: serde_json::Value = app
            .client
            .get(app.url(&location))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (job["status"] != "RUNNING").then_some(job)
    })
    .await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["reports"][0]["coupon_id"], coupon);
    assert_eq!(done["reports"][0]["republished"], serde_json::json!([3]));
    assert!(done["finished_at"].is_string());

    let missing = app
        .client
        .get(app.url("/api/v1/admin/reconciliations/999999"))
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn a_delete_whose_redis_step_failed_is_completed_by_its_retry() {
    // The soft delete committed in MySQL, then Redis froze: 503. The retry once answered 404
    // and left the Redis policy copy (no TTL) issuable for good.
    let redis = OwnRedisDeployment::start(false).await;
    let app = app_on(&redis).await;
    let coupon = app.open_coupon(10).await;
    assert_eq!(app.issue(coupon, 1).await.status(), 202);
    let id = CouponId::parse(coupon).unwrap();
    assert!(app.state.policies.copies.get(id).await.unwrap().is_some());

    redis.pause();
    let url = app.url(&format!("/api/v1/coupons/{coupon}"));
    let first = app.client.delete(&url).send().await.unwrap();
    assert_error(first, 503, "UNAVAILABLE").await;
    redis.resume();
    testing::eventually("the breaker closes", Duration::from_secs(10), || async {
        (!app.state.issue.breaker.is_open()).then_some(())
    })
    .await;

    let retry = app.client.delete(&url).send().await.unwrap();
    assert_eq!(retry.status(), 204, "the retry completes the delete");
    assert!(
        app.state.policies.copies.get(id).await.unwrap().is_none(),
        "the Redis policy copy is gone"
    );
    assert_error(app.issue(coupon, 2).await, 404, "COUPON_NOT_FOUND").await;
    let unknown = app
        .client
        .delete(app.url(&format!("/api/v1/coupons/{}", coupon + 1000)))
        .send()
        .await
        .unwrap();
    assert_error(unknown, 404, "COUPON_NOT_FOUND").await;
}

#[tokio::test]
async fn an_undo_that_failed_is_retried_until_the_admission_is_gone() {
    // The broker is unreachable, so the publish fails after its 1 s timeout; Redis is down
    // meanwhile, so the undo fails too. The slot once stayed held without a message, and
    // reconciliation then gave the coupon to a user who heard 503 (`make chaos`, scenario 1,
    // "row without 202", after undos timed out under load).
    let mut redis = OwnRedisDeployment::start(true).await;
    let (url, mode) = (redis.url(), redis.mode());
    let app = spawn_app_with(move |c| {
        c.stores.redis.url = url.into();
        c.stores.redis.mode = mode;
        c.stores.redis.timeout = Duration::from_millis(300);
        c.stores.kafka.create_topics = false;
        c.stores.kafka.brokers = "127.0.0.1:1".into();
        c.stores.kafka.message_timeout = Duration::from_millis(1_000);
    })
    .await;
    let coupon = app.open_coupon(10).await;
    let request = tokio::spawn({
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/coupons/{coupon}/issues"));
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"user_id": 7}))
                .send()
                .await
                .unwrap()
        }
    });
    // Admitted by now (the admission is on disk: appendfsync always); down until after the
    // publish failed and the undo's first attempt failed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(admitted(&app, coupon).await, 1, "the request was admitted");
    redis.stop();
    let response = request.await.unwrap();
    assert_error(response, 503, "UNAVAILABLE").await;
    redis.restart().await;

    testing::eventually(
        "the admission is undone",
        Duration::from_secs(15),
        || async {
            (app.state
                .issue
                .admission
                .admitted_count(StockShards::single(CouponId::parse(coupon).unwrap()))
                .await
                .ok()
                == Some(0))
            .then_some(())
        },
    )
    .await;
    assert_eq!(testing::count_rows(&app.state.pool, coupon).await, 0);
}

/// User ids from integers (test data).
fn ids(raw: &[i64]) -> Vec<UserId> {
    raw.iter().map(|&id| UserId::parse(id).unwrap()).collect()
}
