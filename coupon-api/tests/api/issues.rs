use std::time::Duration;

use chrono::{Duration as Span, Utc};
use coupon_api::issue::sold_out::SoldOut;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::StockShards;
use coupon_core::issue::message::IssueMessage;
use coupon_core::testing;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

#[tokio::test]
async fn an_issue_is_answered_202_only_after_its_message_is_on_the_topic() {
    let app = spawn_app().await;
    let id = app.open_coupon(5).await;

    let response = app.issue(id, 42).await;

    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "PENDING");
    let request_id = body["request_id"].as_str().unwrap().to_owned();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.stores.kafka.brokers)
        .set("group.id", format!("reader-{request_id}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&app.stores.kafka.issue_topic])
        .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the issue message on the topic")
        .unwrap();
    let message = IssueMessage::from_json(received.payload().unwrap()).unwrap();
    assert_eq!(message.request_id.to_string(), request_id);
    assert_eq!(message.user_id.get(), 42);
    assert_eq!(received.key(), Some(format!("{id}:42").as_bytes()));
}

#[tokio::test]
async fn a_second_request_from_the_same_user_is_409_already_issued() {
    // Both ways: from the instance's memory of its admissions, and (memory off) from the
    // admission script.
    for capacity in [1_000, 0] {
        let app = spawn_app_with(|config| config.admitted_cache_capacity = capacity).await;
        let id = app.open_coupon(5).await;
        assert_eq!(app.issue(id, 7).await.status(), 202);

        assert_error(app.issue(id, 7).await, 409, "ALREADY_ISSUED").await;
    }
}

#[tokio::test]
async fn a_user_this_instance_admitted_is_told_already_issued_without_asking_redis() {
    let app = spawn_app().await;
    let id = app.open_coupon(100).await;
    let coupon = CouponId::parse(id).unwrap();
    assert_eq!(app.issue(id, 1).await.status(), 202);

    // Only the instance remembers user 1 now.
    app.forget_in_redis(id, 1).await;

    assert_error(app.issue(id, 1).await, 409, "ALREADY_ISSUED").await;
    assert_eq!(app.admitted_count(coupon).await, 0);
}

#[tokio::test]
async fn requests_past_the_stock_are_409_sold_out() {
    let app = spawn_app().await;
    let id = app.open_coupon(2).await;
    assert_eq!(app.issue(id, 1).await.status(), 202);
    assert_eq!(app.issue(id, 2).await.status(), 202);

    assert_error(app.issue(id, 3).await, 409, "SOLD_OUT").await;
    assert_error(app.issue(id, 1).await, 409, "ALREADY_ISSUED").await;
}

#[tokio::test]
async fn requests_outside_the_issue_window_are_409_issue_window_closed() {
    let app = spawn_app().await;
    let now = Utc::now();
    let future = testing::policy_with_window(Some(5), now + Span::hours(1), now + Span::hours(2));
    let past = testing::policy_with_window(Some(5), now - Span::hours(2), now - Span::seconds(1));
    let not_yet = app.create_policy(&future).await["id"].as_i64().unwrap();
    let over = app.create_policy(&past).await["id"].as_i64().unwrap();

    assert_error(app.issue(not_yet, 1).await, 409, "ISSUE_WINDOW_CLOSED").await;
    assert_error(app.issue(over, 1).await, 409, "ISSUE_WINDOW_CLOSED").await;
    assert_eq!(app.admitted_count(CouponId::parse(over).unwrap()).await, 0);
}

#[tokio::test]
async fn an_issue_of_an_unknown_coupon_is_404() {
    let app = spawn_app().await;

    assert_error(app.issue(424_242, 1).await, 404, "COUPON_NOT_FOUND").await;
}

#[tokio::test]
async fn the_issue_status_is_pending_until_persisted_then_issued() {
    let app = spawn_app().await;
    let id = app.open_coupon(5).await;
    assert_eq!(app.issue(id, 3).await.status(), 202);

    let pending: serde_json::Value = app.issue_status(id, 3).await.json().await.unwrap();
    assert_eq!(pending["status"], "PENDING");
    assert_error(app.issue_status(id, 4).await, 404, "ISSUE_NOT_FOUND").await;
    assert_error(app.issue_status(999_999, 3).await, 404, "COUPON_NOT_FOUND").await;

    // What coupon-consumer does for the message (tested in coupon-consumer).
    testing::persist_issue(&app.state.pool, id, 3).await;
    let issued: serde_json::Value = app.issue_status(id, 3).await.json().await.unwrap();
    assert_eq!(issued["status"], "ISSUED");
}

/// An API whose broker never answers: each publish fails after `message_timeout_ms`.
async fn app_without_broker(message_timeout_ms: u64) -> TestApp {
    spawn_app_with(|config| {
        config.stores.kafka.create_topics = false;
        config.stores.kafka.brokers = "127.0.0.1:1".into();
        config.stores.kafka.message_timeout = Duration::from_millis(message_timeout_ms);
    })
    .await
}

#[tokio::test]
async fn when_the_broker_is_down_the_answer_is_503_and_the_admission_is_undone() {
    let app = app_without_broker(1_000).await;
    let id = app.open_coupon(1).await;

    let response = app.issue(id, 5).await;

    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let message = assert_error(response, 503, "UNAVAILABLE").await;
    assert!(
        !message.contains("127.0.0.1"),
        "no internal detail in the body: {message}"
    );
    let coupon = CouponId::parse(id).unwrap();
    assert!(!app
        .state
        .issue
        .admission
        .is_admitted(StockShards::single(coupon), UserId::parse(5).unwrap())
        .await
        .unwrap());
    assert_eq!(
        app.admitted_count(coupon).await,
        0,
        "the unit is back in stock"
    );
}

#[tokio::test]
async fn a_repeat_click_while_the_first_publish_is_failing_never_hears_already_issued() {
    let app = app_without_broker(1_500).await;
    let id = app.open_coupon(1).await;

    // The first click waits for a broker that never answers; the second comes while it waits.
    let first = app.issue(id, 5);
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.issue(id, 5).await
    };
    let (first, second) = tokio::join!(first, second);

    // The first publish failed and its admission was undone: the user holds nothing, so the
    // second click must not have heard ALREADY_ISSUED, a promise that did not hold.
    assert_error(first, 503, "UNAVAILABLE").await;
    assert_error(second, 409, "ISSUE_IN_PROGRESS").await;
    let coupon = CouponId::parse(id).unwrap();
    assert!(!app
        .state
        .issue
        .admission
        .is_admitted(StockShards::single(coupon), UserId::parse(5).unwrap())
        .await
        .unwrap());
    assert_eq!(app.admitted_count(coupon).await, 0);
}

