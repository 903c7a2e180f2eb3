//! The processes the issue benchmark starts ([`Service`]: coupon-api instances, coupon-consumer
//! processes, the ceiling server), their environment and ports, and the Redis servers whose CPU
//! it samples.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use coupon_core::store::redis::{RedisConnection, RedisMode};

use super::harness::{wait_for, Bench};
use super::IssueArgs;
use crate::cpu::Part;

/// A child process stopped (SIGTERM, then waited for) when dropped.
pub(super) struct Service {
    name: String,
    child: Child,
}

impl Service {
    pub(super) fn stop(mut self) {
        self.terminate();
    }

    /// Sends the process signal `name` (`STOP`, `CONT`).
    ///
    /// # Errors
    /// `kill` failed or the process is gone.
    pub(super) fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {} failed", self.name);
        Ok(())
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

impl Bench {
    /// Port of coupon-api instance `index` (from 0): `--api-port` + 10 × `index`.
    pub(super) fn api_port(&self, index: usize) -> u16 {
        self.args.api_port + 10 * index as u16
    }

    /// The Redis URL the services get (`REDIS_URL`).
    pub(super) fn redis_url(&self) -> String {
        redis_url(&self.args)
    }

    pub(super) fn service_env(&self, command: &mut Command) {
        command
            .env("DATABASE_URL", &self.args.database_url)
            .env("REDIS_URL", self.redis_url())
            .env(
                "REDIS_MODE",
                match self.args.redis_mode {
                    RedisMode::Single => "single",
                    RedisMode::Cluster => "cluster",
                },
            )
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("KAFKA_BROKERS", &self.args.kafka_brokers)
            .env("KAFKA_ISSUE_TOPIC", &self.issue_topic)
            .env("KAFKA_ISSUE_PARTITIONS", self.args.partitions.to_string())
            .env(
                "KAFKA_TOPIC_REPLICATION_FACTOR",
                self.args.replication_factor.to_string(),
            )
            .env("JWT_SECRET", &self.jwt_secret)
            // wrk is one client address: the per-address limit would refuse most requests.
            .env("RATE_LIMITS", "off")
            .env("RUST_LOG", "warn,coupon_consumer=info");
        if let Some(min_insync) = self.args.min_insync_replicas {
            command.env("KAFKA_TOPIC_MIN_INSYNC_REPLICAS", min_insync.to_string());
        }
    }

    /// Starts `command` as service `name` (its log: `--log-dir`/`name`.log) and samples its
    /// CPU as `part`'s.
    pub(super) fn spawn(
        &self,
        name: &str,
        part: Part,
        mut command: Command,
    ) -> anyhow::Result<Service> {
        std::fs::create_dir_all(&self.args.log_dir)?;
        let log = std::fs::File::create(self.args.log_dir.join(format!("{name}.log")))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.processes.add(part, child.id());
        Ok(Service {
            name: name.to_owned(),
            child,
        })
    }

    /// One coupon-api instance, once it answers `/ready`.
    pub(super) async fn start_api(&self) -> anyhow::Result<Service> {
        let mut services = self.start_apis(1, &[]).await?;
        Ok(services.remove(0))
    }

    /// `count` coupon-api instances with `env` added to their environment, once all answer
    /// `/ready`; instance `i` listens on `--api-port` + 10 i (its metrics on that + 1000).
    pub(super) async fn start_apis(
        &self,
        count: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Vec<Service>> {
        let mut services = Vec::new();
        for index in 0..count {
            let port = self.api_port(index);
            let mut command = Command::new(&self.args.api_bin);
            self.service_env(&mut command);
            command
                .env("API_LISTEN", format!("127.0.0.1:{port}"))
                .env("METRICS_LISTEN", format!("127.0.0.1:{}", port + 1000))
                .envs(env.iter().copied());
            let name = match index {
                0 => "coupon-api".to_owned(),
                _ => format!("coupon-api-{index}"),
            };
            services.push(self.spawn(&name, Part::Api, command)?);
        }
        for index in 0..count {
            let ready = format!("http://127.0.0.1:{}/ready", self.api_port(index));
            wait_for("coupon-api /ready", Duration::from_secs(60), || async {
                let response = self.http.get(&ready).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await?;
        }
        self.instances.store(count, Ordering::Relaxed);
        Ok(services)
    }

    /// coupon-consumer on `topic` (the issue topic unless given) in `group`.
    pub(super) fn start_consumer(
        &self,
        topic: Option<&str>,
        group: &str,
    ) -> anyhow::Result<Service> {
        self.start_consumer_at(0, topic, group)
    }

    /// coupon-consumer number `index` (from 0) on `topic` (the issue topic unless given) in
    /// `group`; its metrics on `--api-port` + 1001 + 10 `index`.
    pub(super) fn start_consumer_at(
        &self,
        index: usize,
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
                format!("127.0.0.1:{}", self.api_port(index) + 1001),
            );
        self.spawn(&consumer_name(index), Part::Consumer, command)
    }

    /// Partitions of `topic` that coupon-consumer `index` holds, from the last "partitions
    /// assigned" or "partitions revoked" line of its log that names `topic` (0 before its
    /// first assignment, or after a revocation).
    pub(super) fn assigned_partitions(&self, index: usize, topic: &str) -> usize {
        let log = self
            .args
            .log_dir
            .join(format!("{}.log", consumer_name(index)));
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let named = format!("\"{topic}:");
        log.lines()
            .rev()
            .find(|l| {
                l.contains(&named)
                    && (l.contains("partitions assigned") || l.contains("partitions revoked"))
            })
            .filter(|l| l.contains("partitions assigned"))
            .map_or(0, |l| l.matches(&named).count())
    }
}

/// The name (and log file stem) of coupon-consumer `index`.
fn consumer_name(index: usize) -> String {
    match index {
        0 => "coupon-consumer".to_owned(),
        _ => format!("coupon-consumer-{index}"),
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
