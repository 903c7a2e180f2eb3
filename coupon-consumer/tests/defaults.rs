//! Both services start side by side on one machine with their default addresses: the consumer
//! binary first (it once took coupon-api's default metrics port, and coupon-api then exited
//! with "Address already in use"), then coupon-api. Only the stores are set, to ones of the
//! test's own; every listen address is the default.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use coupon_api::config::ApiConfig;
use coupon_api::startup::Application;
use coupon_core::testing;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct ApiCli {
    #[command(flatten)]
    api: ApiConfig,
}

/// The consumer binary, killed when the test ends however it ends.
struct ConsumerProcess(Child);

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `url` answers 200.
async fn answers(url: &str) {
    let client = reqwest::Client::new();
    testing::eventually(url, WAIT, || async {
        let response = client.get(url).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

#[tokio::test]
async fn both_services_start_side_by_side_with_their_default_addresses() {
    let stores = testing::isolated_stores();
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_coupon-consumer"));
    for name in ["METRICS_LISTEN", "API_LISTEN"] {
        consumer.env_remove(name);
    }
    let _consumer = ConsumerProcess(
        consumer
            .env("DATABASE_URL", stores.mysql.url.expose_secret())
            .env("REDIS_URL", stores.redis.url.expose_secret())
            .env("REDIS_KEY_PREFIX", &stores.redis.key_prefix)
            .env("KAFKA_BROKERS", &stores.kafka.brokers)
            .env("KAFKA_ISSUE_TOPIC", &stores.kafka.issue_topic)
            .env("KAFKA_DEAD_LETTER_TOPIC", &stores.kafka.dead_letter_topic)
            .env("KAFKA_PAYMENTS_TOPIC", &stores.kafka.payments_topic)
            .env("KAFKA_EVENTS_TOPIC", &stores.kafka.events_topic)
            .env(
                "KAFKA_CONSUMER_GROUP",
                format!("defaults-{}", stores.redis.key_prefix),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the coupon-consumer binary"),
    );
    answers("http://127.0.0.1:9465/metrics").await;

    let mut config = ApiCli::parse_from(["coupon-api"]).api;
    config.stores = stores;
    config.auth.jwt_secret = Some(testing::JWT_SECRET.into());
    config.auth.allow_development_secret = true;
    let app = Application::build(config)
        .await
        .expect("coupon-api starts beside coupon-consumer with its defaults");
    assert_eq!(app.local_addr().unwrap(), "127.0.0.1:8080".parse().unwrap());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let served = tokio::spawn(app.run_until_stopped(async move { stopped.cancelled().await }));

    answers("http://127.0.0.1:8080/health").await;
    answers("http://127.0.0.1:9464/metrics").await;
    stop.cancel();
    served.await.unwrap().unwrap();
}
