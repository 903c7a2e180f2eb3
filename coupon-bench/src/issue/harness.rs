//! What every figure of the issue benchmark shares: the benchmark's stores and token
//! ([`Bench`]; the services it starts are in [`super::services`]), the coupons it creates, the load runs
//! it drives with wrk, and the outcome counts it reads from coupon-api's metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::Utc;
use coupon_core::auth::{Role, TokenSigner};
use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::{AdmissionStore, AdmitOutcome, RedisKeys, StockShards};
use coupon_core::issue::message::IssueMessage;
use coupon_core::store::kafka::IssuePublisher;
use coupon_core::store::redis::{RedisConnection, RedisMode};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::MySqlPool;
use uuid::Uuid;

use super::figure::Run;
use super::wrk::{wrk, UserPlan};
use super::IssueArgs;
use crate::cpu::{Part, Processes};

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
    /// A connection to `--redis-mode` Redis at `--redis-host`:`--redis-port`.
    pub(super) redis: RedisConnection,
    /// The processes whose CPU each load run reads: the started services, every Redis node,
    /// the broker, MariaDB, and (as this process's children) the load generator.
    pub(super) processes: Processes,
    /// coupon-api instances running (count): [`Self::outcomes`] sums over them, and a load run
    /// against [`Self::api_base`] spreads its wrk threads over them.
    pub(super) instances: AtomicUsize,
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
        // No database named: the services' account has rights on its own databases only.
        let admin = MySqlPool::connect(server).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE `{database}`"))
            .execute(&admin)
            .await?;
        let tag = Uuid::new_v4().simple().to_string();
        // redis-rs bounds every reply by 500 ms unless told otherwise; deleting the
        // redis-benchmark run's set of a million members took longer on 2 busy cores
        // ("Error: timed out"). Nothing measured goes through this connection.
        let redis = coupon_core::store::redis::connect(
            args.redis_mode,
            &redis_url(&args),
            Duration::from_secs(30),
        )
        .await?;
        let processes = Processes::default();
        for pid in redis_pids(&redis, &args).await? {
            processes.add(Part::Redis, pid);
        }
        // A broker is a JVM (`java`): found by the port of each bootstrap server.
        for address in args.kafka_brokers.split(',') {
            let port: u16 = address
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .with_context(|| format!("--kafka-brokers: {address} is not host:port"))?;
            if processes.add_listening(Part::Broker, port) == 0 {
                eprintln!(
                    "[bench] no local process listens on the broker port {port}: its CPU is not \
                     counted"
                );
            }
        }
        processes.add_named(Part::Mysql, &["mariadbd", "mysqld"]);
        let jwt_secret = format!("bench-{}", Uuid::new_v4().simple());
        let token = TokenSigner::hs256(&jwt_secret).mint("coupon-bench", Role::Admin, 86_400)?;
        Ok(Self {
            http: crate::bearer_client(&token, 64)?,
            jwt_secret,
            token,
            pool: MySqlPool::connect(&args.database_url).await?,
            redis,
            processes,
            instances: AtomicUsize::new(0),
            prefix: format!("bench:{}:", &tag[..8]),
            issue_topic: format!("bench-issues-{tag}"),
            group: format!("bench-consumer-{tag}"),
            args,
        })
    }

    /// The first coupon-api instance's address.
    pub(super) fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.api_port)
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

    /// `coupon_issue_requests_total` by outcome, from the exporters of every running API
    /// instance, summed.
    pub(super) async fn outcomes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut outcomes = BTreeMap::new();
        for index in 0..self.instances.load(Ordering::Relaxed).max(1) {
            let text = self.metrics_text(self.api_port(index) + 1000).await?;
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("coupon_issue_requests_total{outcome=\"") {
                    if let Some((outcome, value)) = rest.split_once("\"} ") {
                        *outcomes.entry(outcome.to_owned()).or_insert(0) +=
                            value.trim().parse::<f64>()? as u64;
                    }
                }
            }
        }
        ensure!(
            !outcomes.is_empty(),
            "no coupon_issue_requests_total in the API's metrics"
        );
        Ok(outcomes)
    }

    /// The `issued` outcomes (202s, and admissions finished after the client left) the
    /// running API instances counted so far.
    pub(super) async fn issued(&self) -> anyhow::Result<u64> {
        Ok(self.outcomes().await?.get("issued").copied().unwrap_or(0))
    }

    /// Rows coupon-consumer number `index` inserted so far
    /// (`coupon_consumer_rows_inserted_total` of its exporter).
    pub(super) async fn consumer_rows(&self, index: usize) -> anyhow::Result<u64> {
        let port = self.api_port(index) + 1001;
        let text = self.metrics_text(port).await?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("coupon_consumer_rows_inserted_total "))
            .with_context(|| format!("no coupon_consumer_rows_inserted_total on :{port}"))?;
        Ok(value.trim().parse::<f64>()? as u64)
    }

    /// The Prometheus exposition a service serves on 127.0.0.1:`port`/metrics.
    async fn metrics_text(&self, port: u16) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await?
            .text()
            .await?)
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
        let store = self.admission_store();
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
                        stock_shards: coupon_core::domain::ShardCount::ONE,
                        correlation_id: coupon_core::domain::CorrelationId::parse(
                            uuid::Uuid::new_v4().to_string(),
                        )
                        .ok(),
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

    /// The API's admission calls on the benchmark's Redis connection and key prefix.
    pub(super) fn admission_store(&self) -> AdmissionStore {
        AdmissionStore::new(self.redis.clone(), RedisKeys::new(self.prefix.clone()))
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

    /// One wrk run against `base` + `path` (against every running API instance when `base` is
    /// [`Self::api_base`]); `expected` is the outcome every answer should have (None for the
    /// ceiling server, which has no outcomes). The run's CPU per request is read over wrk's
    /// run.
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
        // Several API instances: wrk's threads take them in turn.
        let instances = self.instances.load(Ordering::Relaxed);
        let spread = (base == self.api_base() && instances > 1).then(|| {
            (0..instances)
                .map(|i| format!("127.0.0.1:{}", self.api_port(i)))
                .collect::<Vec<_>>()
                .join(",")
        });
        let cpu_before = self.processes.sample();
        let wrk = wrk(
            &self.args,
            base,
            spread.as_deref(),
            path,
            users,
            seconds,
            &self.token,
        )?;
        let cpu = cpu_before.per_request(&self.processes.sample(), wrk.requests);
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
            cpu,
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

/// `redis://host:port` of `--redis-host` and `--redis-port` (a seed node on a cluster).
pub(super) fn redis_url(args: &IssueArgs) -> String {
    format!("redis://{}:{}", args.redis_host, args.redis_port)
}

/// Pids of the Redis servers the benchmark uses (`INFO server`'s `process_id`): the one node,
/// or every node of the cluster (masters and replicas, from `CLUSTER NODES`). Only local
/// processes can be sampled; a remote node's pid samples as nothing.
pub(super) async fn redis_pids(
    conn: &RedisConnection,
    args: &IssueArgs,
) -> anyhow::Result<Vec<u32>> {
    let nodes = match args.redis_mode {
        RedisMode::Single => vec![redis_url(args)],
        RedisMode::Cluster => {
            let listing: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn.clone())
                .await?;
            listing
                .lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .filter_map(|addr| addr.split('@').next())
                .map(|addr| format!("redis://{addr}"))
                .collect()
        }
    };
    let mut pids = Vec::new();
    for node in nodes {
        let mut one = redis::Client::open(node.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut one)
            .await?;
        if let Some(pid) = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}
