//! `coupon-bench scale`: the issue path at scale (issue 16, item 5), in one run on one
//! machine, with the CPU each process spent per request:
//!
//! - figure (b) (every request admitted, consumer stopped) on one Redis node and on the local
//!   Redis Cluster, each with 1 and with 2 coupon-api processes (wrk's threads split over the
//!   instances; the same thread count for every setting, so the load generator is the same);
//! - figure (b) on the cluster, one instance, with `REDIS_WAIT_REPLICAS=1` (every admission
//!   waits for a replica's acknowledgement before its 202);
//! - the consumer drain (d) with 1 and with 2 coupon-consumer processes in one group.
//!
//! Each setting gets its own database, key prefix, topic and ports; all settings' services run
//! side by side and the runs go round-robin over the settings (after one warm-up each), so the
//! machine's drift over the minutes of the run does not favour one setting. Exactness: per (b)
//! setting the admitted users in Redis (`SCARD`) equal the 202s counted by the API instances;
//! per drain run rows = `issued_quantity` = messages, and every consumer of the group
//! persisted some rows. Writes `scale.json` and `scale.md` into `--out-dir`.

use std::fmt::Write as _;

use anyhow::{ensure, Context};
use chrono::Utc;
use coupon_core::domain::CouponId;
use coupon_core::store::redis::RedisMode;
use serde::Serialize;

use super::figure::{Figure, Run};
use super::harness::Bench;
use super::services::Service;
use super::wrk::UserPlan;
use super::{drain, IssueArgs, OPEN_STOCK};
use crate::cpu::CpuPerRequest;

/// Flags of `coupon-bench scale`: those of `coupon-bench issue` (Redis, broker, ports, runs,
/// seconds, connections), and the settings to compare.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    issue: IssueArgs,
    /// A seed node (`host:port`) of the local Redis Cluster the cluster settings use
    /// (`REDIS_MODE=cluster scripts/stack.sh up` starts one on 7000-7005).
    #[arg(long, default_value = "127.0.0.1:7000")]
    cluster: String,
    /// coupon-api process counts for figure (b), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    instances: Vec<usize>,
    /// coupon-consumer process counts for the drain, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    consumers: Vec<usize>,
}

/// One figure (b) setting.
#[derive(Debug, Clone, Copy, Serialize)]
struct Setting {
    redis: &'static str,
    instances: usize,
    wait_replicas: u32,
}

impl Setting {
    fn label(self) -> String {
        let wait = match self.wait_replicas {
            0 => String::new(),
            n => format!(", REDIS_WAIT_REPLICAS={n}"),
        };
        format!("(b) {}, {} coupon-api{wait}", self.redis, self.instances)
    }
}

/// A figure (b) setting with its services running, during the rounds.
struct Live {
    setting: Setting,
    bench: Bench,
    /// Stopped when dropped.
    _apis: Vec<Service>,
    coupon: CouponId,
    path: String,
    runs: Vec<Run>,
}

/// One row of the report.
#[derive(Debug, Serialize)]
struct Row {
    setting: Option<Setting>,
    consumers: Option<usize>,
    figure: Figure,
    /// CPU busy over the median run, all sampled processes (cores).
    cores_busy: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    cores: usize,
    seconds: u64,
    runs: usize,
    connections: u32,
    wrk_threads: u32,
    rows: Vec<Row>,
}

