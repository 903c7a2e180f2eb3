//! CPU time of the processes a benchmark run involves, read from Linux's `/proc/<pid>/stat`
//! (`proc(5)`: fields 14-17 are `utime`, `stime`, `cutime`, `cstime`, in clock ticks of
//! `USER_HZ`, 1/100 s on Linux), so a figure can say what each part cost per request.
//!
//! A [`Processes`] names each process by its [`Part`]; [`Processes::sample`] reads them all,
//! and [`Sample::per_request`] turns two samples into CPU microseconds per request of each part.
//! The load generator (wrk) is a child this process waits for: its CPU is the difference of this
//! process's `cutime + cstime` (children's time, counted once a child is waited for), so a run's
//! difference holds wrk and nothing else as long as no other child ends during it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// What a process is to the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// coupon-api processes.
    Api,
    /// coupon-consumer processes.
    Consumer,
    /// redis-server processes (every node of a cluster, replicas included).
    Redis,
    /// The Kafka broker (a JVM), found by the port it listens on.
    Broker,
    /// MariaDB or MySQL.
    Mysql,
    /// The load generator (wrk), the children this process waited for.
    LoadGenerator,
}

impl Part {
    /// Every part, in report order.
    pub const ALL: [Self; 6] = [
        Self::Api,
        Self::Consumer,
        Self::Redis,
        Self::Broker,
        Self::Mysql,
        Self::LoadGenerator,
    ];

    /// The part's column name in a report.
    pub fn label(self) -> &'static str {
        match self {
            Self::Api => "coupon-api",
            Self::Consumer => "coupon-consumer",
            Self::Redis => "Redis",
            Self::Broker => "broker",
            Self::Mysql => "MariaDB",
            Self::LoadGenerator => "wrk",
        }
    }
}

/// The processes to sample, by part; shared by the tasks that start and stop services.
#[derive(Debug, Default)]
pub struct Processes {
    pids: Mutex<Vec<(Part, u32)>>,
}

/// CPU seconds used so far by each part's processes, taken at one instant.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    by_pid: BTreeMap<u32, (Part, f64)>,
    children: f64,
}

/// CPU per request of one load run: microseconds of CPU each part used per request, and in
/// all. Parts with no process running are absent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerRequest {
    /// CPU µs per request, by part.
    pub by_part: BTreeMap<Part, f64>,
    /// CPU µs per request, all parts together.
    pub total: f64,
}

impl CpuPerRequest {
    /// Markdown table header cells for [`Self::cells`]: one per part, then the total.
    pub fn header() -> String {
        let mut cells: Vec<String> = Part::ALL
            .iter()
            .map(|p| format!("{} µs", p.label()))
            .collect();
        cells.push("all µs".to_owned());
        cells.join(" | ")
    }

    /// Markdown cells (CPU µs per request) in the order of [`Self::header`]; "–" where a part
    /// had no process, or for `None`.
    pub fn cells(cpu: Option<&Self>) -> String {
        let mut cells: Vec<String> = Part::ALL
            .iter()
            .map(|part| match cpu.and_then(|c| c.by_part.get(part)) {
                Some(us) => format!("{us:.1}"),
                None => "–".to_owned(),
            })
            .collect();
        cells.push(cpu.map_or("–".to_owned(), |c| format!("{:.1}", c.total)));
        cells.join(" | ")
    }
}

impl Processes {
    /// Adds `pid` as a process of `part`.
    pub fn add(&self, part: Part, pid: u32) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        if !pids.contains(&(part, pid)) {
            pids.push((part, pid));
        }
    }

    /// Adds every running process whose command name (`/proc/<pid>/comm`) is one of `names`.
    pub fn add_named(&self, part: Part, names: &[&str]) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if names.contains(&comm.trim()) {
                self.add(part, pid);
            }
        }
    }

    /// Adds every process listening on TCP `port` (of any local address, IPv4 or IPv6), found
    /// by the socket's inode: `/proc/net/tcp{,6}` names the listening socket (state `0A`,
    /// `proc(5)`), `/proc/<pid>/fd/*` links to `socket:[inode]` in the process holding it. A
    /// process is found whatever its command name: a JVM's is `java`. Returns how many.
    pub fn add_listening(&self, part: Part, port: u16) -> usize {
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return 0;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut found = 0;
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let holds = fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| {
                    let target = target.to_string_lossy();
                    target
                        .strip_prefix("socket:[")
                        .and_then(|rest| rest.strip_suffix(']'))
                        .is_some_and(|inode| inodes.iter().any(|i| i == inode))
                })
            });
            if holds {
                self.add(part, pid);
                found += 1;
            }
        }
        found
    }

    /// Reads the CPU time of every process now; a process that has ended is left out.
    pub fn sample(&self) -> Sample {
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let by_pid = pids
            .into_iter()
            .filter_map(|(part, pid)| {
                let [user, system, ..] = stat_ticks(&pid.to_string())?;
                Some((pid, (part, (user + system) / TICKS_PER_SECOND)))
            })
            .collect();
        let children =
            stat_ticks("self").map_or(0.0, |[_, _, cu, cs]| (cu + cs) / TICKS_PER_SECOND);
        Sample { by_pid, children }
    }
}

