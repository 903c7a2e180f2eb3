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
//! (after a `--warmup-seconds` warm-up), reported as min/median/max. Outcomes are counted by the API's own
//! `coupon_issue_requests_total`, scraped before and after each run. Writes `issue.json` and
//! `issue.md` into `--out-dir`, then fails if a coupon is inexact or a figure had errors.
//!
//! One module per figure: [`ceilings`] (a), [`admitted`] (b), [`rejections`] (c), [`drain`]
//! (d); [`harness`] is what they share, [`report`] the tables and the exactness check.

mod admitted;
mod broker;
mod ceilings;
mod drain;
mod figure;
mod harness;
mod rejections;
mod report;
mod scale;
mod services;
mod wrk;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure};
use coupon_core::store::redis::RedisMode;

use figure::Figure;
use harness::{wait_for, Bench};
use report::Report;

use crate::speed::Probes;
pub use scale::{run as run_scale, ScaleArgs};

/// Stock of the coupons that must never sell out during a run (count).
const OPEN_STOCK: i64 = 1_000_000_000;

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
    /// Length of the unmeasured load run before each HTTP figure's runs (s).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// wrk connections, the same for every HTTP figure (count).
    #[arg(long, default_value_t = 128)]
    connections: u32,
    /// wrk threads (count).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Admission script calls per `redis-benchmark` run (count).
    #[arg(long, default_value_t = 1_000_000)]
    redis_calls: u64,
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
    #[arg(
        long,
        default_value = "mysql://coupon:coupon@127.0.0.1:3306/coupon_bench_issue"
    )]
    database_url: String,
    /// Redis host for redis-benchmark and the services.
    #[arg(long, default_value = "127.0.0.1")]
    redis_host: String,
    /// Redis port.
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    /// What `--redis-host`:`--redis-port` is: one node, or a seed node of a Redis Cluster
    /// (then every figure but the ceilings can run: redis-benchmark speaks to one node).
    #[arg(long, value_enum, default_value_t = RedisMode::Single)]
    redis_mode: RedisMode,
    /// Kafka bootstrap servers (every one's process is sampled as the broker's CPU, e.g.
    /// the three of `KAFKA_MODE=cluster make up`:
    /// `127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Replicas of every topic the benchmark creates (count; 1, or 3 on the three-broker
    /// cluster to measure what replication costs).
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// `min.insync.replicas` of those topics (count; the broker's default when unset, 2 for a
    /// cluster run as a shop must).
    #[arg(long)]
    min_insync_replicas: Option<i32>,
    /// Partitions of the benchmark's topics. Chosen on tansu 0.6, the earlier local broker,
    /// whose cost was per partition batch (with 64 publishes in flight it acknowledged about
    /// 6,500 msg/s on 12 partitions and 11,300 on 3); kept so figures stay comparable until
    /// the tables are re-measured on Apache Kafka.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Port of coupon-api (its metrics port is this + 1000, the consumer's this + 1001, the
    /// ceiling server's this + 9; further instances and consumers + 10 each). Not 8090: its
    /// metrics port would be 9090, `make monitor`'s Prometheus.
    #[arg(long, default_value_t = 8190)]
    api_port: u16,
    /// Where `issue.json` and `issue.md` go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Where the services' logs go.
    #[arg(long, default_value = ".local/bench")]
    log_dir: PathBuf,
}

