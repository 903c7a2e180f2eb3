//! The suite's child processes: coupon-api, coupon-consumer and Apache Kafka brokers started,
//! signalled, stopped and started again, each waited for until it serves.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use coupon_core::domain::CouponId;
use coupon_core::issue::recovery::IssueLog;
use coupon_core::store::kafka::IssuePublisher;
pub(super) use coupon_harness::{free_port, Process, Signal, Stopped};
use coupon_harness::{probe, Output, Program, Wait};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::*;

/// A process of the scenario called `name`, running `executable` with `env`, appending its
/// output to `log_dir/name.log` (a process started again adds to it), killed when dropped.
pub(super) fn scenario_process(
    name: &str,
    executable: &Path,
    env: &[(String, String)],
    log_dir: &Path,
) -> Process {
    Process::new(scenario_program(name, executable, env, log_dir))
}

/// The [`Program`] of [`scenario_process`].
fn scenario_program(
    name: &str,
    executable: &Path,
    env: &[(String, String)],
    log_dir: &Path,
) -> Program {
    let mut program = Program::new(name, executable);
    program
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output(Output::AppendFile(log_dir.join(format!("{name}.log"))));
    program
}

/// Apache Kafka of the scenario's own: one broker, or a cluster of three (KRaft, each node
/// broker and controller in one JVM), run by the broker launcher
/// (`scripts/kafka-broker.sh DIR PORT CONTROLLER_PORT [NODE_ID VOTERS CLUSTER_ID]`, which execs
/// the JVM, so a signal to the child reaches the broker) on data directories under the
/// scenario's log directory. Stopping and starting a node again keeps its topics, the committed
/// offsets and the cluster id (the launcher formats `DIR/data` only on the first start). A
/// cluster of three gives every topic created without a replication factor 3 replicas and
/// `min.insync.replicas=2` (the launcher's defaults for a quorum of three).
pub(super) struct OwnKafka {
    nodes: Vec<KafkaNode>,
}

/// One node of [`OwnKafka`].
struct KafkaNode {
    /// Its `node.id` (1..).
    id: i32,
    process: Process,
    /// Its client listener (127.0.0.1).
    port: u16,
}

impl AsMut<Process> for KafkaNode {
    fn as_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// A partition of a topic and where it lives, from the cluster's metadata.
#[derive(Debug, Clone)]
pub(super) struct PartitionState {
    pub(super) partition: i32,
    /// The leader's node id (-1 while it has none).
    pub(super) leader: i32,
    pub(super) replicas: Vec<i32>,
    pub(super) in_sync: Vec<i32>,
    /// The high watermark: messages acknowledged to `acks=all` producers (count).
    pub(super) high_watermark: i64,
}

impl OwnKafka {
    /// Longest wait for a broker to serve after its start: the JVM, the KRaft controllers'
    /// election and the log recovery on 2 busy cores (three JVMs at once for a cluster).
    const START_TIMEOUT: Duration = Duration::from_secs(120);

