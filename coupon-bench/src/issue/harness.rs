//! What every figure of the issue benchmark shares: the benchmark's stores and token
//! ([`Bench`]), the services it starts ([`Service`]), the coupons it creates, the load runs
//! it drives with wrk, and the outcome counts it reads from coupon-api's metrics.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::Utc;
use coupon_core::auth::{Role, TokenSigner};
use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::{AdmissionStore, AdmitOutcome, RedisKeys, StockShards};
use coupon_core::issue::message::IssueMessage;
use coupon_core::store::kafka::IssuePublisher;
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::MySqlPool;
use uuid::Uuid;

use super::figure::Run;
use super::wrk::{wrk, UserPlan};
use super::IssueArgs;

/// A child process stopped (SIGTERM, then waited for) when dropped.
pub(super) struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    pub(super) fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("[bench] {} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// The benchmark's own stores, names and token, shared by every figure.
pub(super) struct Bench {
    pub(super) args: IssueArgs,
    /// Sends [`Self::token`] with every request.
    pub(super) http: reqwest::Client,
    /// HS256 secret the benchmark's coupon-api checks tokens with (random per run).
    pub(super) jwt_secret: String,
    /// Admin token, acting for the user each request names: wrk cannot sign a token per
    /// user, and checking one costs coupon-api the same HS256 verification as a user token.
    pub(super) token: String,
    pub(super) pool: MySqlPool,
    pub(super) redis: redis::aio::MultiplexedConnection,
    pub(super) prefix: String,
    pub(super) issue_topic: String,
    pub(super) group: String,
}

impl Bench {
    /// Recreates the benchmark's database and connects to it and to Redis; picks this run's
    /// key prefix, topic and group names and mints its admin token.
    ///
    /// # Errors
    /// MySQL or Redis is unreachable, or `--database-url` names no database.
    pub(super) async fn connect(args: IssueArgs) -> anyhow::Result<Self> {
        let (server, database) = args
            .database_url
            .rsplit_once('/')
            .context("DATABASE_URL must name a database")?;
        let admin = MySqlPool::connect(&format!("{server}/mysql")).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE `{database}`"))
            .execute(&admin)
            .await?;
        let tag = Uuid::new_v4().simple().to_string();
        let redis_client =
            redis::Client::open(format!("redis://{}:{}", args.redis_host, args.redis_port))?;
        // redis-rs bounds every reply by 500 ms unless told otherwise; deleting the
        // redis-benchmark run's set of a million members took longer on 2 busy cores
        // ("Error: timed out"). Nothing measured goes through this connection.
        let redis_config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let jwt_secret = format!("bench-{}", Uuid::new_v4().simple());
        let token = TokenSigner::hs256(&jwt_secret).mint("coupon-bench", Role::Admin, 86_400)?;
        Ok(Self {
            http: crate::bearer_client(&token, 64)?,
            jwt_secret,
            token,
            pool: MySqlPool::connect(&args.database_url).await?,
            redis: redis_client
                .get_multiplexed_async_connection_with_config(&redis_config)
                .await?,
            prefix: format!("bench:{}:", &tag[..8]),
            issue_topic: format!("bench-issues-{tag}"),
            group: format!("bench-consumer-{tag}"),
            args,
        })
    }

    pub(super) fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.api_port)
    }

    pub(super) fn metrics_port(&self) -> u16 {
        self.args.api_port + 1000
    }

    pub(super) fn service_env(&self, command: &mut Command) {
        command
            .env("DATABASE_URL", &self.args.database_url)
            .env(
                "REDIS_URL",
                format!("redis://{}:{}", self.args.redis_host, self.args.redis_port),
            )
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("KAFKA_BROKERS", &self.args.kafka_brokers)
            .env("KAFKA_ISSUE_TOPIC", &self.issue_topic)
            .env("KAFKA_ISSUE_PARTITIONS", self.args.partitions.to_string())
            .env("JWT_SECRET", &self.jwt_secret)
            // wrk is one client address: the per-address limit would refuse most requests.
            .env("RATE_LIMITS", "off")
            .env("RUST_LOG", "warn,coupon_consumer=info");
    }

    pub(super) fn spawn(
        &self,
        name: &'static str,
        mut command: Command,
    ) -> anyhow::Result<Service> {
        std::fs::create_dir_all(&self.args.log_dir)?;
        let log = std::fs::File::create(self.args.log_dir.join(format!("{name}.log")))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Service { name, child })
    }

    pub(super) async fn start_api(&self) -> anyhow::Result<Service> {
        let mut command = Command::new(&self.args.api_bin);
        self.service_env(&mut command);
        command
            .env("API_LISTEN", format!("127.0.0.1:{}", self.args.api_port))
            .env(
                "METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port()),
            );
        let service = self.spawn("coupon-api", command)?;
        let ready = format!("{}/ready", self.api_base());
        wait_for("coupon-api /ready", Duration::from_secs(60), || async {
            let response = self.http.get(&ready).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await?;
        Ok(service)
    }

    /// coupon-consumer on `topic` (the issue topic unless given) in `group`.
    pub(super) fn start_consumer(
        &self,
        topic: Option<&str>,
        group: &str,
    ) -> anyhow::Result<Service> {
        let mut command = Command::new(&self.args.consumer_bin);
        self.service_env(&mut command);
        command
            .env("KAFKA_ISSUE_TOPIC", topic.unwrap_or(&self.issue_topic))
            .env("KAFKA_CONSUMER_GROUP", group)
            .env(
                "METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port() + 1),
            );
        self.spawn("coupon-consumer", command)
    }

    /// Waits until the consumer's outbox relay published every event (each persisted issue
    /// writes one), so a measurement that follows does not share the CPU with it.
    pub(super) async fn outbox_relayed(&self) -> anyhow::Result<()> {
        wait_for("the outbox relayed", Duration::from_secs(600), || async {
            // EXISTS, not COUNT(*): counting a large backlog every poll slowed the relay.
            let unpublished: bool = sqlx::query_scalar(
                "SELECT EXISTS(SELECT 1 FROM coupon_events WHERE published_at IS NULL)",
            )
            .fetch_one(&self.pool)
            .await
            .ok()?;
            (!unpublished).then_some(())
        })
        .await
    }

    /// `coupon_issue_requests_total` by outcome, from the API's exporter.
    pub(super) async fn outcomes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port()))
            .send()
            .await?
            .text()
            .await?;
        let mut outcomes = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("coupon_issue_requests_total{outcome=\"") {
                if let Some((outcome, value)) = rest.split_once("\"} ") {
                    outcomes.insert(outcome.to_owned(), value.trim().parse::<f64>()? as u64);
                }
            }
        }
        ensure!(
            !outcomes.is_empty(),
            "no coupon_issue_requests_total in the API's metrics"
        );
        Ok(outcomes)
    }

    /// [`Self::outcomes`] once no request is still in flight: wrk stops with requests open,
    /// and the API finishes each admitted one (publish, count) after the client left. Waits
    /// until the counts are unchanged for 500 ms (at most 30 s).
    pub(super) async fn settled_outcomes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.outcomes().await?;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.outcomes().await?;
            if now == last || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    pub(super) async fn create_coupon(&self, stock: i64) -> anyhow::Result<CouponId> {
        let now = Utc::now();
        let response = self
            .http
            .post(format!("{}/api/v1/coupons", self.api_base()))
            .json(&json!({
                "title": format!("bench: {stock} units"),
                "coupon_type": "FIRST_COME_FIRST_SERVED",
                "total_quantity": stock,
                "discount_type": "FIXED",
                "discount_value": 1000,
                "issue_starts_at": now - chrono::Duration::minutes(1),
                "issue_ends_at": now + chrono::Duration::hours(6),
                // Longer than the consumer's expiring-soon window (EXPIRING_SOON_DAYS, 7):
                // with 7 days every coupon would be noticed as expiring at once, and the
                // notice job's writes would share the CPU with what is measured here.
                "valid_days": 30,
            }))
            .send()
            .await?;
        ensure!(
            response.status() == reqwest::StatusCode::CREATED,
            "creating a coupon answered {}",
            response.status()
        );
        let body: Value = response.json().await?;
        Ok(CouponId::parse(body["id"].as_i64().context("coupon id")?)?)
    }

    /// Sends one issue request per user in `users`, `concurrency` at a time; returns the 202s.
    pub(super) async fn issue_users(
        &self,
        coupon: CouponId,
        users: std::ops::RangeInclusive<i64>,
    ) -> anyhow::Result<u64> {
        let url = format!("{}/api/v1/coupons/{coupon}/issues", self.api_base());
        let accepted = futures::stream::iter(users)
            .map(|user| {
                let request = self.http.post(&url).json(&json!({ "user_id": user }));
                async move { request.send().await.map(|r| r.status().as_u16()) }
            })
            .buffer_unordered(64)
            .fold(Ok(0_u64), |acc, status| async move {
                Ok(acc? + u64::from(status? == 202))
            })
            .await;
        accepted
    }

    /// Admits and publishes each of `users` as another coupon-api instance would (the
    /// admission script, then the acknowledged issue message), so the measured instance has no
    /// memory of them; returns the admitted count.
    pub(super) async fn admit_elsewhere(
        &self,
        coupon: CouponId,
        users: std::ops::RangeInclusive<i64>,
    ) -> anyhow::Result<u64> {
        let redis_url = format!("redis://{}:{}", self.args.redis_host, self.args.redis_port);
        let store = AdmissionStore::new(
            coupon_core::store::redis::connect(
                coupon_core::store::redis::RedisMode::Single,
                &redis_url,
                Duration::from_secs(2),
            )
            .await?,
            RedisKeys::new(self.prefix.clone()),
        );
        let publisher = IssuePublisher::new(
            &self.args.kafka_brokers,
            &self.issue_topic,
            Duration::from_secs(30),
        )?;
        futures::stream::iter(users)
            .map(|user| {
                let (store, publisher) = (&store, &publisher);
                async move {
                    let user = UserId::parse(user)?;
                    let request_id = Uuid::now_v7();
                    let shards = StockShards::single(coupon);
                    if store.admit(shards, user, request_id).await? != AdmitOutcome::Admitted {
                        return Ok(0);
                    }
                    let message = IssueMessage {
                        coupon_id: coupon,
                        user_id: user,
                        request_id,
                        admitted_at: Utc::now(),
                        stock_shards: 1,
                    };
                    publisher.publish(&message).await?;
                    anyhow::Ok(1_u64)
                }
            })
            .buffer_unordered(64)
            .fold(
                Ok(0_u64),
                |acc, admitted| async move { Ok(acc? + admitted?) },
            )
            .await
    }

    pub(super) async fn issued_quantity(&self, coupon: CouponId) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT issued_quantity FROM coupons WHERE id = ?")
                .bind(coupon.get())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn admitted(&self, coupon: CouponId) -> anyhow::Result<i64> {
        let key = format!("{}coupon:{{{coupon}}}:issued", self.prefix);
        Ok(redis::cmd("SCARD")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await?)
    }

    /// One wrk run against `base` + `path`; `expected` is the outcome every answer should have
    /// (None for the ceiling server, which has no outcomes).
    pub(super) async fn load_run(
        &self,
        base: &str,
        path: &str,
        users: &UserPlan,
        seconds: u64,
        expected: Option<&str>,
    ) -> anyhow::Result<Run> {
        let before = match expected {
            Some(_) => Some(self.outcomes().await?),
            None => None,
        };
        let wrk = wrk(&self.args, base, path, users, seconds, &self.token)?;
        let errors_http = match (expected, before) {
            (Some(outcome), Some(before)) => {
                let after = self.settled_outcomes().await?;
                let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
                let good = after.get(outcome).copied().unwrap_or(0)
                    - before.get(outcome).copied().unwrap_or(0);
                // Answers the issue handler never counted were refused before it ran (401,
                // 429, a 503 of the request timeout): errors too. The handler counts every
                // answer it gives, and some after wrk left, so `total` is at least wrk's.
                let uncounted = wrk.requests.saturating_sub(total);
                total - good + uncounted
            }
            _ => wrk.status_errors,
        };
        let seconds = wrk.duration_us as f64 / 1e6;
        Ok(Run {
            requests: wrk.requests,
            rps: wrk.requests as f64 / seconds,
            p50_ms: wrk.p50_us as f64 / 1e3,
            p99_ms: wrk.p99_us as f64 / 1e3,
            p999_ms: wrk.p999_us as f64 / 1e3,
            max_ms: wrk.max_us as f64 / 1e3,
            errors: errors_http
                + wrk.connect_errors
                + wrk.read_errors
                + wrk.write_errors
                + wrk.timeouts,
        })
    }

    /// A `--warmup-seconds` warm-up, then `--runs` measured runs.
    pub(super) async fn figure(
        &self,
        name: &str,
        base: &str,
        path: &str,
        mut users: impl FnMut(usize) -> UserPlan,
        expected: Option<&str>,
    ) -> anyhow::Result<Vec<Run>> {
        eprintln!("[bench] {name}: warm-up");
        self.load_run(base, path, &users(0), self.args.warmup_seconds, None)
            .await?;
        let mut runs = Vec::new();
        for i in 1..=self.args.runs {
            let run = self
                .load_run(base, path, &users(i), self.args.seconds, expected)
                .await?;
            eprintln!(
                "[bench] {name} run {i}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} errors",
                run.rps, run.p50_ms, run.p99_ms, run.p999_ms, run.errors
            );
            runs.push(run);
        }
        Ok(runs)
    }
}

/// Polls `check` every 20 ms until it yields a value.
///
/// # Errors
/// `timeout` passed first ("timed out after … waiting for `what`").
pub(super) async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
