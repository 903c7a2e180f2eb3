//! The services of `make demo`: coupon-api instances and coupon-consumer processes started
//! from the release binaries (through coupon-harness), waited for until they serve, and
//! stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]) when the demo ends.
//!
//! Instance `i` of coupon-api listens on `--api-port` + `i` and serves its metrics on
//! 127.0.0.1:9464 + 2`i`; coupon-consumer `j` serves its metrics on 127.0.0.1:9465 + 2`j` (the
//! ports monitoring/prometheus.yml scrapes). With one process of a binary its log is
//! `NAME.log` in the log directory; with several, `NAME-i.log`. Every process inherits the
//! demo's environment (the stores' addresses, `JWT_SECRET`, `RUST_LOG`); each coupon-api also
//! gets `RATE_LIMITS=off`, since the race comes from one address and the per-address limit
//! would refuse most of it.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use coupon_harness::{probe, stop_all, OnDrop, Output, Process, Program, Signal, Wait};

/// Longest wait for the services to exit after SIGTERM before they are killed: beyond their
/// own drain bound (`SHUTDOWN_GRACE_MS`, 10 s).
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// Longest wait for the services to serve, and then for every consumer to hold partitions.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The first metrics port: coupon-api `i` serves on this + 2`i`, coupon-consumer `j` on this
/// + 1 + 2`j`.
pub const FIRST_METRICS_PORT: u16 = 9464;

/// The services to start.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// coupon-api processes.
    pub api_instances: NonZeroUsize,
    /// coupon-consumer processes, one consumer group.
    pub consumers: NonZeroUsize,
    /// The port of coupon-api instance 0; instance `i` listens on this + `i`.
    pub api_port: u16,
    /// Where the executables `coupon-api` and `coupon-consumer` are.
    pub bin_dir: PathBuf,
    /// Where each process's log goes.
    pub log_dir: PathBuf,
}

impl ServicePlan {
    /// The port coupon-api instance `i` listens on.
    ///
    /// # Errors
    /// It would be above 65535.
    pub fn api_port(&self, i: usize) -> anyhow::Result<u16> {
        u16::try_from(i)
            .ok()
            .and_then(|i| self.api_port.checked_add(i))
            .with_context(|| format!("--api-port {} + {i} is not a port", self.api_port))
    }

    /// The ports of every coupon-api instance, in order.
    ///
    /// # Errors
    /// As [`Self::api_port`].
    pub fn api_ports(&self) -> anyhow::Result<Vec<u16>> {
        (0..self.api_instances.get())
            .map(|i| self.api_port(i))
            .collect()
    }

    /// The metrics port of coupon-api instance `i`.
    pub fn api_metrics_port(i: usize) -> u16 {
        FIRST_METRICS_PORT + 2 * i as u16
    }

    /// The metrics port of coupon-consumer `j`.
    pub fn consumer_metrics_port(j: usize) -> u16 {
        FIRST_METRICS_PORT + 1 + 2 * j as u16
    }

    /// Name and log stem of process `i` of `count` of `binary`: `binary` alone when it is the
    /// only one.
    fn name(binary: &str, i: usize, count: NonZeroUsize) -> String {
        match count.get() {
            1 => binary.to_owned(),
            _ => format!("{binary}-{i}"),
        }
    }

    /// The program of one service: `bin_dir/binary`, logging to `log_dir/name.log`.
    fn program(&self, binary: &str, name: &str) -> Program {
        let mut program = Program::new(name, self.bin_dir.join(binary));
        program
            .output(Output::File(self.log_dir.join(format!("{name}.log"))))
            .on_drop(OnDrop::Terminate { grace: STOP_GRACE });
        program
    }

    /// The coupon-api programs, in instance order.
    ///
    /// # Errors
    /// As [`Self::api_port`].
    pub fn api_programs(&self) -> anyhow::Result<Vec<Program>> {
        (0..self.api_instances.get())
            .map(|i| {
                let name = Self::name("coupon-api", i, self.api_instances);
                let mut program = self.program("coupon-api", &name);
                program
                    .env("API_LISTEN", format!("127.0.0.1:{}", self.api_port(i)?))
                    .env(
                        "METRICS_LISTEN",
                        format!("127.0.0.1:{}", Self::api_metrics_port(i)),
                    )
                    // One load client on one address: the per-address rate limit would
                    // refuse most of the race.
                    .env("RATE_LIMITS", "off");
                Ok(program)
            })
            .collect()
    }