    /// Starts `nodes` brokers (1, or 3 for a cluster) on free ports, on fresh data
    /// directories `log_dir/kafka` (`log_dir/kafka-N` for node N of a cluster), and waits until
    /// every one of them is in the cluster's metadata.
    ///
    /// # Errors
    /// The launcher could not be started or exited, or the brokers did not serve in time.
    pub(super) async fn start(
        bins: &Binaries,
        log_dir: &Path,
        nodes: usize,
    ) -> anyhow::Result<Self> {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 2 * nodes {
            let port = free_port()?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let (listeners, controllers) = ports.split_at(nodes);
        let ids: Vec<i32> = (1..=i32::try_from(nodes)?).collect();
        let voters: Vec<String> = ids
            .iter()
            .zip(controllers)
            .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
            .collect();
        let cluster_id = if nodes > 1 {
            Some(random_cluster_id(&bins.kafka_root)?)
        } else {
            None
        };
        let mut env = vec![(
            "KAFKA_ROOT".to_owned(),
            bins.kafka_root.display().to_string(),
        )];
        if nodes > 1 {
            // Three JVMs beside the services on 2 cores (as `KAFKA_MODE=cluster make up`).
            env.push(("KAFKA_HEAP_OPTS".to_owned(), "-Xms256m -Xmx512m".to_owned()));
        }
        let mut kafka = Self { nodes: Vec::new() };
        for (i, &id) in ids.iter().enumerate() {
            let name = if nodes == 1 {
                "kafka".to_owned()
            } else {
                format!("kafka-{id}")
            };
            let dir = log_dir.join(&name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing old broker data in {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir)?;
            let mut program = scenario_program(&name, &bins.broker, &env, log_dir);
            program
                .arg(&dir)
                .args([listeners[i].to_string(), controllers[i].to_string()]);
            if let Some(cluster_id) = &cluster_id {
                program.args([id.to_string(), voters.join(","), cluster_id.clone()]);
            }
            let process = Process::spawn(program)?;
            kafka.nodes.push(KafkaNode {
                id,
                process,
                port: listeners[i],
            });
        }
        kafka.wait_until_registered(&ids).await?;
        Ok(kafka)
    }

    /// The bootstrap servers, `127.0.0.1:PORT[,…]`, for `KAFKA_BROKERS`.
    pub(super) fn address(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node ids (1..).
    pub(super) fn ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    fn node(&mut self, id: i32) -> anyhow::Result<&mut KafkaNode> {
        self.nodes
            .iter_mut()
            .find(|node| node.id == id)
            .with_context(|| format!("no broker with node id {id}"))
    }

    /// Sends `signal` to node `id`: `TERM` is Kafka's controlled shutdown (leadership given
    /// up, logs flushed and closed cleanly), `KILL` a crash. Waits `grace` for the exit, then
    /// SIGKILL. `None` when it was not running.
    ///
    /// # Errors
    /// No node has that id.
    pub(super) async fn stop(
        &mut self,
        id: i32,
        signal: Signal,
        grace: Duration,
    ) -> anyhow::Result<Option<Stopped>> {
        Ok(self.node(id)?.process.stop(signal, grace).await)
    }

    /// Starts node `id` again on the same data and ports (without waiting).
    ///
    /// # Errors
    /// No node has that id, or it could not be started.
    pub(super) fn start_again(&mut self, id: i32) -> anyhow::Result<()> {
        self.node(id)?.process.start()?;
        Ok(())
    }

    /// Starts the single broker again and waits until `log` can be read up to its group's
    /// committed offsets: the metadata, the group coordinator and every partition's leader all
    /// answer.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub(super) async fn restart(&mut self, log: &IssueLog, coupon: CouponId) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.process.start()?;
        }
        self.wait_until(|| async { log.unpersisted_users(coupon).await.map(drop) })
            .await
    }

    /// The partitions of `topic`: leaders, replicas, in-sync replicas and high watermarks.
    ///
    /// # Errors
    /// No broker answered within 5 s, or the topic is unknown.
    pub(super) async fn partitions(&self, topic: &str) -> anyhow::Result<Vec<PartitionState>> {
        partitions_of(self.address(), topic).await
    }

    /// Waits until every partition of `topic` has a leader and all its replicas in sync (after
    /// a node came back), and `log` can be read up to its group's committed offsets.
    ///
    /// # Errors
    /// Not so within [`Self::START_TIMEOUT`], or a node exited.
    pub(super) async fn wait_until_in_sync(
        &mut self,
        topic: &str,
        log: &IssueLog,
        coupon: CouponId,
    ) -> anyhow::Result<()> {
        let brokers = self.address();
        self.wait_until(|| async {
            let lagging: Vec<String> = partitions_of(brokers.clone(), topic)
                .await?
                .into_iter()
                .filter(|p| p.leader < 0 || p.in_sync.len() < p.replicas.len())
                .map(|p| {
                    format!(
                        "{}: leader {} in sync {:?}",
                        p.partition, p.leader, p.in_sync
                    )
                })
                .collect();
            if !lagging.is_empty() {
                bail!("partitions not yet in sync: {}", lagging.join("; "));
            }
            log.unpersisted_users(coupon).await.map(drop)
        })
        .await
    }

    /// Waits until the metadata names every node of `ids` as a live broker.
    async fn wait_until_registered(&mut self, ids: &[i32]) -> anyhow::Result<()> {
        let brokers = self.address();
        let ids = ids.to_vec();
        self.wait_until(|| async {
            let listed = brokers.clone();
            let live = tokio::task::spawn_blocking(move || live_brokers(&listed)).await??;
            let missing: Vec<i32> = ids
                .iter()
                .filter(|id| !live.contains(id))
                .copied()
                .collect();
            if !missing.is_empty() {
                bail!("brokers {missing:?} not in the metadata yet");
            }
            // The internal topics are created on first use; a group's first join needs them.
            let probe = IssuePublisher::new(&brokers, "chaos-probe", Duration::from_secs(5))?;
            probe.check_broker(Duration::from_secs(2)).await?;
            Ok(())
        })
        .await
    }

    /// Retries `check` every 500 ms until it succeeds, a node that should run has exited, or
    /// [`Self::START_TIMEOUT`] passed.
    async fn wait_until<F, Fut>(&mut self, check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let wait = Wait::new(
            format!("Kafka ({}) to serve", self.address()),
            Self::START_TIMEOUT,
        )
        .every(Duration::from_millis(500));
        Ok(wait.until(&mut self.nodes, check).await?)
    }
}

/// A new cluster id, as `kafka-storage.sh random-uuid` prints it (the id every node of one
/// cluster is formatted with).
fn random_cluster_id(kafka_root: &Path) -> anyhow::Result<String> {
    let output = Command::new("java")
        .arg("-cp")
        .arg(format!("{}/libs/*", kafka_root.display()))
        .args(["kafka.tools.StorageTool", "random-uuid"])
        .stderr(Stdio::inherit())
        .output()
        .context("running Kafka's StorageTool random-uuid")?;
    let id = String::from_utf8(output.stdout)?.trim().to_owned();
    if !output.status.success() || id.is_empty() {
        bail!("Kafka's StorageTool random-uuid failed ({})", output.status);
    }
    Ok(id)
}

/// A metadata client of the suite's own (not a consumer group member).
fn metadata_client(brokers: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("socket.connection.setup.timeout.ms", "2000")
        .create()?)
}

/// The node ids of the brokers the metadata names (blocking, 5 s at most).
fn live_brokers(brokers: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = metadata_client(brokers)?.fetch_metadata(None, Duration::from_secs(5))?;
    Ok(metadata.brokers().iter().map(|b| b.id()).collect())
}

/// [`OwnKafka::partitions`] of the cluster at `brokers`.
async fn partitions_of(brokers: String, topic: &str) -> anyhow::Result<Vec<PartitionState>> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || partition_states(&brokers, &topic)).await?
}