/// Issues `users` of a fresh 100-unit coupon through `app`, then broadcasts its sell-out
/// (as the consumer does once MySQL holds the stock) and waits for the mark.
async fn sold_out_coupon(app: &TestApp, users: std::ops::RangeInclusive<i64>) -> CouponId {
    let id = app.open_coupon(100).await;
    let coupon = CouponId::parse(id).unwrap();
    for user in users {
        assert_eq!(app.issue(id, user).await.status(), 202);
    }
    app.announce_sold_out(coupon).await;
    testing::eventually("the sold-out mark", Duration::from_secs(5), || async {
        app.state.issue.sold_out.get(coupon).await.map(drop)
    })
    .await;
    coupon
}

#[tokio::test]
async fn a_sold_out_broadcast_is_applied_by_the_api() {
    let app = spawn_app_with(|config| {
        config.sold_out_holders_max = 0;
        config.admitted_cache_capacity = 0;
    })
    .await;
    let coupon = sold_out_coupon(&app, 1..=1).await;
    let id = coupon.get();

    // Stock is left in Redis, but the API trusts the consumer's broadcast and admits nobody;
    // a holder asking again is still told ALREADY_ISSUED (by SISMEMBER: no copy was made).
    assert!(matches!(
        app.state.issue.sold_out.get(coupon).await,
        Some(SoldOut::Marked)
    ));
    assert_error(app.issue(id, 2).await, 409, "SOLD_OUT").await;
    assert_error(app.issue(id, 1).await, 409, "ALREADY_ISSUED").await;
    assert_eq!(app.admitted_count(coupon).await, 1);
}

