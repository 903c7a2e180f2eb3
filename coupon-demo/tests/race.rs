//! End to end: coupon-api and coupon-consumer in this process, talking to the real MySQL/MariaDB,
//! Redis and Kafka-protocol broker, raced through real HTTP.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use clap::Parser;
use coupon_api::config::ApiConfig;
use coupon_api::startup::Application;
use coupon_consumer::config::ConsumerConfig;
use coupon_consumer::Application as Consumer;
use coupon_core::auth::TokenSigner;
use coupon_core::testing;
use coupon_demo::RacePlan;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
struct ApiCli {
    #[command(flatten)]
    api: ApiConfig,
}

#[derive(Parser)]
struct ConsumerCli {
    #[command(flatten)]
    consumer: ConsumerConfig,
}

const STOCK: i64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_requests_from_five_thousand_users_issue_exactly_the_stock() {
    let stores = testing::isolated_stores();
    let mut api = ApiCli::parse_from([
        "coupon-api",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
    ])
    .api;
    api.stores = stores.clone();
    api.auth.jwt_secret = Some(testing::JWT_SECRET.into());
    // One client address: the per-address limit would refuse most of the race.
    api.rate_limits.rate_limits = false;
    let mut consumer =
        ConsumerCli::parse_from(["coupon-consumer", "--metrics-listen", "off"]).consumer;
    consumer.stores = stores.clone();
    consumer.group_id = format!("e2e-{}", Uuid::new_v4().simple());
    api.kafka_consumer_group = consumer.group_id.clone();

    let stop = CancellationToken::new();
    let app = Application::build(api)
        .await
        .expect("coupon-api (is `make up` running?)");
    let base = format!("http://{}", app.local_addr().unwrap());
    let state = app.state();
    let api_stop = stop.clone();
    let api_task = tokio::spawn(app.run_until_stopped(async move { api_stop.cancelled().await }));
    let consumer = Consumer::build(&consumer).await.expect("coupon-consumer");
    let consumer_stop = stop.clone();
    let consumer_task =
        tokio::spawn(consumer.run_until_stopped(async move { consumer_stop.cancelled().await }));

    let plan = RacePlan {
        requests: 10_000,
        users: 5_000,
        concurrency: 200,
        seed: 42,
    };
    let client = coupon_demo::http_client(plan.concurrency).unwrap();
    let signer = TokenSigner::hs256(testing::JWT_SECRET);
    let coupon = coupon_demo::create_coupon(&client, &base, &signer, STOCK)
        .await
        .unwrap();
    let report = coupon_demo::race(&client, &base, &signer, coupon, plan)
        .await
        .unwrap();
    coupon_demo::wait_until_drained(&state.pool, coupon, STOCK, Duration::from_secs(180))
        .await
        .unwrap();
    let verification = coupon_demo::verify(&state.pool, &state.admission, coupon, STOCK, &report)
        .await
        .unwrap();

    println!("{verification}");
    assert_eq!(report.requests, 10_000);
    assert_eq!(verification.accepted, STOCK, "202 answers");
    assert_eq!(verification.rows, STOCK, "rows in coupon_issues");
    assert_eq!(
        verification.distinct_users, STOCK,
        "no (coupon, user) twice"
    );
    assert_eq!(verification.issued_quantity, STOCK);
    assert_eq!(verification.admitted, STOCK, "SCARD");
    assert_eq!(
        verification.accepted_without_row, 0,
        "every accepted user has a row"
    );
    assert_eq!(verification.row_without_accept, 0, "no other user has one");
    assert_eq!(verification.unexpected, 0, "answers: {:?}", report.answers);
    assert_eq!(
        verification.already_issued + verification.sold_out + report.accepted.len(),
        10_000,
        "every request answered 202, ALREADY_ISSUED or SOLD_OUT"
    );
    assert!(verification.already_issued > 0, "the plan repeats users");

    stop.cancel();
    api_task.await.unwrap().unwrap();
    consumer_task.await.unwrap().unwrap();
}