/// [`OwnKafka::partitions`], blocking.
fn partition_states(brokers: &str, topic: &str) -> anyhow::Result<Vec<PartitionState>> {
    let client = metadata_client(brokers)?;
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not in the metadata"))?;
    if let Some(err) = found.error() {
        bail!("topic {topic}: {:?}", err);
    }
    found
        .partitions()
        .iter()
        .map(|p| {
            let (_, high_watermark) =
                client.fetch_watermarks(topic, p.id(), Duration::from_secs(5))?;
            Ok(PartitionState {
                partition: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                in_sync: p.isr().to_vec(),
                high_watermark,
            })
        })
        .collect()
}

/// Starts coupon-api (listening on 127.0.0.1:`port`) and waits until it answers `/ready`.
pub(super) async fn start_api(process: &mut Process, port: u16) -> anyhow::Result<()> {
    process.start()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let wait = Wait::new(
        format!("{} /ready", process.name()),
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(200));
    process
        .wait_ready(&wait, || probe::http_ok(addr, "/ready"))
        .await?;
    Ok(())
}

/// Starts coupon-consumer and waits until it holds partitions of `issue_topic`: one more
/// "partitions assigned" line naming them in its log. A member that merely runs may not have
/// joined its group yet; one that holds its partitions consumes from then on.
pub(super) async fn start_consumer(process: &mut Process, issue_topic: &str) -> anyhow::Result<()> {
    let log = process
        .log_path()
        .context("coupon-consumer's output is logged")?
        .to_owned();
    let partition = format!("\"{issue_topic}:");
    let assigned = || {
        probe::log_lines(&log, |line| {
            line.contains("partitions assigned") && line.contains(&partition)
        })
    };
    let before = assigned();
    process.start()?;
    let wait = Wait::new(
        format!(
            "{} to be assigned partitions of {issue_topic}",
            process.name()
        ),
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(100));
    process
        .wait_ready(&wait, || std::future::ready(assigned() > before))
        .await?;
    Ok(())
}