    /// The coupon-consumer programs, in order.
    pub fn consumer_programs(&self) -> Vec<Program> {
        (0..self.consumers.get())
            .map(|j| {
                let name = Self::name("coupon-consumer", j, self.consumers);
                let mut program = self.program("coupon-consumer", &name);
                program.env(
                    "METRICS_LISTEN",
                    format!("127.0.0.1:{}", Self::consumer_metrics_port(j)),
                );
                program
            })
            .collect()
    }

    /// Starts every service and waits until each coupon-api answers `/ready` and each
    /// coupon-consumer logged that it runs; with several consumers, also until each was
    /// assigned partitions of `issue_topic` (a member still joining would take no share of
    /// the race). Prints what it waits for.
    ///
    /// # Errors
    /// A service could not be started, exited, or was not ready within [`READY_TIMEOUT`] (the
    /// error shows the end of its log).
    pub async fn start(&self, issue_topic: &str) -> anyhow::Result<Services> {
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating {}", self.log_dir.display()))?;
        let mut services = Services {
            plan: self.clone(),
            processes: Vec::new(),
        };
        for program in self
            .api_programs()?
            .into_iter()
            .chain(self.consumer_programs())
        {
            services.processes.push(Process::spawn(program)?);
        }
        let ports = self.api_ports()?;
        println!(
            "[demo] waiting for {} coupon-api (/ready on 127.0.0.1 port {}) and {} coupon-consumer",
            self.api_instances,
            join(&ports),
            self.consumers
        );
        let consumer_logs = services.consumer_logs();
        let serving =
            Wait::new("the services to serve", READY_TIMEOUT).every(Duration::from_millis(200));
        serving
            .until(&mut services.processes, || {
                let ports = &ports;
                let consumer_logs = &consumer_logs;
                async move {
                    for &port in ports {
                        probe::http_ok(SocketAddr::from(([127, 0, 0, 1], port)), "/ready")
                            .await
                            .map_err(|why| format!("coupon-api on {port}: {why}"))?;
                    }
                    match consumer_logs
                        .iter()
                        .find(|log| !probe::log_contains(log, "coupon-consumer running"))
                    {
                        Some(log) => Err(format!("{} does not say it runs yet", log.display())),
                        None => Ok(()),
                    }
                }
            })
            .await
            .with_context(|| {
                format!(
                    "the services did not get ready (logs in {}/)",
                    self.log_dir.display()
                )
            })?;
        if self.consumers.get() > 1 {
            println!(
                "[demo] waiting until each of the {} consumers is assigned partitions of {issue_topic}",
                self.consumers
            );
            let partition = format!("{issue_topic}:");
            let assigned = Wait::new("every consumer to hold partitions", READY_TIMEOUT)
                .every(Duration::from_millis(200));
            assigned
                .until(&mut services.processes, || {
                    let held = consumer_logs.iter().all(|log| {
                        probe::log_lines(log, |line| {
                            line.contains("partitions assigned") && line.contains(&partition)
                        }) > 0
                    });
                    std::future::ready(held)
                })
                .await
                .with_context(|| {
                    format!(
                        "the consumers did not all get partitions (logs in {}/)",
                        self.log_dir.display()
                    )
                })?;
        }
        Ok(services)
    }
}

/// The running services of a [`ServicePlan`]; stopped together when dropped.
#[derive(Debug)]
pub struct Services {
    plan: ServicePlan,
    /// coupon-api instances in order, then the coupon-consumer processes in order.
    processes: Vec<Process>,
}

impl Services {
    /// What was started.
    pub fn plan(&self) -> &ServicePlan {
        &self.plan
    }

