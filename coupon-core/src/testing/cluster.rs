//! A Redis Cluster of a test's own, for the fault scenarios that kill one of its masters.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use coupon_harness::{Output, Process, Program, Signal, Wait};

/// Six `redis-server` processes in cluster mode on free ports (3 masters, 3 replicas, created
/// with `redis-cli --cluster create … --cluster-replicas 1`), each in a temporary directory,
/// no persistence, `cluster-node-timeout` 1000 ms: a killed master's replica is promoted about
/// 2 s later. Every node is killed when this is dropped. Each logs to `redis.log` in its
/// directory, whose end a failure to come up shows.
#[derive(Debug)]
pub struct OwnRedisCluster {
    /// Each node's port and process.
    nodes: Vec<(u16, Process)>,
    dir: PathBuf,
}

impl OwnRedisCluster {
    /// Starts the six nodes without persistence, creates the cluster and waits until every
    /// slot is served.
    ///
    /// # Panics
    /// `redis-server` or `redis-cli` is missing, or the cluster is not up within 30 s.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// [`Self::start`]; with `persistent`, every node appends every write to its AOF with
    /// `appendfsync always`, so [`Self::restart_all`] loses nothing; without, it loses all.
    ///
    /// # Panics
    /// As [`Self::start`].
    pub async fn start_with(persistent: bool) -> Self {
        let ports = free_node_ports(6);
        let dir = std::env::temp_dir().join(format!("couponrush-redis-cluster-{}", ports[0]));
        let _ = std::fs::remove_dir_all(&dir);
        let nodes = ports
            .iter()
            .map(|&port| (port, start_node(&dir, port, persistent)))
            .collect();
        let mut cluster = Self { nodes, dir };
        for (port, node) in &mut cluster.nodes {
            let port = *port;
            let wait = Wait::new("a cluster node answers", Duration::from_secs(10));
            let answered = node
                .wait_ready(&wait, || async move {
                    cli(port, &["PING"]).filter(|r| r.trim() == "PONG")
                })
                .await;
            if let Err(err) = answered {
                super::process_failed(&err, "");
            }
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until_served(Duration::from_secs(30)).await;
        // cluster_state:ok comes before the replicas' first sync; until then WAIT 1 times out.
        for &port in &ports {
            super::eventually(
                "every replica in sync",
                Duration::from_secs(30),
                || async move {
                    let info = cli(port, &["INFO", "replication"])?;
                    let synced = info.contains("role:slave")
                        && info.contains("master_link_status:up")
                        || info.contains("role:master") && info.contains("state=online");
                    synced.then_some(())
                },
            )
            .await;
        }
        cluster
    }

    /// The seed URLs of every node, comma-separated (`REDIS_URL` with `REDIS_MODE=cluster`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the master that serves `key`'s hash slot now, as a live node reports it.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let port = self.live_ports().next()?;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .ok()?;
        masters(&cli(port, &["CLUSTER", "NODES"])?)
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// The port of the replica of the master on `port`, as a live node reports it.
    pub fn replica_of(&self, master: u16) -> Option<u16> {
        let live = self.live_ports().next()?;
        let listing = cli(live, &["CLUSTER", "NODES"])?;
        let nodes: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let port_of = |fields: &Vec<&str>| -> Option<u16> {
            fields
                .get(1)?
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        let master_id = nodes.iter().find(|f| port_of(f) == Some(master))?.first()?;
        nodes
            .iter()
            .find(|f| f.get(3) == Some(master_id))
            .and_then(port_of)
    }

    /// Freezes the node on `port` (SIGSTOP): it holds its connections and answers nothing,
    /// replication included, until [`Self::resume`].
    pub fn pause(&self, port: u16) {
        self.signal(port, Signal::Stop);
    }

    /// Closes the replication links of the master on `port` (`CLIENT KILL TYPE replica`):
    /// what it writes from now on reaches no replica until one reconnects. With the replica
    /// frozen by [`Self::pause`], that is a replica lagging behind its master; the stream
    /// already sent stays in the frozen replica's socket buffer and still arrives.
    pub fn cut_replication(&self, port: u16) {
        let _ = cli(port, &["CLIENT", "KILL", "TYPE", "replica"]);
    }

    /// Thaws a node frozen by [`Self::pause`] (SIGCONT).
    pub fn resume(&self, port: u16) {
        self.signal(port, Signal::Cont);
    }

    fn signal(&self, port: u16, signal: Signal) {
        if let Some((_, node)) = self.nodes.iter().find(|(p, _)| *p == port) {
            let _ = node.signal(signal);
        }
    }

    /// Kills the node on `port` (SIGKILL: it answers nothing more and saves nothing).
    pub fn kill(&mut self, port: u16) {
        for (p, node) in &mut self.nodes {
            if *p == port {
                node.kill();
            }
        }
    }

    /// Starts the node on `port` again (after [`Self::kill`]) on its old directory: it reads
    /// its `nodes.conf`, finds that its replica took over, and rejoins as that master's
    /// replica with an empty dataset, which it then copies. Waits until its link is up.
    ///
    /// # Panics
    /// It does not sync within 30 s.
    pub async fn restart(&mut self, port: u16) {
        self.kill(port);
        let Some((_, node)) = self.nodes.iter_mut().find(|(p, _)| *p == port) else {
            panic!("no node of this cluster listens on {port}");
        };
        if let Err(err) = node.start() {
            super::process_failed(&err, "");
        }
        let wait = Wait::new("the restarted node in sync", Duration::from_secs(30));
        let synced = node
            .wait_ready(&wait, || async move {
                let info = cli(port, &["INFO", "replication"])?;
                (info.contains("role:slave") && info.contains("master_link_status:up"))
                    .then_some(())
            })
            .await;
        if let Err(err) = synced {
            super::process_failed(&err, "");
        }
    }

    /// Freezes every node (SIGSTOP): the whole cluster hangs, the way a partitioned or hung
    /// deployment looks. [`Self::resume_all`] thaws it.
    pub fn pause_all(&self) {
        for port in self.live_ports() {
            self.signal(port, Signal::Stop);
        }
    }

    /// Thaws every node frozen by [`Self::pause_all`] (SIGCONT).
    pub fn resume_all(&self) {
        for port in self.live_ports() {
            self.signal(port, Signal::Cont);
        }
    }

    /// Kills every node (SIGKILL): the whole deployment is gone, connections refused.
    pub fn stop_all(&mut self) {
        let ports: Vec<u16> = self.nodes.iter().map(|(port, _)| *port).collect();
        for port in ports {
            self.kill(port);
        }
    }

    /// Starts every node again on its directory (after [`Self::stop_all`]): each reads its
    /// `nodes.conf` and takes its role and slots back, with its data when the cluster is
    /// persistent and empty when not. Waits until every slot is served again.
    ///
    /// # Panics
    /// The cluster does not serve every slot within 30 s.
    pub async fn restart_all(&mut self) {
        self.stop_all();
        for (_, node) in &mut self.nodes {
            if let Err(err) = node.start() {
                super::process_failed(&err, "");
            }
        }
        self.wait_until_served(Duration::from_secs(30)).await;
    }

    /// Waits until every live node reports `cluster_state:ok` and every slot has a live
    /// master (after a kill: until the replica was promoted).
    ///
    /// # Panics
    /// Not so within `timeout`.
    pub async fn wait_until_served(&self, timeout: Duration) {
        let live: Vec<u16> = self.live_ports().collect();
        super::eventually("the cluster serves every slot", timeout, || {
            let live = live.clone();
            async move {
                for &port in &live {
                    let info = cli(port, &["CLUSTER", "INFO"])?;
                    if !info.contains("cluster_state:ok") {
                        return None;
                    }
                    let served: u32 = masters(&cli(port, &["CLUSTER", "NODES"])?)
                        .iter()
                        .filter(|(master, _)| live.contains(master))
                        .flat_map(|(_, ranges)| ranges.iter().map(|(a, b)| u32::from(b - a) + 1))
                        .sum();
                    if served != 16_384 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|(_, node)| node.pid().is_some())
            .map(|(port, _)| *port)
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        self.stop_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Highest port a cluster node can take: its cluster bus listens on the port + 10000, and Redis
/// refuses to start above this ("Your Redis port number must be 55535 or less"), while the
/// kernel's ephemeral range goes up to 60999.
const MAX_NODE_PORT: u16 = 55_535;

/// `count` distinct free ports at most [`MAX_NODE_PORT`], each held until all are found.
fn free_node_ports(count: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("a bound address").port();
        if port <= MAX_NODE_PORT {
            held.push((port, listener));
        }
    }
    held.into_iter().map(|(port, _)| port).collect()
}

/// Starts a cluster-mode `redis-server` on `port`, its files in `dir/port` (created where
/// missing); with `persistent`, an AOF fsynced on every write.
fn start_node(dir: &std::path::Path, port: u16, persistent: bool) -> Process {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).expect("a temporary directory");
    let appendonly: &[&str] = match persistent {
        true => &["--appendonly", "yes", "--appendfsync", "always"],
        false => &["--appendonly", "no"],
    };
    let mut program = Program::new(format!("redis-server {port}"), "redis-server");
    program
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        .args(["--save", ""])
        .args(appendonly)
        .arg("--dir")
        .arg(&node_dir)
        .output(Output::AppendFile(node_dir.join("redis.log")));
    Process::spawn(program)
        .unwrap_or_else(|err| super::process_failed(&err, " (apt-get install redis-server)"))
}

/// `redis-cli -p port args…`'s output, if it ran.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The masters of a `CLUSTER NODES` listing not flagged failing, each with its slot ranges
/// (<https://redis.io/docs/latest/commands/cluster-nodes/>: `<id> <ip:port@cport> <flags>
/// <master> <ping> <pong> <epoch> <link> <slot> <slot> …`).
fn masters(listing: &str) -> Vec<(u16, Vec<(u16, u16)>)> {
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master")
                || flags.split(',').any(|f| f == "fail" || f == "fail?")
            {
                return None;
            }
            let port = fields[1].split(['@', ',']).next()?.rsplit(':').next()?;
            let ranges = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some((port.parse().ok()?, ranges))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_and_their_slots_are_read_from_cluster_nodes() {
        let listing = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461-10922
c 127.0.0.1:7003@17003 slave a 0 0 1 connected
d 127.0.0.1:7004@17004 master - 0 0 3 connected 10923-16382 16383 [5->-abc]
";
        assert_eq!(
            masters(listing),
            [
                (7000, vec![(0, 5460)]),
                (7004, vec![(10923, 16382), (16383, 16383)])
            ]
        );
    }
}
