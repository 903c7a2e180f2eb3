//! `coupon-chaos`: the fault-injection suite (`make chaos`, scripts/chaos.sh). Runs each
//! scenario of [`coupon_demo::chaos`], prints its counts before and after the reconciliation
//! pass and the rules it broke, writes a Markdown table of all of them, and exits 1 when any
//! scenario broke a rule or could not finish.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use coupon_demo::chaos::{self, Binaries, ChaosPlan, Counts, Fault};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Scenarios to run (repeatable; default: all ten).
    #[arg(long, value_enum)]
    fault: Vec<Fault>,
    /// The CI size: 4,000 requests from 2,000 users for 200 units, the fault after 60
    /// accepted, at 200 requests per second (the race lasts 20 s, so the longest fault still
    /// ends inside it). `--stock`, `--requests`, `--users`, `--trigger` and `--rate` override it.
    /// The cluster scenarios run one size either way (see `Cli::plan`).
    #[arg(long)]
    ci: bool,
    /// Units in stock (count; 500, 200 with --ci, 1,000 in the cluster scenarios).
    #[arg(long)]
    stock: Option<i64>,
    /// Requests per race (count; 10,000, 4,000 with --ci and in the cluster scenarios).
    #[arg(long)]
    requests: Option<usize>,
    /// Distinct users per race (count; 5,000, 2,000 with --ci and in the cluster scenarios).
    #[arg(long)]
    users: Option<usize>,
    /// Requests in flight at most (count).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests started per second at most: paces the race so the fault lands mid-race (400,
    /// 200 with --ci, 100 in the cluster scenarios).
    #[arg(long)]
    rate: Option<f64>,
    /// 202 answers after which the fault starts (count; 150, 60 with --ci).
    #[arg(long)]
    trigger: Option<usize>,
    /// Seed of the request order.
    #[arg(long, default_value_t = 20261122)]
    seed: u64,
    /// REDIS_WAIT_REPLICAS of the services in redis-master-killed (count); 0 shows what
    /// asynchronous replication loses without it.
    #[arg(long, default_value_t = 1)]
    wait_replicas: u32,
    /// coupon-api executable.
    #[arg(long, default_value = "target/debug/coupon-api")]
    api_bin: PathBuf,
    /// coupon-consumer executable.
    #[arg(long, default_value = "target/debug/coupon-consumer")]
    consumer_bin: PathBuf,
    /// The broker launcher (`DIR PORT CONTROLLER_PORT [NODE_ID VOTERS CLUSTER_ID]`; it execs
    /// the JVM), for broker-stopped and the cluster scenarios.
    #[arg(long, default_value = "scripts/kafka-broker.sh")]
    broker_launcher: PathBuf,
    /// The installed Apache Kafka, as scripts/install-kafka.sh prints it.
    #[arg(long, env = "KAFKA_ROOT")]
    kafka_root: PathBuf,
    /// Where each scenario's process logs go (a directory per scenario).
    #[arg(long, default_value = ".local/chaos")]
    log_dir: PathBuf,
    /// The Markdown table of the counts.
    #[arg(long, default_value = ".local/chaos/summary.md")]
    summary: PathBuf,
}

impl Cli {
    /// The race of `fault`'s scenario: the full size, or the CI size, with explicit flags on
    /// top. The cluster scenarios race slower for more units, 4,000 requests from 2,000 users
    /// for 1,000 units at 100 per second (40 s), so the drop is still selling when their
    /// brokers are down: a broker's controlled shutdown (SIGTERM) takes about 5 s, two of
    /// them 8 s, by when the full-size race has sold out; and the race outlasts the 20-30 s
    /// until the stopped brokers are back in sync.
    fn plan(&self, fault: Fault) -> ChaosPlan {
        // (stock, requests, users, trigger, rate)
        let (stock, requests, users, trigger, rate) = if fault.is_cluster() {
            (1_000, 4_000, 2_000, 150, 100.0)
        } else if self.ci {
            (200, 4_000, 2_000, 60, 200.0)
        } else {
            (500, 10_000, 5_000, 150, 400.0)
        };
        ChaosPlan {
            stock: self.stock.unwrap_or(stock),
            requests: self.requests.unwrap_or(requests),
            users: self.users.unwrap_or(users),
            concurrency: self.concurrency,
            rate: self.rate.unwrap_or(rate),
            trigger: self.trigger.unwrap_or(trigger),
            seed: self.seed,
            wait_replicas: self.wait_replicas,
        }
    }
}