impl Sample {
    /// CPU seconds used between `self` and the later sample `after`, by part; only processes
    /// present in both count.
    pub fn seconds_until(&self, after: &Sample) -> BTreeMap<Part, f64> {
        let mut by_part = BTreeMap::new();
        for (pid, (part, before)) in &self.by_pid {
            if let Some((_, later)) = after.by_pid.get(pid) {
                *by_part.entry(*part).or_insert(0.0) += (later - before).max(0.0);
            }
        }
        let children = (after.children - self.children).max(0.0);
        if children > 0.0 {
            by_part.insert(Part::LoadGenerator, children);
        }
        by_part
    }

    /// CPU microseconds per request of each part between `self` and `after`, over `requests`
    /// requests (none when `requests` is 0).
    pub fn per_request(&self, after: &Sample, requests: u64) -> Option<CpuPerRequest> {
        if requests == 0 {
            return None;
        }
        let by_part: BTreeMap<Part, f64> = self
            .seconds_until(after)
            .into_iter()
            .map(|(part, seconds)| (part, seconds * 1e6 / requests as f64))
            .collect();
        Some(CpuPerRequest {
            total: by_part.values().sum(),
            by_part,
        })
    }
}

/// CPU seconds (user + system) this process used so far, its children not included.
pub fn own_seconds() -> f64 {
    stat_ticks("self").map_or(0.0, |[user, system, ..]| (user + system) / TICKS_PER_SECOND)
}

/// Inodes of the sockets listening on TCP `port`, from `/proc/net/tcp` and `/proc/net/tcp6`:
/// each line's second field is `address:port` with the port in hex, the fourth the state
/// (`0A` is LISTEN), the tenth the inode.
fn listening_inodes(port: u16) -> Vec<String> {
    let wanted = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit_once(':')?.1;
                    (local_port == wanted && *fields.get(3)? == "0A")
                        .then(|| fields.get(9).map(|inode| (*inode).to_owned()))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `utime`, `stime`, `cutime`, `cstime` (ticks) of `/proc/<pid>/stat`.
fn stat_ticks(pid: &str) -> Option<[f64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // `state` is the first of them, so utime (field 14 of the line) is the 12th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    fields.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_uses_cpu_and_is_counted_under_its_part() {
        let processes = Processes::default();
        processes.add(Part::Api, std::process::id());
        let before = processes.sample();
        // Burn about 50 ms of CPU (two ticks at the least).
        let start = std::time::Instant::now();
        let mut x = 0_u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = processes.sample();
        let used = before.seconds_until(&after);
        assert!(
            used.get(&Part::Api).copied().unwrap_or(0.0) >= 0.02,
            "{used:?}"
        );
        let per = before.per_request(&after, 10).expect("requests > 0");
        assert!(per.total >= 2_000.0, "{per:?}");
        assert!(before.per_request(&after, 0).is_none());
    }

    #[test]
    fn a_listener_is_found_by_its_port_whatever_its_name() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let processes = Processes::default();
        assert_eq!(processes.add_listening(Part::Broker, port), 1);
        let sample = processes.sample();
        assert_eq!(
            sample
                .by_pid
                .get(&std::process::id())
                .map(|(part, _)| *part),
            Some(Part::Broker)
        );
        drop(listener);
        assert_eq!(Processes::default().add_listening(Part::Broker, port), 0);
    }

    #[test]
    fn ended_processes_are_left_out() {
        let processes = Processes::default();
        // Pid 0 never has a /proc entry.
        processes.add(Part::Redis, 0);
        assert!(processes.sample().by_pid.is_empty());
    }
}
