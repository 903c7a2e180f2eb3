//! The processes the issue benchmark starts ([`Service`]: coupon-api instances, coupon-consumer
//! processes, the ceiling server), their environment and ports, and the Redis servers whose CPU
//! it samples.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coupon_core::store::redis::RedisMode;
use coupon_harness::{probe, OnDrop, Output, Process, Program, Signal, Wait};

use super::harness::{redis_url, Bench};
use crate::cpu::Part;

/// Longest wait for a service to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A service the benchmark started: stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]) when
/// dropped.
pub(super) struct Service {
    process: Process,
}

impl Service {
    pub(super) fn stop(mut self) {
        self.terminate();
    }

    /// Sends the process `signal` (SIGSTOP, SIGCONT).
    ///
    /// # Errors
    /// `kill` failed or the process is gone.
    pub(super) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        Ok(self.process.signal(signal)?)
    }

    /// Waits as `wait` says until `check` passes.
    ///
    /// # Errors
    /// The service exited, or `check` did not pass in time.
    pub(super) async fn wait_ready<F, Fut>(&mut self, wait: &Wait, check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        Ok(self.process.wait_ready(wait, check).await?)
    }

    fn terminate(&mut self) {
        let stopped = self.process.stop_blocking(Signal::Term, STOP_GRACE);
        if stopped.is_some_and(|s| s.forced) {
            eprintln!(
                "[bench] {} ignored SIGTERM for {STOP_GRACE:?}; killed it",
                self.process.name()
            );
        }
    }
}

impl AsMut<Process> for Service {
    fn as_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.terminate();
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

    pub(super) fn service_env(&self, program: &mut Program) {
        program
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
            program.env("KAFKA_TOPIC_MIN_INSYNC_REPLICAS", min_insync.to_string());
        }
    }

    /// A service `name` running `executable`, logging (stderr) to `--log-dir`/`name`.log.
    pub(super) fn program(&self, name: &str, executable: &std::path::Path) -> Program {
        let mut program = Program::new(name, executable);
        program
            .output(Output::StderrFile(
                self.args.log_dir.join(format!("{name}.log")),
            ))
            .on_drop(OnDrop::Terminate { grace: STOP_GRACE });
        program
    }

    /// Starts `program` and samples its CPU as `part`'s.
    pub(super) fn spawn(&self, part: Part, program: Program) -> anyhow::Result<Service> {
        let process = Process::spawn(program)?;
        if let Some(pid) = process.pid() {
            self.processes.add(part, pid);
        }
        Ok(Service { process })
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
            let name = match index {
                0 => "coupon-api".to_owned(),
                _ => format!("coupon-api-{index}"),
            };
            let mut program = self.program(&name, &self.args.api_bin);
            self.service_env(&mut program);
            program
                .env("API_LISTEN", format!("127.0.0.1:{port}"))
                .env("METRICS_LISTEN", format!("127.0.0.1:{}", port + 1000))
                .envs(env.iter().copied());
            services.push(self.spawn(Part::Api, program)?);
        }
        let wait = Wait::new("coupon-api /ready", Duration::from_secs(60))
            .every(Duration::from_millis(20));
        for index in 0..count {
            let addr = SocketAddr::from(([127, 0, 0, 1], self.api_port(index)));
            wait.until(services.as_mut_slice(), || probe::http_ok(addr, "/ready"))
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
        let mut program = self.program(&consumer_name(index), &self.args.consumer_bin);
        self.service_env(&mut program);
        program
            .env("KAFKA_ISSUE_TOPIC", topic.unwrap_or(&self.issue_topic))
            .env("KAFKA_CONSUMER_GROUP", group)
            .env(
                "METRICS_LISTEN",
                format!("127.0.0.1:{}", self.api_port(index) + 1001),
            );
        self.spawn(Part::Consumer, program)
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
