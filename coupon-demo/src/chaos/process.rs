//! The suite's child processes: coupon-api, coupon-consumer and tansu started, signalled,
//! stopped and started again, each waited for until it serves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

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

    /// Sends `signal` (`TERM`, `KILL`) and waits for the exit: 15 s, then SIGKILL.
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

pub(super) async fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A tansu broker of the scenario's own, on SQLite in `dir`: stopping and starting it keeps
/// its topics and offsets.
pub(super) fn broker(bins: &Binaries, dir: &Path, port: u16) -> anyhow::Result<Process> {
    let data = dir.join("tansu");
    std::fs::create_dir_all(&data)?;
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut process = Process::new("tansu", &bins.tansu, vec![], dir);
    process.command.extend(
        [
            "broker",
            "--storage-engine",
            "sqlite://tansu.db",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
        ]
        .map(str::to_owned),
    );
    process.cwd = Some(data);
    Ok(process)
}

pub(super) async fn start_broker(process: &mut Process, port: u16) -> anyhow::Result<()> {
    process.start()?;
    wait_for("tansu listens", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await
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

/// Starts coupon-consumer and waits for one more "coupon-consumer running" line in its log.
/// The group join follows that line; messages published meanwhile wait in the topic.
pub(super) async fn start_consumer(process: &mut Process) -> anyhow::Result<()> {
    let started = |log: &Path| {
        std::fs::read_to_string(log)
            .map(|s| s.matches("coupon-consumer running").count())
            .unwrap_or(0)
    };
    let before = started(&process.log);
    process.start()?;
    wait_for(
        &format!("{} running", process.name),
        Duration::from_secs(60),
        || started(&process.log) > before,
    )
    .await
}