#[tokio::test]
async fn a_sold_out_coupon_is_answered_from_the_copied_holders_without_asking_redis() {
    let app = spawn_app_with(|config| config.admitted_cache_capacity = 0).await;
    let coupon = sold_out_coupon(&app, 1..=3).await;
    let id = coupon.get();
    let holders = testing::eventually("the holders copied", Duration::from_secs(5), || async {
        app.state
            .issue
            .sold_out
            .get(coupon)
            .await
            .and_then(SoldOut::holders)
    })
    .await;
    assert_eq!(holders.len(), 3);

    // Only the copy of the holders still knows user 1 now.
    app.forget_in_redis(id, 1).await;

    assert_error(app.issue(id, 1).await, 409, "ALREADY_ISSUED").await;
    assert_error(app.issue(id, 3).await, 409, "ALREADY_ISSUED").await;
    assert_error(app.issue(id, 4).await, 409, "SOLD_OUT").await;
    assert_eq!(app.admitted_count(coupon).await, 2);
}

#[tokio::test]
async fn health_and_readiness_answer_200_when_every_store_is_up() {
    let app = spawn_app().await;

    let health = app.client.get(app.url("/health")).send().await.unwrap();
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"mysql": true, "redis": true, "kafka": true})
    );
}

#[tokio::test]
async fn readiness_is_503_when_the_broker_is_unreachable() {
    let app = spawn_app_with(|config| {
        config.stores.kafka.create_topics = false;
        config.stores.kafka.brokers = "127.0.0.1:1".into();
    })
    .await;

    let ready = app.client.get(app.url("/ready")).send().await.unwrap();

    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["kafka"], false);
    assert_eq!(body["mysql"], true);
}

#[tokio::test]
async fn when_redis_is_down_issue_requests_fail_fast_with_503_and_nothing_hangs() {
    let mut redis = testing::OwnRedisDeployment::start(false).await;
    let (url, mode) = (redis.url(), redis.mode());
    let app = spawn_app_with(move |config| {
        config.stores.redis.url = url.into();
        config.stores.redis.mode = mode;
        config.stores.redis.timeout = Duration::from_millis(300);
    })
    .await;
    let id = app.open_coupon(5).await;
    assert_eq!(app.issue(id, 1).await.status(), 202);

    redis.stop();
    let started = std::time::Instant::now();
    let response = app.issue(id, 2).await;

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert_error(response, 503, "UNAVAILABLE").await;
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn with_only_mysql_cut_off_the_issue_path_stays_ready_and_issues() {
    // The MySQL server the tests use, reached through a path the test can cut.
    let url = testing::isolated_stores().mysql.url().to_owned();
    let server = url
        .rsplit('@')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let target = tokio::net::lookup_host(&server)
        .await
        .unwrap()
        .next()
        .unwrap();
    let mysql = testing::TcpCut::start(target).await;
    let through = mysql.addr().to_string();
    let app = spawn_app_with(move |config| {
        let url = config.stores.mysql.url().replace(&server, &through);
        config.stores.mysql.url = url.into();
    })
    .await;
    let id = app.open_coupon(5).await;
    assert_eq!(app.issue(id, 1).await.status(), 202, "the policy is cached");

    mysql.cut();
    let ready = eventually_ready(&app, "/ready/full", 503).await;
    assert_eq!(ready["mysql"], false);
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the load balancer's probe");
    assert_eq!(
        app.issue(id, 2).await.status(),
        202,
        "issuing needs no MySQL"
    );

    mysql.restore();
    eventually_ready(&app, "/ready/full", 200).await;
}

/// Polls `path` until it answers `status` (the report is cached for a second); its body.
async fn eventually_ready(
    app: &crate::helpers::TestApp,
    path: &str,
    status: u16,
) -> serde_json::Value {
    testing::eventually(
        &format!("{path} answering {status}"),
        Duration::from_secs(15),
        || async {
            let response = app.client.get(app.url(path)).send().await.ok()?;
            if response.status() != status {
                return None;
            }
            response.json().await.ok()
        },
    )
    .await
}
