//! `coupon-chaos`: the fault-injection suite (`make chaos`, scripts/chaos.sh). Runs each
//! scenario of [`coupon_demo::chaos`], prints its counts, writes a Markdown table of all of
//! them, and exits 1 when any scenario's assertion fails.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use coupon_demo::chaos::{self, Binaries, ChaosPlan, Fault};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Scenarios to run (repeatable; default: all seven).
    #[arg(long, value_enum)]
    fault: Vec<Fault>,
    /// Units in stock (count).
    #[arg(long, default_value_t = 500)]
    stock: i64,
    /// Requests per race (count).
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Distinct users per race (count).
    #[arg(long, default_value_t = 5_000)]
    users: usize,
    /// Requests in flight at most (count).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests started per second at most: paces the race so the fault lands mid-race.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// 202 answers after which the fault starts (count).
    #[arg(long, default_value_t = 150)]
    trigger: usize,
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
    /// tansu executable (scripts/install-tansu.sh prints its path).
    #[arg(long, env = "TANSU_BIN")]
    tansu_bin: PathBuf,
    /// Where each scenario's process logs go (a directory per scenario).
    #[arg(long, default_value = ".local/chaos")]
    log_dir: PathBuf,
    /// The Markdown table of the counts.
    #[arg(long, default_value = ".local/chaos/summary.md")]
    summary: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let bins = Binaries {
        api: cli.api_bin.clone(),
        consumer: cli.consumer_bin.clone(),
        tansu: cli.tansu_bin.clone(),
    };
    let plan = ChaosPlan {
        stock: cli.stock,
        requests: cli.requests,
        users: cli.users,
        concurrency: cli.concurrency,
        rate: cli.rate,
        trigger: cli.trigger,
        seed: cli.seed,
        wait_replicas: cli.wait_replicas,
    };
    let faults = if cli.fault.is_empty() {
        Fault::ALL.to_vec()
    } else {
        cli.fault.clone()
    };
    let mut table = vec![
        "| scenario | requests | 202 | 409 duplicate | 409 sold out | 503 | in doubt | rows | SCARD | issued_quantity | 202 without row | row without 202 | 409 duplicate without row | reconciliation (re-published / re-admitted) | consumer exit on SIGTERM (s) | verdict |".to_owned(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |".to_owned(),
    ];
    let mut failed = 0;
    for fault in faults {
        println!(
            "[chaos] {}: {} requests from {} users for {} units, fault after {} accepted",
            fault.name(),
            plan.requests,
            plan.users,
            plan.stock,
            plan.trigger
        );
        let counts = match chaos::run(fault, &bins, &plan, &cli.log_dir.join(fault.name())).await {
            Ok(counts) => counts,
            Err(err) => {
                // A scenario that could not finish is a failed scenario; the others still run.
                println!(
                    "[chaos] {}: FAILED, could not finish: {err:#}",
                    fault.name()
                );
                failed += 1;
                table.push(format!(
                    "| {} | could not finish: {err:#} |||||||||||||| FAILED |",
                    fault.name()
                ));
                continue;
            }
        };
        let holds = counts.holds(plan.stock);
        println!("{counts}");
        println!(
            "[chaos] {}: {}",
            fault.name(),
            if holds { "passed" } else { "FAILED" }
        );
        if !holds {
            failed += 1;
        }
        let n = |label: &str| counts.answers.get(label).copied().unwrap_or(0);
        table.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.1} | {} |",
            fault.name(),
            counts.requests,
            counts.accepted,
            n("409 ALREADY_ISSUED"),
            n("409 SOLD_OUT"),
            n("503 UNAVAILABLE"),
            counts.in_doubt,
            counts.rows,
            counts.admitted,
            counts.issued_quantity,
            counts.accepted_without_row,
            counts.row_without_accept,
            counts.already_issued_without_row,
            counts.reconciled.0,
            counts.reconciled.1,
            counts.consumer_shutdown.as_secs_f64(),
            if holds { "passed" } else { "FAILED" },
        ));
    }
    if let Some(dir) = cli.summary.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut summary = std::fs::File::create(&cli.summary)?;
    writeln!(summary, "{}", table.join("\n"))?;
    println!("{}", table.join("\n"));
    println!("[chaos] {failed} scenario(s) failed");
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