const TABLE_HEAD: [&str; 2] = [
    "| scenario | time (s) | requests | 202 | 202 to requests sent after the fault | 409 duplicate | 409 sold out | 503 | in doubt (bound) | before the pass: rows / distinct / SCARD / issued_quantity | 202 without row | row without 202 | 409 duplicate without row | unconsumed | pass: re-published / re-admitted / issued_quantity | after the pass: rows / SCARD / issued_quantity | consumer exit on SIGTERM (s) | brokers down: units left / answered / 202 | verdict |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | --- |",
];

/// One row of the summary table.
fn table_row(
    fault: Fault,
    plan: &ChaosPlan,
    counts: &Counts,
    took: Duration,
    verdict: &str,
) -> String {
    let n = |label: &str| counts.answers.get(label).copied().unwrap_or(0);
    let (b, a, r) = (counts.before, counts.after, &counts.reconciled);
    format!(
        "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} ({}) | {} / {} / {} / {} | {} | {} | {} | {} | {} / {} / {} → {} | {} / {} / {} | {:.1} | {} | {} |",
        fault.name(),
        took.as_secs_f64(),
        counts.requests,
        counts.accepted,
        counts.fault.accepted_after,
        n("409 ALREADY_ISSUED"),
        n("409 SOLD_OUT"),
        n("503 UNAVAILABLE"),
        counts.in_doubt,
        fault.in_doubt_bound(plan),
        b.rows,
        b.distinct_users,
        b.admitted,
        b.issued_quantity,
        counts.accepted_without_row,
        counts.row_without_accept,
        counts.already_issued_without_row,
        counts.unconsumed,
        r.republished.len(),
        r.readmitted.len(),
        r.issued_quantity_before,
        r.issued_quantity_after,
        a.rows,
        a.admitted,
        a.issued_quantity,
        counts.consumer_shutdown.as_secs_f64(),
        counts.fault.outage.map_or_else(
            || "–".to_owned(),
            |o| format!("{} / {} / {}", o.units_left, o.answered, o.accepted)
        ),
        verdict,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let bins = Binaries {
        api: cli.api_bin.clone(),
        consumer: cli.consumer_bin.clone(),
        broker: cli.broker_launcher.clone(),
        kafka_root: cli.kafka_root.clone(),
    };
    let faults = if cli.fault.is_empty() {
        Fault::ALL.to_vec()
    } else {
        cli.fault.clone()
    };
    let mut table: Vec<String> = TABLE_HEAD.iter().map(|s| (*s).to_owned()).collect();
    let mut failed = 0;
    let suite = Instant::now();
    for fault in faults {
        let plan = cli.plan(fault);
        println!(
            "[chaos] {}: {} requests from {} users for {} units, fault after {} accepted",
            fault.name(),
            plan.requests,
            plan.users,
            plan.stock,
            plan.trigger
        );
        let started = Instant::now();
        let ran = chaos::run(fault, &bins, &plan, &cli.log_dir.join(fault.name())).await;
        let took = started.elapsed();
        let counts = match ran {
            Ok(counts) => counts,
            Err(err) => {
                // A scenario that could not finish is a failed scenario; the others still run.
                println!(
                    "[chaos] {}: FAILED after {:.0} s, could not finish: {err:#}",
                    fault.name(),
                    took.as_secs_f64()
                );
                failed += 1;
                table.push(format!(
                    "| {} | {:.0} | could not finish: {} |||||||||||||||| FAILED |",
                    fault.name(),
                    took.as_secs_f64(),
                    format!("{err:#}").replace('|', "\\|")
                ));
                continue;
            }
        };
        let failures = counts.failures(fault, &plan);
        println!("{counts}");
        for failure in &failures {
            println!("  broken: {failure}");
        }
        let verdict = if failures.is_empty() {
            "passed".to_owned()
        } else {
            failed += 1;
            let names: Vec<&str> = failures.iter().map(|f| f.rule.name()).collect();
            format!("FAILED: {}", names.join(", "))
        };
        println!(
            "[chaos] {}: {verdict} in {:.0} s",
            fault.name(),
            took.as_secs_f64()
        );
        table.push(table_row(fault, &plan, &counts, took, &verdict));
    }
    if let Some(dir) = cli.summary.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut summary = std::fs::File::create(&cli.summary)?;
    writeln!(summary, "{}", table.join("\n"))?;
    println!("{}", table.join("\n"));
    println!(
        "[chaos] {failed} scenario(s) failed; {:.0} s in all",
        suite.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
