//! Spawns a real coupon-api (port 0) against the local MySQL, Redis and Kafka, isolated per test.

use std::time::Duration;

use clap::Parser;
use coupon_api::config::ApiConfig;
use coupon_api::startup::Application;
use coupon_api::state::AppState;
use coupon_core::config::StoreConfig;
use coupon_core::domain::{CouponId, NewCouponPolicy};
use coupon_core::issue::admission::{Invalidation, StockShards};
use coupon_core::testing;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    api: ApiConfig,
}

/// A running API and a client pointed at it.
pub struct TestApp {
    pub base: String,
    /// Sends an admin bearer token unless a request sets its own `Authorization`.
    pub client: reqwest::Client,
    /// A client with no token.
    pub anonymous: reqwest::Client,
    pub state: AppState,
    pub stores: StoreConfig,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An API on fresh stores.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The configuration of a test API: port 0, no metrics endpoint, fresh stores, tokens signed
/// with [`testing::JWT_SECRET`], rate limits off.
pub fn test_config() -> ApiConfig {
    let mut config = Cli::parse_from([
        "coupon-api",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
    ])
    .api;
    config.stores = testing::isolated_stores();
    config.auth.jwt_secret = Some(testing::JWT_SECRET.into());
    config.auth.allow_development_secret = true;
    // Many tests send bursts from one address and user; tests/api/rate_limits.rs turns the
    // limits on.
    config.rate_limits.rate_limits = false;
    config
}

/// An API on fresh stores, after `adjust` changed its configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut ApiConfig)) -> TestApp {
    let mut config = test_config();
    adjust(&mut config);
    let stores = config.stores.clone();
    let app = Application::build(config)
        .await
        .expect("building coupon-api (is `make up` running?)");
    let base = format!("http://{}", app.local_addr().unwrap());
    let state = app.state();
    tokio::time::timeout(Duration::from_secs(10), app.invalidations_subscribed())
        .await
        .expect("invalidation subscription");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(app.run_until_stopped(async move { stopped.cancelled().await }));
    TestApp {
        base,
        client: admin_client(),
        anonymous: reqwest::Client::new(),
        state,
        stores,
        stop,
    }
}

/// A client that sends the test admin token with every request.
fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {}", testing::admin_token());
    headers.insert(reqwest::header::AUTHORIZATION, value.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create_policy(&self, policy: &NewCouponPolicy) -> Value {
        let response = self
            .client
            .post(self.url("/api/v1/coupons"))
            .json(policy)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "creating a policy");
        response.json().await.unwrap()
    }

    /// Creates an open first-come-first-served policy with `total` in stock; returns its id.
    pub async fn open_coupon(&self, total: i64) -> i64 {
        self.create_policy(&testing::open_policy(total)).await["id"]
            .as_i64()
            .unwrap()
    }

    /// `user` asks for `coupon` with their own token and no body.
    pub async fn issue(&self, coupon: i64, user: i64) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/coupons/{coupon}/issues")))
            .bearer_auth(testing::user_token(user))
            .send()
            .await
            .unwrap()
    }

    /// Members of unsharded `coupon`'s admission set (count).
    pub async fn admitted_count(&self, coupon: CouponId) -> i64 {
        self.state
            .issue
            .admission
            .admitted_count(StockShards::single(coupon))
            .await
            .unwrap()
    }

    /// Broadcasts that `coupon` sold out, as coupon-consumer does once MySQL holds its stock.
    /// On a cluster PUBLISH counts only the receivers on the node it reached, so the count is
    /// not returned: a caller waits for the mark to show it was heard.
    pub async fn announce_sold_out(&self, coupon: CouponId) {
        self.state
            .policies
            .broadcast
            .publish(Invalidation::sold_out(StockShards::single(coupon)))
            .await
            .unwrap();
    }

    /// Removes `user` from `coupon`'s Redis admission set behind the API's back (asserting it
    /// was there), so only what the instance holds locally still knows the user.
    pub async fn forget_in_redis(&self, coupon: i64, user: i64) {
        let keys = self.state.issue.admission.keys();
        let coupon = CouponId::parse(coupon).unwrap();
        let mut redis = self
            .stores
            .connect_redis(Duration::from_secs(2))
            .await
            .unwrap();
        let removed: i64 = redis::AsyncCommands::srem(&mut redis, keys.admission_set(coupon), user)
            .await
            .unwrap();
        assert_eq!(removed, 1, "user {user} was admitted to coupon {coupon}");
    }

    pub async fn issue_status(&self, coupon: i64, user: i64) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/v1/coupons/{coupon}/issues/{user}")))
            .bearer_auth(testing::user_token(user))
            .send()
            .await
            .unwrap()
    }
}

/// Asserts `response` is an API error with `status` and `code`; returns its message.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert_eq!(body["code"], code, "body: {body}");
    let message = body["message"].as_str().expect("a message").to_owned();
    assert!(!message.is_empty());
    message
}

/// Polls issue requests from fresh users until one answers `status`, for up to 5 s.
pub async fn eventually_status(app: &TestApp, coupon: i64, status: u16) {
    let mut user = 5_000;
    testing::eventually("the expected answer", Duration::from_secs(5), || {
        user += 1;
        let user = user;
        async move { (app.issue(coupon, user).await.status().as_u16() == status).then_some(()) }
    })
    .await;
}
