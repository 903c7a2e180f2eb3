//! The issue-path benchmark behind `make bench`, in one run on one machine:
//!
//! - **(a) ceilings**: the plain axum server of [`crate::ceiling`] under wrk; the admission
//!   script alone under `redis-benchmark` (with Redis' own CPU time per call from
//!   `INFO commandstats`); the broker's acknowledged produce rate for issue messages through
//!   [`IssuePublisher`] (the API's producer settings) and its consume rate to a plain consumer;
//! - **(b) issue, all admitted**: coupon-api (release) with the consumer stopped, wrk sending a
//!   fresh user id per request to a coupon whose stock never runs out;
//! - **(d) consumer drain**: per run, a topic pre-filled with issue messages, then
//!   coupon-consumer in a new group; rows/s from the first persisted row to the last;
//! - **(c) rejection path**: a sold-out coupon (after the consumer's sold-out broadcast, so the
//!   API's copy of the holders answers), then repeat users admitted by another instance (the
//!   script answers) and by the measured one (its memory of its admissions answers);
//! - **exactness**: for every coupon, rows in MySQL = `issued_quantity` = Redis `SCARD` = 202
//!   answers ≤ stock.
//!
//! Every load figure is `--runs` runs of `--seconds` s each at `--connections` connections
//! (after a 2 s warm-up), reported as min/median/max. Outcomes are counted by the API's own
//! `coupon_issue_requests_total`, scraped before and after each run. Writes `issue.json` and
//! `issue.md` into `--out-dir`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::Utc;
use coupon_core::admission::{self, AdmissionStore, AdmitOutcome, RedisKeys};
use coupon_core::domain::{CouponId, UserId};
use coupon_core::kafka::IssuePublisher;
use coupon_core::message::IssueMessage;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::MySqlPool;
use uuid::Uuid;

use coupon_core::auth::{Role, TokenSigner};

use crate::latency::Latencies;

/// Settings of `coupon-bench issue`.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueArgs {
    /// The coupon-api binary (release).
    #[arg(long, default_value = "target/release/coupon-api")]
    api_bin: PathBuf,
    /// The coupon-consumer binary (release).
    #[arg(long, default_value = "target/release/coupon-consumer")]
    consumer_bin: PathBuf,
    /// The wrk script.
    #[arg(long, default_value = "bench/wrk/issue.lua")]
    wrk_script: PathBuf,
    /// Measured runs per figure (count).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Length of one load run (s).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk connections, the same for every HTTP figure (count).
    #[arg(long, default_value_t = 128)]
    connections: u32,
    /// wrk threads (count).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Issue messages per produce-ceiling run (count).
    #[arg(long, default_value_t = 200_000)]
    produce_messages: usize,
    /// Publishes in flight during the produce ceiling (count); by default `--connections`, the
    /// most the API can have in flight (it answers 202 only after the acknowledgement).
    #[arg(long)]
    produce_concurrency: Option<usize>,
    /// Issue messages pre-filled per consumer-drain run (count).
    #[arg(long, default_value_t = 100_000)]
    drain_messages: usize,
    /// Measure only one part, for tuning: `kafka` (the broker ceilings), `drain` (the
    /// consumer drain), `issue` (figure (b)) or `rejection` (the (c) figures); coupon-api (and
    /// for `rejection` coupon-consumer) must be built, they are started for the coupons.
    #[arg(long)]
    only: Option<String>,
    /// The benchmark's own database (dropped and recreated).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/coupon_bench_issue")]
    database_url: String,
    /// Redis host for redis-benchmark and the services.
    #[arg(long, default_value = "127.0.0.1")]
    redis_host: String,
    /// Redis port.
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Partitions of the benchmark's topics. tansu's cost is per partition batch: with 64
    /// publishes in flight it acknowledged about 6,500 msg/s on 12 partitions and 11,300 on 3.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Port of coupon-api (its metrics port is this + 1000, the consumer's this + 1001, the
    /// ceiling server's this + 9).
    #[arg(long, default_value_t = 8090)]
    api_port: u16,
    /// Where `issue.json` and `issue.md` go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Where the services' logs go.
    #[arg(long, default_value = ".local/bench")]
    log_dir: PathBuf,
}

/// One load run: rate, latency (ms) and failures.
#[derive(Debug, Clone, Copy, Serialize)]
struct Run {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Transport errors, timeouts and answers other than the expected outcome (count).
    errors: u64,
}

impl Run {
    /// A run measured as a rate only (no per-request latencies, no errors counted).
    fn rate_only(requests: u64, rps: f64) -> Self {
        Self {
            requests,
            rps,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            p999_ms: f64::NAN,
            max_ms: f64::NAN,
            errors: 0,
        }
    }
}