    /// `http://127.0.0.1:PORT` of every coupon-api instance, in order.
    ///
    /// # Errors
    /// As [`ServicePlan::api_port`].
    pub fn base_urls(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .plan
            .api_ports()?
            .into_iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect())
    }

    fn consumer_logs(&self) -> Vec<PathBuf> {
        self.processes[self.plan.api_instances.get()..]
            .iter()
            .filter_map(|p| p.log_path().map(ToOwned::to_owned))
            .collect()
    }

    /// Each process's share of the race, from its own metrics: the issue answers each
    /// coupon-api served, the rows each coupon-consumer inserted; one line each.
    ///
    /// # Errors
    /// As [`ServicePlan::api_port`].
    pub async fn shares(&self) -> anyhow::Result<Vec<String>> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut lines = Vec::new();
        for (i, port) in self.plan.api_ports()?.into_iter().enumerate() {
            let answered = metric_sum(
                &client,
                ServicePlan::api_metrics_port(i),
                "coupon_issue_requests_total",
            )
            .await;
            lines.push(format!(
                "[demo] coupon-api {port}: {answered} issue requests answered"
            ));
        }
        for j in 0..self.plan.consumers.get() {
            let inserted = metric_sum(
                &client,
                ServicePlan::consumer_metrics_port(j),
                "coupon_consumer_rows_inserted_total",
            )
            .await;
            lines.push(format!(
                "[demo] coupon-consumer {j}: {inserted} rows inserted"
            ));
        }
        Ok(lines)
    }

    /// Stops every service at once (SIGTERM), killing any still running after
    /// [`STOP_GRACE`].
    pub fn stop(&mut self) {
        stop_all(&mut self.processes, Signal::Term, STOP_GRACE);
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The ports separated by spaces, as the demo prints them.
pub fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sum of every series of the counter `name` that the Prometheus endpoint on
/// 127.0.0.1:`port` serves, truncated to a whole number; 0 when it serves none or cannot be
/// read.
async fn metric_sum(client: &reqwest::Client, port: u16, name: &str) -> i64 {
    let exposition = async {
        client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await?
            .text()
            .await
    };
    exposition
        .await
        .map_or(0, |text| counter_sum(&text, name) as i64)
}

/// The sum of every sample of `name` in a Prometheus text exposition: lines whose first
/// field is `name` or starts with `name{`, their last field the value.
pub fn counter_sum(exposition: &str, name: &str) -> f64 {
    let labelled = format!("{name}{{");
    exposition
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|first| first == name || first.starts_with(&labelled))
        })
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(api_instances: usize, consumers: usize) -> ServicePlan {
        ServicePlan {
            api_instances: NonZeroUsize::new(api_instances).expect("at least one"),
            consumers: NonZeroUsize::new(consumers).expect("at least one"),
            api_port: 8080,
            bin_dir: "target/release".into(),
            log_dir: ".local/demo".into(),
        }
    }

    fn env_of(program: &Program, key: &str) -> Option<String> {
        program
            .get_env(key)
            .map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn one_process_of_a_binary_logs_to_its_name_and_several_to_numbered_names() {
        let single = plan(1, 1);
        let several = plan(3, 2);

        let single_logs: Vec<_> = single
            .api_programs()
            .expect("ports")
            .iter()
            .chain(&single.consumer_programs())
            .map(|p| p.log_path().expect("logged").to_owned())
            .collect();
        let several_names: Vec<_> = several
            .api_programs()
            .expect("ports")
            .iter()
            .chain(&several.consumer_programs())
            .map(|p| p.name().to_owned())
            .collect();

        assert_eq!(
            single_logs,
            [
                PathBuf::from(".local/demo/coupon-api.log"),
                PathBuf::from(".local/demo/coupon-consumer.log")
            ]
        );
        assert_eq!(
            several_names,
            [
                "coupon-api-0",
                "coupon-api-1",
                "coupon-api-2",
                "coupon-consumer-0",
                "coupon-consumer-1"
            ]
        );
        assert_eq!(
            several.api_programs().expect("ports")[2].executable(),
            PathBuf::from("target/release/coupon-api")
        );
    }

    #[test]
    fn instances_take_consecutive_ports_and_interleaved_metrics_ports() {
        let plan = plan(3, 2);

        let apis = plan.api_programs().expect("ports");
        let consumers = plan.consumer_programs();

        assert_eq!(plan.api_ports().expect("ports"), [8080, 8081, 8082]);
        assert_eq!(
            env_of(&apis[1], "API_LISTEN").as_deref(),
            Some("127.0.0.1:8081")
        );
        assert_eq!(
            env_of(&apis[2], "METRICS_LISTEN").as_deref(),
            Some("127.0.0.1:9468")
        );
        assert_eq!(env_of(&apis[0], "RATE_LIMITS").as_deref(), Some("off"));
        assert_eq!(
            env_of(&consumers[1], "METRICS_LISTEN").as_deref(),
            Some("127.0.0.1:9467")
        );
        assert_eq!(env_of(&consumers[0], "RATE_LIMITS"), None);
    }

    #[test]
    fn a_port_past_65535_is_refused() {
        let mut plan = plan(3, 1);
        plan.api_port = 65_534;

        assert!(plan.api_ports().is_err());
    }

    #[test]
    fn a_counter_sums_every_series_and_nothing_else() {
        let exposition = "\
# TYPE coupon_issue_requests_total counter
coupon_issue_requests_total{outcome=\"accepted\"} 500
coupon_issue_requests_total{outcome=\"sold_out\"} 9499
coupon_issue_requests_total_other 7
coupon_consumer_rows_inserted_total 12
";

        assert_eq!(
            counter_sum(exposition, "coupon_issue_requests_total"),
            9_999.0
        );
        assert_eq!(
            counter_sum(exposition, "coupon_consumer_rows_inserted_total"),
            12.0
        );
        assert_eq!(counter_sum(exposition, "absent_total"), 0.0);
    }
}