/// Runs the whole benchmark (or the part `--only` names) and writes the report.
///
/// # Errors
/// A tool or service is missing or failed, a coupon is inexact or a figure had errors (the
/// report is still written first).
pub async fn run(args: IssueArgs) -> anyhow::Result<()> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(
        args.redis_mode == RedisMode::Single || args.only.is_some(),
        "the whole benchmark needs one Redis node (its ceilings run redis-benchmark); \
         on a cluster, --only one part"
    );
    let bench = Bench::connect(args).await?;
    if let Some(part) = bench.args.only.as_deref() {
        return only(&bench, part).await;
    }

    let mut probes = Probes::default();
    probes.take("at the start").await?;
    let ceilings = ceilings::measure(&bench).await?;
    probes.take("after the ceilings").await?;
    let api = bench.start_api().await?;
    let drain = drain::figure(&bench).await?;
    // (b) with the consumer stopped.
    let (issue, open) = admitted::figure(&bench, OPEN_STOCK).await?;
    probes.take("after (d) and (b)").await?;

    // From here on the consumer runs: it persists (b)'s messages and relays their events
    // (both waited for, so they do not share the CPU with (c)) and broadcasts the sell-out.
    let consumer = bench.start_consumer(None, &bench.group)?;
    persisted(&bench, open.coupon, "(b)'s messages persisted").await?;
    bench.outbox_relayed().await?;
    let rejection = rejections::figures(&bench, OPEN_STOCK).await?;
    probes.take("after (c)").await?;

    // Exactness: persist everything, then compare every count.
    let mut issued = vec![open];
    issued.extend(rejection.issued);
    for coupon in &issued {
        persisted(&bench, coupon.coupon, "the final drain").await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.stop();
    api.stop();
    let exactness = report::exactness(&bench, &issued).await?;
    probes.take("at the end").await?;

    let report = Report::new(
        &bench.args,
        probes,
        ceilings,
        issue,
        rejection,
        drain,
        exactness,
    );
    let out_dir = &bench.args.out_dir;
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("issue.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let markdown = report.markdown();
    std::fs::write(out_dir.join("issue.md"), &markdown)?;
    println!("{markdown}");
    report.check()
}

/// Waits until MySQL holds a row for every member of `coupon`'s admission set.
async fn persisted(
    bench: &Bench,
    coupon: coupon_core::domain::CouponId,
    what: &str,
) -> anyhow::Result<()> {
    let admitted = bench.admitted(coupon).await?;
    wait_for(what, Duration::from_secs(600), || async {
        (bench.issued_quantity(coupon).await.ok()? >= admitted).then_some(())
    })
    .await
}

/// `--only`: one part, for tuning, with no report file; prints a machine probe, then each
/// figure's CPU per request.
async fn only(bench: &Bench, part: &str) -> anyhow::Result<()> {
    Probes::default().take("before the figure").await?;
    match part {
        "kafka" => {
            let (produce, consume) = ceilings::measure_kafka(bench).await?;
            print_cpu(&produce);
            print_cpu(&consume);
            Ok(())
        }
        "drain" => {
            let _api = bench.start_api().await?;
            print_cpu(&drain::figure(bench).await?);
            Ok(())
        }
        "issue" => {
            let _api = bench.start_api().await?;
            print_cpu(&admitted::figure(bench, OPEN_STOCK).await?.0);
            Ok(())
        }
        "rejection" => {
            let _api = bench.start_api().await?;
            let _consumer = bench.start_consumer(None, &bench.group)?;
            let rejection = rejections::figures(bench, OPEN_STOCK).await?;
            for figure in [
                &rejection.sold_out,
                &rejection.repeat,
                &rejection.repeat_here,
            ] {
                print_cpu(figure);
            }
            Ok(())
        }
        other => bail!("--only takes kafka, drain, issue or rejection, not {other}"),
    }
}

/// Prints `figure`'s median rate and its CPU µs per request by process, one line.
fn print_cpu(figure: &Figure) {
    let parts = figure.cpu.as_ref().map_or_else(String::new, |cpu| {
        cpu.by_part
            .iter()
            .map(|(part, us)| format!("{} {us:.1}", part.label()))
            .chain([format!("all {:.1}", cpu.total)])
            .collect::<Vec<_>>()
            .join(", ")
    });
    eprintln!(
        "[bench] {}: {:.0}/s; CPU µs per request: {parts}",
        figure.name, figure.rps_median
    );
}