/// Runs of one figure with min/median/max of the rate and the median run's latencies.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    name: String,
    runs: Vec<Run>,
    rps_min: f64,
    rps_median: f64,
    rps_max: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    note: String,
}

impl Figure {
    fn new(name: &str, runs: Vec<Run>, note: String) -> Self {
        let mut by_rate = runs.clone();
        by_rate.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let median = by_rate[by_rate.len() / 2];
        Self {
            name: name.to_owned(),
            rps_min: by_rate[0].rps,
            rps_median: median.rps,
            rps_max: by_rate[by_rate.len() - 1].rps,
            p50_ms: median.p50_ms,
            p99_ms: median.p99_ms,
            p999_ms: median.p999_ms,
            errors: runs.iter().map(|r| r.errors).sum(),
            runs,
            note,
        }
    }
}

/// A child process stopped (SIGTERM, then waited for) when dropped.
struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    fn stop(mut self) {
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

struct Bench {
    args: IssueArgs,
    /// Sends [`Self::token`] with every request.
    http: reqwest::Client,
    /// HS256 secret the benchmark's coupon-api checks tokens with (random per run).
    jwt_secret: String,
    /// Admin token, acting for the user each request names: wrk cannot sign a token per
    /// user, and checking one costs coupon-api the same HS256 verification as a user token.
    token: String,
    pool: MySqlPool,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
    issue_topic: String,
    group: String,
}

impl Bench {
    fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.api_port)
    }

    fn metrics_port(&self) -> u16 {
        self.args.api_port + 1000
    }

    fn service_env(&self, command: &mut Command) {
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

    fn spawn(&self, name: &'static str, mut command: Command) -> anyhow::Result<Service> {
        std::fs::create_dir_all(&self.args.log_dir)?;
        let log = std::fs::File::create(self.args.log_dir.join(format!("{name}.log")))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Service { name, child })
    }

    async fn start_api(&self) -> anyhow::Result<Service> {
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
    fn start_consumer(&self, topic: Option<&str>, group: &str) -> anyhow::Result<Service> {
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
    async fn outbox_relayed(&self) -> anyhow::Result<()> {
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
    async fn outcomes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
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
    async fn settled_outcomes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
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

    async fn create_coupon(&self, stock: i64) -> anyhow::Result<CouponId> {
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
    async fn issue_users(
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
    async fn admit_elsewhere(
        &self,
        coupon: CouponId,
        users: std::ops::RangeInclusive<i64>,
    ) -> anyhow::Result<u64> {
        let redis_url = format!("redis://{}:{}", self.args.redis_host, self.args.redis_port);
        let store = AdmissionStore::new(
            admission::connect(&redis_url, Duration::from_secs(2)).await?,
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
                    if store.admit(coupon, user).await? != AdmitOutcome::Admitted {
                        return Ok(0);
                    }
                    let message = IssueMessage {
                        coupon_id: coupon,
                        user_id: user,
                        request_id: Uuid::now_v7(),
                        admitted_at: Utc::now(),
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

    async fn issued_quantity(&self, coupon: CouponId) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT issued_quantity FROM coupons WHERE id = ?")
                .bind(coupon.get())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn admitted(&self, coupon: CouponId) -> anyhow::Result<i64> {
        let key = format!("{}coupon:{{{coupon}}}:issued", self.prefix);
        Ok(redis::cmd("SCARD")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await?)
    }

    /// One wrk run against `base` + `path`; `expected` is the outcome every answer should have
    /// (None for the ceiling server, which has no outcomes).
    async fn load_run(
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
                total - good
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

    /// A 2 s warm-up, then `--runs` measured runs.
    async fn figure(
        &self,
        name: &str,
        base: &str,
        path: &str,
        mut users: impl FnMut(usize) -> UserPlan,
        expected: Option<&str>,
    ) -> anyhow::Result<Vec<Run>> {
        eprintln!("[bench] {name}: warm-up");
        self.load_run(base, path, &users(0), 2, None).await?;
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

/// Which user ids a wrk run sends.
enum UserPlan {
    /// A new id per request, from `start` on.
    Fresh { start: i64 },
    /// `start ..= start + count - 1` in turn.
    Cycle { start: i64, count: i64 },
}

/// wrk's own figures (`WRK_JSON` line of bench/wrk/issue.lua).
#[derive(Debug, serde::Deserialize)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    status_errors: u64,
    timeouts: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

fn wrk(
    args: &IssueArgs,
    base: &str,
    path: &str,
    users: &UserPlan,
    seconds: u64,
    token: &str,
) -> anyhow::Result<WrkResult> {
    let (mode, start, count) = match users {
        UserPlan::Fresh { start } => ("fresh", *start, 0),
        UserPlan::Cycle { start, count } => ("cycle", *start, *count),
    };
    let output = Command::new("wrk")
        .env("BENCH_TOKEN", token)
        .arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&args.wrk_script)
        .arg(base)
        .arg("--")
        .args([
            path.to_owned(),
            mode.to_owned(),
            start.to_string(),
            count.to_string(),
            args.threads.to_string(),
        ])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .with_context(|| {
            format!(
                "wrk printed no result: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    Ok(serde_json::from_str(line)?)
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
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

async fn create_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &options,
        )
        .await?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code:?}"))?;
    }
    Ok(())
}

/// The admission script alone: `redis-benchmark` sends `EVALSHA` with a random user per call
/// to an unlimited stock key, without and with pipelining; Redis' CPU per call comes from the
/// `INFO commandstats` difference.
async fn redis_ceiling(bench: &Bench) -> anyhow::Result<(Figure, Figure, f64)> {
    let mut conn = bench.redis.clone();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(coupon_core::admission::ADMIT_SCRIPT)
        .query_async(&mut conn)
        .await?;
    let issued = format!("{}ceiling:{{0}}:issued", bench.prefix);
    let stock = format!("{}ceiling:{{0}}:stock", bench.prefix);
    let _: () = redis::cmd("SET")
        .arg(&stock)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let commandstats = |conn: redis::aio::MultiplexedConnection| async move {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn.clone())
            .await?;
        // cmdstat_evalsha:calls=N,usec=U,...
        let line = info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .unwrap_or("cmdstat_evalsha:calls=0,usec=0");
        let field = |name: &str| -> f64 {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        anyhow::Ok((field("calls="), field("usec=")))
    };
    let mut figures = Vec::new();
    let mut cpu = (0.0, 0.0);
    for (name, clients, pipeline) in [
        ("redis-benchmark EVALSHA admit, 64 clients", 64, 1),
        (
            "redis-benchmark EVALSHA admit, 8 clients × pipeline 16",
            8,
            16,
        ),
    ] {
        let mut runs = Vec::new();
        for _ in 0..bench.args.runs {
            let before = commandstats(conn.clone()).await?;
            let output = Command::new("redis-benchmark")
                .args(["-h", &bench.args.redis_host])
                .args(["-p", &bench.args.redis_port.to_string()])
                .args(["-c", &clients.to_string()])
                .args(["-P", &pipeline.to_string()])
                .args(["-n", "1000000", "-r", "1000000000", "--csv"])
                .args(["EVALSHA", &sha, "2", &issued, &stock, "__rand_int__"])
                .output()
                .context("running redis-benchmark (apt-get install redis-tools)")?;
            let after = commandstats(conn.clone()).await?;
            cpu.0 += after.0 - before.0;
            cpu.1 += after.1 - before.1;
            let stdout = String::from_utf8_lossy(&output.stdout);
            // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
            let row = stdout
                .lines()
                .nth(1)
                .with_context(|| format!("redis-benchmark printed: {stdout}"))?;
            let fields: Vec<f64> = row
                .split("\",\"")
                .skip(1)
                .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
                .collect();
            ensure!(fields.len() >= 7, "unexpected redis-benchmark row: {row}");
            runs.push(Run {
                requests: 1_000_000,
                rps: fields[0],
                p50_ms: fields[3],
                p99_ms: fields[5],
                p999_ms: f64::NAN,
                max_ms: fields[6],
                errors: 0,
            });
            let _: () = redis::cmd("DEL")
                .arg(&issued)
                .query_async(&mut conn)
                .await?;
        }
        eprintln!(
            "[bench] {name}: {:?}",
            runs.iter().map(|r| r.rps.round()).collect::<Vec<_>>()
        );
        figures.push(Figure::new(
            name,
            runs,
            "1,000,000 calls per run; redis-benchmark reports no p99.9".into(),
        ));
    }
    let usec_per_call = if cpu.0 > 0.0 { cpu.1 / cpu.0 } else { 0.0 };
    let _: () = redis::cmd("DEL").arg(&stock).query_async(&mut conn).await?;
    let pipelined = figures.pop().context("two figures")?;
    let plain = figures.pop().context("two figures")?;
    Ok((plain, pipelined, usec_per_call))
}

/// The broker's acknowledged produce rate of issue messages through [`IssuePublisher`] with
/// `--produce-concurrency` publishes in flight, then the rate a plain consumer reads them back.
async fn kafka_ceilings(bench: &Bench) -> anyhow::Result<(Figure, Figure)> {
    let args = &bench.args;
    let topic = format!("bench-produce-{}", Uuid::new_v4().simple());
    create_topic(&args.kafka_brokers, &topic, args.partitions).await?;
    let publisher = IssuePublisher::new(&args.kafka_brokers, &topic, Duration::from_secs(30))?;
    let coupon = CouponId::parse(1)?;
    let produce_concurrency = args
        .produce_concurrency
        .unwrap_or(args.connections as usize);
    let mut runs = Vec::new();
    let mut user = 0_i64;
    for _ in 0..args.runs {
        let started = Instant::now();
        let first_user = user + 1;
        user += args.produce_messages as i64;
        let (failures, latencies) =
            publish_users(&publisher, coupon, first_user..=user, produce_concurrency).await;
        let elapsed = started.elapsed().as_secs_f64();
        let summary = latencies.summary();
        let run = Run {
            requests: args.produce_messages as u64,
            rps: args.produce_messages as f64 / elapsed,
            p50_ms: summary.p50_ms,
            p99_ms: summary.p99_ms,
            p999_ms: summary.p999_ms,
            max_ms: summary.max_ms,
            errors: failures as u64,
        };
        eprintln!(
            "[bench] kafka produce: {:.0} msg/s, p99 {:.2} ms",
            run.rps, run.p99_ms
        );
        runs.push(run);
    }
    let produce = Figure::new(
        "broker produce (acks=all, API producer settings)",
        runs,
        format!(
            "{} issue messages per run, {} in flight",
            args.produce_messages, produce_concurrency
        ),
    );

    // Read everything back, once per run, each time with a new group from the earliest offset.
    let total = (args.produce_messages * args.runs) as u64;
    let mut consume_runs = Vec::new();
    for _ in 0..args.runs {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &args.kafka_brokers)
            .set(
                "group.id",
                format!("bench-read-{}", Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        consumer.subscribe(&[&topic])?;
        let mut stream = consumer.stream();
        let mut read = 0_u64;
        let mut first = None;
        while read < total {
            let next = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
            match next {
                Ok(Some(Ok(_))) => {
                    first.get_or_insert_with(Instant::now);
                    read += 1;
                }
                Ok(Some(Err(err))) => bail!("reading back: {err}"),
                Ok(None) | Err(_) => bail!("reading back stalled after {read} of {total}"),
            }
        }
        let elapsed = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let rps = total as f64 / elapsed;
        eprintln!("[bench] kafka consume: {rps:.0} msg/s");
        consume_runs.push(Run::rate_only(total, rps));
    }
    let consume = Figure::new(
        "broker consume (plain consumer)",
        consume_runs,
        format!("{total} messages per run, from the first message to the last"),
    );
    Ok((produce, consume))
}

/// Runs the whole benchmark and writes the report.
///
/// # Errors
/// A tool or service is missing or failed, or the exactness check failed (the report is still
/// written first).
pub async fn run(args: IssueArgs) -> anyhow::Result<()> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
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
    let jwt_secret = format!("bench-{}", Uuid::new_v4().simple());
    let token = TokenSigner::hs256(&jwt_secret).mint("coupon-bench", Role::Admin, 86_400)?;
    let bench = Bench {
        http: crate::bearer_client(&token, 64)?,
        jwt_secret,
        token,
        pool: MySqlPool::connect(&args.database_url).await?,
        redis: redis_client.get_multiplexed_async_connection().await?,
        prefix: format!("bench:{}:", &tag[..8]),
        issue_topic: format!("bench-issues-{tag}"),
        group: format!("bench-consumer-{tag}"),
        args,
    };
    let args = &bench.args;

    match args.only.as_deref() {
        Some("kafka") => return kafka_ceilings(&bench).await.map(drop),
        Some("drain") => {
            let _api = bench.start_api().await?;
            for _ in 0..args.runs {
                drain(&bench).await?;
            }
            return Ok(());
        }
        Some("issue") => {
            let _api = bench.start_api().await?;
            let open = bench.create_coupon(1_000_000_000).await?;
            let path = format!("/api/v1/coupons/{open}/issues");
            bench
                .figure(
                    "(b) issue, all admitted",
                    &bench.api_base(),
                    &path,
                    |i| UserPlan::Fresh {
                        start: 1 + i as i64 * 100_000_000,
                    },
                    Some("issued"),
                )
                .await?;
            return Ok(());
        }
        Some("rejection") => {
            let _api = bench.start_api().await?;
            let _consumer = bench.start_consumer(None, &bench.group)?;
            rejection(&bench, 1_000_000_000).await?;
            return Ok(());
        }
        Some(other) => bail!("--only takes kafka, drain, issue or rejection, not {other}"),
        None => {}
    }

    // (a) The ceilings.
    let ceiling_port = args.api_port + 9;
    let mut ceiling_command = Command::new(std::env::current_exe()?);
    ceiling_command.args([
        "ceiling-server",
        "--listen",
        &format!("127.0.0.1:{ceiling_port}"),
    ]);
    let ceiling_server = bench.spawn("ceiling-server", ceiling_command)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ceiling_base = format!("http://127.0.0.1:{ceiling_port}");
    let axum = bench
        .figure(
            "(a) plain axum",
            &ceiling_base,
            "/api/v1/coupons/1/issues",
            |i| UserPlan::Fresh {
                start: 1 + i as i64 * 100,
            },
            None,
        )
        .await?;
    ceiling_server.stop();
    let axum = Figure::new(
        "(a) plain axum: same extractors and 202 body, no I/O",
        axum,
        String::new(),
    );
    let (redis_plain, redis_pipelined, redis_usec_per_call) = redis_ceiling(&bench).await?;
    let (produce, consume) = kafka_ceilings(&bench).await?;

    let api = bench.start_api().await?;
    let base = bench.api_base();
    let stock = 1_000_000_000;

    // (d) The consumer's drain rate from a pre-filled topic, one topic and group per run.
    let mut drain_runs = Vec::new();
    for _ in 0..args.runs {
        drain_runs.push(drain(&bench).await?);
    }
    let drain_figure = Figure::new(
        "(d) consumer drain into MySQL (rows/s)",
        drain_runs,
        format!(
            "{} issue messages pre-filled per run; from the first persisted row to the last",
            args.drain_messages
        ),
    );

    // (b) The issue endpoint, every request admitted (consumer not running).
    let open = bench.create_coupon(stock).await?;
    let path = format!("/api/v1/coupons/{open}/issues");
    let admitted_before = bench.outcomes().await?.get("issued").copied().unwrap_or(0);
    let issue_runs = bench
        .figure(
            "(b) issue, all admitted",
            &base,
            &path,
            |i| UserPlan::Fresh {
                start: 1 + i as i64 * 100_000_000,
            },
            Some("issued"),
        )
        .await?;
    let open_accepted =
        bench.outcomes().await?.get("issued").copied().unwrap_or(0) - admitted_before;
    let issue = Figure::new(
        "(b) issue endpoint, every request admitted",
        issue_runs,
        "consumer stopped during the runs".into(),
    );

    // From here on the consumer runs: it persists (b)'s messages and relays their events
    // (both waited for, so they do not share the CPU with (c)) and broadcasts the sell-out.
    let consumer = bench.start_consumer(None, &bench.group)?;
    let backlog = bench.admitted(open).await?;
    wait_for(
        "(b)'s messages persisted",
        Duration::from_secs(600),
        || async { (bench.issued_quantity(open).await.ok()? >= backlog).then_some(()) },
    )
    .await?;
    bench.outbox_relayed().await?;

    // (c) The rejection path: a sold-out coupon, then repeat users.
    let rejection = rejection(&bench, stock).await?;

    // Exactness: persist everything, then compare every count.
    for coupon in [
        open,
        rejection.sold_out,
        rejection.repeat,
        rejection.repeat_here,
    ] {
        let admitted = bench.admitted(coupon).await?;
        wait_for("the final drain", Duration::from_secs(600), || async {
            (bench.issued_quantity(coupon).await.ok()? >= admitted).then_some(())
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.stop();
    api.stop();
    let mut exactness = Vec::new();
    for (coupon, stock, accepted) in [
        (open, stock, open_accepted),
        (rejection.sold_out, 1_000, rejection.sold_out_accepted),
        (rejection.repeat, stock, rejection.repeat_accepted),
        (rejection.repeat_here, stock, rejection.repeat_here_accepted),
    ] {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues WHERE coupon_id = ?")
                .bind(coupon.get())
                .fetch_one(&bench.pool)
                .await?;
        let distinct: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT user_id) FROM coupon_issues WHERE coupon_id = ?",
        )
        .bind(coupon.get())
        .fetch_one(&bench.pool)
        .await?;
        let issued_quantity = bench.issued_quantity(coupon).await?;
        let admitted = bench.admitted(coupon).await?;
        let exact = rows == issued_quantity
            && rows == admitted
            && rows == distinct
            && u64::try_from(rows).ok() == Some(accepted)
            && rows <= stock;
        exactness.push(json!({
            "coupon_id": coupon, "stock": stock, "admitted": accepted, "rows": rows,
            "distinct_users": distinct, "issued_quantity": issued_quantity,
            "redis_scard": admitted, "exact": exact,
        }));
    }

    let report = Report::new(
        &bench,
        axum,
        redis_plain,
        redis_pipelined,
        redis_usec_per_call,
        produce,
        consume,
        issue,
        rejection.sold_out_figure,
        rejection.repeat_figure,
        rejection.repeat_here_figure,
        drain_figure,
        exactness,
    );
    std::fs::create_dir_all(&args.out_dir)?;
    let json_path = args.out_dir.join("issue.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let markdown = report.markdown();
    std::fs::write(args.out_dir.join("issue.md"), &markdown)?;
    println!("{markdown}");
    ensure!(
        report.exactness.iter().all(|e| e["exact"] == json!(true)),
        "EXACTNESS FAILED: {:?}",
        report.exactness
    );
    Ok(())
}

/// The two (c) figures and the coupons they used.
struct Rejection {
    sold_out: CouponId,
    sold_out_accepted: u64,
    sold_out_figure: Figure,
    repeat: CouponId,
    repeat_accepted: u64,
    repeat_figure: Figure,
    repeat_here: CouponId,
    repeat_here_accepted: u64,
    repeat_here_figure: Figure,
}

/// (c) The rejection path, with coupon-api and the consumer running: a 1,000-unit coupon sold
/// out (measured after the consumer's sold-out broadcast), then two `stock`-unit coupons whose
/// 10,000 users all hold one and ask again: admitted by another instance, then by this one.
async fn rejection(bench: &Bench, stock: i64) -> anyhow::Result<Rejection> {
    let base = bench.api_base();
    let sold_out = bench.create_coupon(1_000).await?;
    let sold_out_accepted = bench.issue_users(sold_out, 1..=1_000).await?;
    wait_for(
        "the sold-out coupon persisted",
        Duration::from_secs(300),
        || async { (bench.issued_quantity(sold_out).await.ok()? == 1_000).then_some(()) },
    )
    .await?;
    // The sold-out broadcast follows the batch that filled the stock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sold_out_runs = bench
        .figure(
            "(c) sold out",
            &base,
            &format!("/api/v1/coupons/{sold_out}/issues"),
            |i| UserPlan::Fresh {
                start: 1_000_000 + i as i64 * 100_000_000,
            },
            Some("sold_out"),
        )
        .await?;
    // Repeat users, twice: admitted by another instance (this one asks the admission script,
    // which answers ALREADY_ISSUED), then admitted by this instance (which remembers them).
    let repeat_users = 10_000;
    let base = &base;
    let repeat_figure = |name: &'static str, coupon: CouponId| async move {
        let path = format!("/api/v1/coupons/{coupon}/issues");
        let users = |_| UserPlan::Cycle {
            start: 1,
            count: repeat_users,
        };
        bench
            .figure(name, base, &path, users, Some("duplicate"))
            .await
    };
    let repeat = bench.create_coupon(stock).await?;
    let repeat_accepted = bench.admit_elsewhere(repeat, 1..=repeat_users).await?;
    let repeat_runs = repeat_figure("(c) repeat users, admitted elsewhere", repeat).await?;
    let repeat_here = bench.create_coupon(stock).await?;
    let repeat_here_accepted = bench.issue_users(repeat_here, 1..=repeat_users).await?;
    let repeat_here_runs = repeat_figure("(c) repeat users, admitted here", repeat_here).await?;
    let rejection_sold_out = Figure::new(
        "(c) sold-out coupon (holders copied after the sell-out broadcast)",
        sold_out_runs,
        "1,000 in stock, all issued; a new user per request".into(),
    );
    let rejection_repeat = Figure::new(
        "(c) repeat users admitted by another instance (admission script)",
        repeat_runs,
        format!("{repeat_users} users each holding one, asking again"),
    );
    let rejection_repeat_here = Figure::new(
        "(c) repeat users admitted by this instance (its memory)",
        repeat_here_runs,
        format!("{repeat_users} users each holding one, asking again"),
    );
    Ok(Rejection {
        sold_out,
        sold_out_accepted,
        sold_out_figure: rejection_sold_out,
        repeat,
        repeat_accepted,
        repeat_figure: rejection_repeat,
        repeat_here,
        repeat_here_accepted,
        repeat_here_figure: rejection_repeat_here,
    })
}

/// Publishes one issue message per user of `users` for `coupon`, `concurrency` at a time, as the
/// API would after admitting them; returns the unacknowledged count and every publish's
/// latency.
async fn publish_users(
    publisher: &IssuePublisher,
    coupon: CouponId,
    users: std::ops::RangeInclusive<i64>,
    concurrency: usize,
) -> (usize, Latencies) {
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let failures = futures::stream::iter(users)
        .map(|user| {
            let latencies = Arc::clone(&latencies);
            async move {
                let message = IssueMessage {
                    coupon_id: coupon,
                    user_id: UserId::parse(user).ok()?,
                    request_id: Uuid::now_v7(),
                    admitted_at: Utc::now(),
                };
                let sent = Instant::now();
                let result = publisher.publish(&message).await;
                if let Ok(mut l) = latencies.lock() {
                    l.record(sent.elapsed());
                }
                result.err().map(|_| ())
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|failed| async move { failed })
        .count()
        .await;
    let latencies = Arc::try_unwrap(latencies)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default();
    (failures, latencies)
}

/// One drain run: a new coupon and topic, `--drain-messages` issue messages published to it
/// (as the API would, one per user), then a consumer in a new group; rows/s from the first
/// persisted row to the last.
async fn drain(bench: &Bench) -> anyhow::Result<Run> {
    let args = &bench.args;
    let total = args.drain_messages as i64;
    let coupon = bench.create_coupon(total).await?;
    // The consumer persists only users in the admission set (an undone admission's message
    // is dead-lettered): admit every user first, as the API would have.
    let redis_url = format!("redis://{}:{}", args.redis_host, args.redis_port);
    let store = AdmissionStore::new(
        admission::connect(&redis_url, Duration::from_secs(2)).await?,
        RedisKeys::new(bench.prefix.clone()),
    );
    let users: Vec<i64> = (1..=total).collect();
    store.add_members(coupon, &users).await?;
    let topic = format!("{}-drain-{coupon}", bench.issue_topic);
    create_topic(&args.kafka_brokers, &topic, args.partitions).await?;
    let publisher = IssuePublisher::new(&args.kafka_brokers, &topic, Duration::from_secs(30))?;
    let (failed, _) = publish_users(&publisher, coupon, 1..=total, 1024).await;
    ensure!(failed == 0, "{failed} drain messages were not acknowledged");
    let consumer = bench.start_consumer(Some(&topic), &format!("{}-{coupon}", bench.group))?;
    let (first_at, first_count) = wait_for(
        "the first persisted row",
        Duration::from_secs(120),
        || async {
            let now = bench.issued_quantity(coupon).await.ok()?;
            (now > 0).then(|| (Instant::now(), now))
        },
    )
    .await?;
    wait_for("the drain", Duration::from_secs(600), || async {
        (bench.issued_quantity(coupon).await.ok()? >= total).then_some(())
    })
    .await?;
    let elapsed = first_at.elapsed().as_secs_f64();
    // Let the outbox relay publish this run's ISSUED events, so the next run starts clean.
    bench.outbox_relayed().await?;
    consumer.stop();
    let rps = (total - first_count) as f64 / elapsed;
    eprintln!("[bench] (d) drain: {total} rows, {rps:.0} rows/s");
    Ok(Run::rate_only(total as u64, rps))
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    cores: usize,
    load_generator: String,
    figures: Vec<Figure>,
    redis_cpu_us_per_admission: f64,
    ratios: BTreeMap<String, f64>,
    bottleneck: String,
    targets: Vec<Value>,
    exactness: Vec<Value>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        bench: &Bench,
        axum: Figure,
        redis_plain: Figure,
        redis_pipelined: Figure,
        redis_usec_per_call: f64,
        produce: Figure,
        consume: Figure,
        issue: Figure,
        sold_out: Figure,
        repeat: Figure,
        repeat_here: Figure,
        drain: Figure,
        exactness: Vec<Value>,
    ) -> Self {
        let args = &bench.args;
        // The parts' ceilings: the best rate each part reached alone.
        let redis_best = redis_plain.rps_median.max(redis_pipelined.rps_median);
        let parts = [
            ("plain axum", axum.rps_median),
            ("admission script (Redis)", redis_best),
            ("broker produce", produce.rps_median),
        ];
        let (bottleneck, tightest) = parts
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("none", f64::NAN));
        let ratios: BTreeMap<String, f64> = [
            ("(b) / (a) plain axum", issue.rps_median / axum.rps_median),
            ("(b) / admission script", issue.rps_median / redis_best),
            (
                "(b) / broker produce",
                issue.rps_median / produce.rps_median,
            ),
            ("(b) / tightest ceiling", issue.rps_median / tightest),
            ("(c) sold out / (a)", sold_out.rps_median / axum.rps_median),
            (
                "(c) repeat, admitted elsewhere / (a)",
                repeat.rps_median / axum.rps_median,
            ),
            (
                "(c) repeat, admitted here / (a)",
                repeat_here.rps_median / axum.rps_median,
            ),
            (
                "(d) / broker consume",
                drain.rps_median / consume.rps_median,
            ),
        ]
        .into_iter()
        .map(|(ratio, value)| (ratio.to_owned(), value))
        .collect();
        let drain_target = 30_000_f64.min(0.8 * consume.rps_median);
        let target = |what: &str, pass: bool, detail: String| json!({"target": what, "pass": pass, "measured": detail});
        let targets = vec![
            target(
                "(b) >= 20,000 req/s",
                issue.rps_median >= 20_000.0,
                format!("{:.0} req/s", issue.rps_median),
            ),
            target(
                "(b) p99 < 15 ms",
                issue.p99_ms < 15.0,
                format!("{:.2} ms", issue.p99_ms),
            ),
            target(
                "(b) >= 80 % of the tightest ceiling",
                issue.rps_median >= 0.8 * tightest,
                format!(
                    "{:.0} % of {bottleneck} ({tightest:.0}/s)",
                    100.0 * issue.rps_median / tightest
                ),
            ),
            target(
                "(c) >= 50 % of (a)",
                sold_out
                    .rps_median
                    .min(repeat.rps_median)
                    .min(repeat_here.rps_median)
                    >= 0.5 * axum.rps_median,
                format!(
                    "sold out {:.0} %, repeat admitted elsewhere {:.0} %, admitted here {:.0} %",
                    100.0 * sold_out.rps_median / axum.rps_median,
                    100.0 * repeat.rps_median / axum.rps_median,
                    100.0 * repeat_here.rps_median / axum.rps_median
                ),
            ),
            target(
                "(d) >= 30,000 rows/s or >= 80 % of broker consume",
                drain.rps_median >= drain_target,
                format!("{:.0} rows/s (target {drain_target:.0})", drain.rps_median),
            ),
        ];
        Self {
            date: Utc::now().to_rfc3339(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            load_generator: format!(
                "wrk 4.1 -t{} -c{} -d{}s, {} runs after a 2 s warm-up",
                args.threads, args.connections, args.seconds, args.runs
            ),
            figures: vec![
                axum,
                redis_plain,
                redis_pipelined,
                produce,
                consume,
                issue,
                sold_out,
                repeat,
                repeat_here,
                drain,
            ],
            redis_cpu_us_per_admission: redis_usec_per_call,
            ratios,
            bottleneck: format!("{bottleneck} ({tightest:.0}/s)"),
            targets,
            exactness,
        }
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Issue-path benchmark\n\n{} · {} cores · {} · everything (load generator, services, \
             Redis, broker, MariaDB) on the same machine\n",
            &self.date[..10],
            self.cores,
            self.load_generator
        );
        let _ = writeln!(
            md,
            "| figure | rate/s min | median | max | p50 ms | p99 ms | p99.9 ms | errors | note |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        let ms = |v: f64| {
            if v.is_nan() {
                "–".to_owned()
            } else {
                format!("{v:.2}")
            }
        };
        for f in &self.figures {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                f.name,
                f.rps_min,
                f.rps_median,
                f.rps_max,
                ms(f.p50_ms),
                ms(f.p99_ms),
                ms(f.p999_ms),
                f.errors,
                f.note
            );
        }
        let _ = writeln!(
            md,
            "\nRedis CPU per admission script call: {:.2} µs (`INFO commandstats`).\n\n\
             Tightest standalone ceiling: **{}**.\n\n| ratio | value |\n| --- | ---: |",
            self.redis_cpu_us_per_admission, self.bottleneck
        );
        for (name, value) in &self.ratios {
            let _ = writeln!(md, "| {name} | {:.0} % |", value * 100.0);
        }
        let _ = writeln!(md, "\n| target | measured | met |\n| --- | --- | --- |");
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t["target"].as_str().unwrap_or(""),
                t["measured"].as_str().unwrap_or(""),
                if t["pass"] == json!(true) {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        let _ = writeln!(
            md,
            "\nAdmitted = `coupon_issue_requests_total{{outcome=\"issued\"}}`: answered 202, or admitted and \
             published after wrk closed the connection at the end of a run.\n\n\
             | coupon | stock | admitted | rows | distinct users | issued_quantity | Redis SCARD | exact |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for e in &self.exactness {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                e["coupon_id"],
                e["stock"],
                e["admitted"],
                e["rows"],
                e["distinct_users"],
                e["issued_quantity"],
                e["redis_scard"],
                if e["exact"] == json!(true) {
                    "EXACT"
                } else {
                    "**MISMATCH**"
                }
            );
        }
        md
    }
}
