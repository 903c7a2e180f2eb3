//! The suite's child processes: coupon-api, coupon-consumer and an Apache Kafka broker started,
//! signalled, stopped and started again, each waited for until it serves.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coupon_core::domain::CouponId;
use coupon_core::issue::recovery::IssueLog;
use coupon_core::store::kafka::IssuePublisher;

use super::*;

/// A child process that can be signalled, stopped and started again with the same command.
pub(super) struct Process {
    pub(super) name: String,
    pub(super) command: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) cwd: Option<PathBuf>,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
}

impl Process {
    pub(super) fn new(
        name: &str,
        program: &Path,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            command: vec![program.display().to_string()],
            env,
            cwd: None,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub(super) fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.command[0]))?,
        );
        Ok(())
    }

    pub(super) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (`TERM`, `KILL`) and waits for the exit without blocking the runtime:
    /// `grace`, then SIGKILL. `None` when it was not running.
    pub(super) async fn stop_within(&mut self, signal: &str, grace: Duration) -> Option<Stopped> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        while matches!(child.try_wait(), Ok(None)) && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let forced = matches!(child.try_wait(), Ok(None));
        if forced {
            let _ = child.kill();
        }
        let _ = child.wait();
        Some(Stopped {
            took: started.elapsed(),
            forced,
        })
    }

    /// Sends `signal` (`TERM`, `KILL`) and waits for the exit: 15 s, then SIGKILL. Blocks the
    /// thread: for the end of a scenario, not mid-race.
    pub(super) fn stop(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// How a stopped process went.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stopped {
    /// From the signal to the exit.
    pub(super) took: Duration,
    /// Whether it outlasted the grace and was killed.
    pub(super) forced: bool,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exited {:.1} s after the signal",
            self.took.as_secs_f64()
        )?;
        if self.forced {
            f.write_str(", killed (SIGKILL) after the grace")?;
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop("KILL");
    }
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An Apache Kafka broker of the scenario's own (KRaft, broker and controller in one JVM),
/// run by the broker launcher (`scripts/kafka-broker.sh DIR PORT CONTROLLER_PORT`, which execs
/// the JVM, so a signal to the child reaches the broker) on a data directory under the
/// scenario's log directory. Stopping and starting it again keeps its topics, the committed
/// offsets and the cluster id (the launcher formats `DIR/data` only on the first start).
pub(super) struct OwnBroker {
    process: Process,
    /// Its client listener (127.0.0.1).
    port: u16,
}

impl OwnBroker {
    /// Longest wait for a broker to serve after its start: the JVM, the KRaft controller's
    /// election and the log recovery on 2 busy cores.
    const START_TIMEOUT: Duration = Duration::from_secs(120);

    /// Starts a broker on two free ports (listener and controller) and a fresh data directory
    /// `log_dir/kafka`, and waits until it answers a metadata request.
    ///
    /// # Errors
    /// The launcher could not be started, exited, or the broker did not serve in time.
    pub(super) async fn start(bins: &Binaries, log_dir: &Path) -> anyhow::Result<Self> {
        let dir = log_dir.join("kafka");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the old broker data in {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let controller = loop {
            let candidate = free_port()?;
            if candidate != port {
                break candidate;
            }
        };
        let env = vec![(
            "KAFKA_ROOT".to_owned(),
            bins.kafka_root.display().to_string(),
        )];
        let mut process = Process::new("kafka", &bins.broker, env, log_dir);
        process.command.extend([
            dir.display().to_string(),
            port.to_string(),
            controller.to_string(),
        ]);
        let mut broker = Self { process, port };
        broker.process.start()?;
        broker.wait_until_serving(None).await?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`, for `KAFKA_BROKERS`.
    pub(super) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM: Kafka's controlled shutdown (leadership given up, logs flushed and closed
    /// cleanly). Waits `grace` for the exit, then SIGKILL.
    pub(super) async fn stop(&mut self, grace: Duration) -> Option<Stopped> {
        self.process.stop_within("TERM", grace).await
    }

    /// Starts the broker again on the same data and ports, and waits until `log` can be read
    /// up to its group's committed offsets: the metadata, the group coordinator and every
    /// partition's leader all answer.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub(super) async fn restart(&mut self, log: &IssueLog, coupon: CouponId) -> anyhow::Result<()> {
        self.process.start()?;
        self.wait_until_serving(Some((log, coupon))).await
    }

    /// Waits until the broker serves: a metadata request answered, and with `topic` also the
    /// issue topic read (see [`Self::restart`]). An open port is not enough: the JVM listens
    /// before its metadata is loaded and its partitions have a leader.
    async fn wait_until_serving(
        &mut self,
        topic: Option<(&IssueLog, CouponId)>,
    ) -> anyhow::Result<()> {
        let address = self.address();
        let deadline = Instant::now() + Self::START_TIMEOUT;
        loop {
            if !self.process.alive() {
                bail!(
                    "the Kafka broker exited; see {}",
                    self.process.log.display()
                );
            }
            let served = match topic {
                None => {
                    match IssuePublisher::new(&address, "chaos-probe", Duration::from_secs(5)) {
                        Ok(probe) => probe
                            .check_broker(Duration::from_secs(2))
                            .await
                            .map_err(anyhow::Error::from),
                        Err(err) => Err(err.into()),
                    }
                }
                Some((log, coupon)) => log.unpersisted_users(coupon).await.map(drop),
            };
            match served {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(err.context(format!(
                        "the Kafka broker on {address} did not serve within {:?}; see {}",
                        Self::START_TIMEOUT,
                        self.process.log.display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

pub(super) async fn start_api(
    process: &mut Process,
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<()> {
    process.start()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !process.alive() {
            bail!("{} exited; see {}", process.name, process.log.display());
        }
        let ready = client.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready in 60 s; see {}",
                process.name,
                process.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts coupon-consumer and waits until it holds partitions of `issue_topic`: one more
/// "partitions assigned" line naming them in its log. A member that merely runs may not have
/// joined its group yet; one that holds its partitions consumes from then on.
pub(super) async fn start_consumer(process: &mut Process, issue_topic: &str) -> anyhow::Result<()> {
    let partition = format!("\"{issue_topic}:");
    let assigned = |log: &Path| {
        std::fs::read_to_string(log)
            .map(|s| {
                s.lines()
                    .filter(|line| {
                        line.contains("partitions assigned") && line.contains(&partition)
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let before = assigned(&process.log);
    process.start()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(&process.log) <= before {
        if !process.alive() {
            bail!("{} exited; see {}", process.name, process.log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "{} was assigned no partition of {issue_topic} within 60 s; see {}",
                process.name,
                process.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
