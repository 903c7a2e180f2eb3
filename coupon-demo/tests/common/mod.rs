//! What the cross-service tests share: coupon-api and coupon-consumer started in the test's
//! process, on stores of the test's own, under one stop token.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use clap::Parser;
use coupon_api::config::ApiConfig;
use coupon_api::startup::Application;
use coupon_api::state::AppState;
use coupon_consumer::config::ConsumerConfig;
use coupon_consumer::Application as Consumer;
use coupon_core::config::StoreConfig;
use coupon_core::testing;
use tokio::task::JoinHandle;
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

/// Both services, serving until [`Stack::stop`].
pub struct Stack {
    /// coupon-api's base URL, `http://127.0.0.1:<port>`.
    pub base: String,
    /// coupon-api's state (its pool, admission store, publisher).
    pub state: AppState,
    /// The stores both services use.
    pub stores: StoreConfig,
    /// The consumer group of coupon-consumer.
    pub group: String,
    stop: CancellationToken,
    api: JoinHandle<anyhow::Result<()>>,
    consumer: JoinHandle<anyhow::Result<()>>,
}

impl Stack {
    /// Starts both with their defaults, tokens signed by [`testing::JWT_SECRET`], no metrics
    /// listener, and the rate limits on or off; `group` prefixes the consumer group's name.
    pub async fn start(rate_limits: bool, group: &str) -> Self {
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
        api.auth.allow_development_secret = true;
        api.rate_limits.rate_limits = rate_limits;
        let mut consumer =
            ConsumerCli::parse_from(["coupon-consumer", "--metrics-listen", "off"]).consumer;
        consumer.stores = stores.clone();
        consumer.group_id = format!("{group}-{}", Uuid::new_v4().simple());
        api.kafka_consumer_group = consumer.group_id.clone();

        let stop = CancellationToken::new();
        let app = Application::build(api)
            .await
            .expect("coupon-api (is `make up` running?)");
        let base = format!("http://{}", app.local_addr().unwrap());
        let state = app.state();
        let api_stop = stop.clone();
        let api = tokio::spawn(app.run_until_stopped(async move { api_stop.cancelled().await }));
        let group = consumer.group_id.clone();
        let consumer = Consumer::build(&consumer).await.expect("coupon-consumer");
        let consumer_stop = stop.clone();
        let consumer = tokio::spawn(
            consumer.run_until_stopped(async move { consumer_stop.cancelled().await }),
        );
        Self {
            base,
            state,
            stores,
            group,
            stop,
            api,
            consumer,
        }
    }

    /// Stops both and waits for them; panics when either failed.
    pub async fn stop(self) {
        self.stop.cancel();
        self.api.await.unwrap().unwrap();
        self.consumer.await.unwrap().unwrap();
    }
}