/// Runs every setting and writes the report.
///
/// # Errors
/// A service, store or tool failed, a setting was inexact, or a figure had errors (the report
/// is written first).
pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    let most = args.instances.iter().copied().max().unwrap_or(1).max(1) as u32;
    let mut issue = args.issue.clone();
    // One wrk thread per instance of the largest setting, in every setting.
    issue.threads = issue.threads.max(most).div_ceil(most) * most;
    for &n in &args.instances {
        ensure!(
            n >= 1 && issue.threads % n as u32 == 0,
            "--instances {n}: wrk's {} threads must split evenly over the instances",
            issue.threads
        );
    }
    let (cluster_host, cluster_port) = args
        .cluster
        .rsplit_once(':')
        .context("--cluster takes host:port")?;
    let cluster_port: u16 = cluster_port.parse().context("--cluster port")?;

    let mut settings = Vec::new();
    for redis in ["single node", "cluster"] {
        for &instances in &args.instances {
            settings.push(Setting {
                redis,
                instances,
                wait_replicas: 0,
            });
        }
    }
    settings.push(Setting {
        redis: "cluster",
        instances: 1,
        wait_replicas: 1,
    });

    // Every setting's services run side by side (own database, key prefix, topic and ports),
    // and the runs go round-robin: setting 1, 2, ..., then 1, 2, ... again. On a shared
    // machine the rate drifts (10 % over a few minutes in our runs); taking the settings in
    // turn spreads the drift over all of them instead of favouring the first.
    let mut live = Vec::new();
    for (index, &setting) in settings.iter().enumerate() {
        let mut setting_args = issue.clone();
        setting_args.api_port = issue.api_port + 100 * index as u16;
        setting_args.database_url = format!("{}_{index}", issue.database_url);
        setting_args.log_dir = issue.log_dir.join(format!("scale-{index}"));
        if setting.redis == "cluster" {
            setting_args.redis_mode = RedisMode::Cluster;
            setting_args.redis_host = cluster_host.to_owned();
            setting_args.redis_port = cluster_port;
        }
        let bench = Bench::connect(setting_args).await?;
        let wait = setting.wait_replicas.to_string();
        let env: Vec<(&str, &str)> = match setting.wait_replicas {
            0 => Vec::new(),
            _ => vec![("REDIS_WAIT_REPLICAS", wait.as_str())],
        };
        let apis = bench.start_apis(setting.instances, &env).await?;
        let coupon = bench.create_coupon(OPEN_STOCK).await?;
        live.push(Live {
            setting,
            path: format!("/api/v1/coupons/{coupon}/issues"),
            runs: Vec::new(),
            bench,
            _apis: apis,
            coupon,
        });
    }
    for round in 0..=issue.runs {
        for live in &mut live {
            let bench = &live.bench;
            // Round 0 is each setting's warm-up; every run sends user ids no run used before.
            let users = UserPlan::Fresh {
                start: 1 + round as i64 * 100_000_000,
            };
            let (seconds, expected) = match round {
                0 => (issue.warmup_seconds, None),
                _ => (issue.seconds, Some("issued")),
            };
            let run = bench
                .load_run(&bench.api_base(), &live.path, &users, seconds, expected)
                .await?;
            if round > 0 {
                eprintln!(
                    "[scale] {} run {round}: {:.0} req/s, p99 {:.2} ms, {} errors",
                    live.setting.label(),
                    run.rps,
                    run.p99_ms,
                    run.errors
                );
                live.runs.push(run);
            }
        }
    }
    let mut rows = Vec::new();
    for live in live {
        // Every admission of the setting, its warm-up's too (the last run waited for the
        // counts to settle).
        let accepted = live.bench.issued().await?;
        let admitted = live.bench.admitted(live.coupon).await?;
        ensure!(
            u64::try_from(admitted).ok() == Some(accepted),
            "{}: {accepted} answered 202 but Redis holds {admitted} admitted users",
            live.setting.label()
        );
        let figure = Figure::new(
            &live.setting.label(),
            live.runs,
            format!("{accepted} admitted in Redis = 202s counted by the instances (warm-up included); consumer stopped"),
        );
        rows.push(Row {
            cores_busy: cores_busy(&figure),
            setting: Some(live.setting),
            consumers: None,
            figure,
        });
    }

    let bench = Bench::connect(issue.clone()).await?;
    let api = bench.start_api().await?;
    // Round-robin too: 1 consumer, 2 consumers, 1, 2, ...
    let mut drains: Vec<Vec<(Run, Vec<u64>)>> = vec![Vec::new(); args.consumers.len()];
    for _ in 0..issue.runs {
        for (runs, &consumers) in drains.iter_mut().zip(&args.consumers) {
            runs.push(drain::run(&bench, consumers).await?);
        }
    }
    for (runs, &consumers) in drains.into_iter().zip(&args.consumers) {
        let figure = drain::figure_of(&bench, consumers, runs);
        rows.push(Row {
            cores_busy: cores_busy(&figure),
            setting: None,
            consumers: Some(consumers),
            figure,
        });
    }
    drop(api);

    let report = Report {
        date: Utc::now().to_rfc3339(),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        seconds: issue.seconds,
        runs: issue.runs,
        connections: issue.connections,
        wrk_threads: issue.threads,
        rows,
    };
    std::fs::create_dir_all(&issue.out_dir)?;
    std::fs::write(
        issue.out_dir.join("scale.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let markdown = report.markdown();
    std::fs::write(issue.out_dir.join("scale.md"), &markdown)?;
    println!("{markdown}");
    let errors: u64 = report.rows.iter().map(|r| r.figure.errors).sum();
    ensure!(errors == 0, "{errors} requests failed; see scale.md");
    Ok(())
}

/// Cores the sampled processes kept busy during the median run: CPU µs per request × rate.
fn cores_busy(figure: &Figure) -> Option<f64> {
    figure
        .cpu
        .as_ref()
        .map(|cpu| cpu.total * figure.rps_median / 1e6)
}

impl Report {
    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# The issue path at scale\n\n\
             `coupon-bench scale`, {} on {} cores: figure (b) (every request admitted, consumer \
             stopped; wrk {} threads, {} connections, split over the coupon-api instances) and the \
             drain (d), {} run(s) of {} s each (the drain: until its messages are persisted). \
             CPU is per request (per row for the drain), of every process of each kind, over the \
             median run; \"cores busy\" is that CPU times the rate.\n",
            self.date, self.cores, self.wrk_threads, self.connections, self.runs, self.seconds
        );
        let _ = writeln!(
            md,
            "| figure | req/s median (min–max) | p50 ms | p99 ms | errors | {} | cores busy |",
            CpuPerRequest::header()
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|{}---:|", "---:|".repeat(7));
        for row in &self.rows {
            let f = &row.figure;
            let ms = |v: f64| match v.is_nan() {
                true => "–".to_owned(),
                false => format!("{v:.2}"),
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} ({:.0}–{:.0}) | {} | {} | {} | {} | {} |",
                f.name,
                f.rps_median,
                f.rps_min,
                f.rps_max,
                ms(f.p50_ms),
                ms(f.p99_ms),
                f.errors,
                CpuPerRequest::cells(f.cpu.as_ref()),
                row.cores_busy.map_or("–".to_owned(), |c| format!("{c:.2}")),
            );
        }
        md.push('\n');
        for row in &self.rows {
            let _ = writeln!(md, "- {}: {}", row.figure.name, row.figure.note);
        }
        md
    }
}
