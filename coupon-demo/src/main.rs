//! `coupon-demo`: starts coupon-api and coupon-consumer (`--api-instances`, `--consumers`;
//! see [`coupon_demo::services`]), creates a coupon, races issue requests at them, waits for
//! coupon-consumer to drain, verifies MySQL and Redis, and stops the services. Exits 1 when
//! any count differs. With `--base-url` it races services already running instead.
//!
//! `coupon-demo verify --coupon N [--accepted M]` runs the verification alone, for a coupon
//! another load tool raced (load-test/run-k6.sh and run-locust.sh call it after their race).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use coupon_core::auth::{AuthConfig, TokenSigner};
use coupon_core::config::StoreConfig;
use coupon_core::domain::CouponId;
use coupon_core::domain::ShardCount;
use coupon_core::issue::admission::{AdmissionStore, RedisKeys, StockShards};
use coupon_core::store::db;
use coupon_core::store::redis::redact;
use coupon_demo::services::{self, ServicePlan, Services};
use coupon_demo::{chart, exactness, RacePlan};
use sqlx::MySqlPool;

/// Race a coupon drop through real HTTP and verify the result.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    race: RaceArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a coupon another load tool raced, once the consumer has drained: no more rows
    /// than stock, one per user, issued_quantity and the Redis admission set in agreement with
    /// them, and as many rows as 202 answers (--accepted). Exits 1 when inexact.
    Verify(VerifyArgs),
}

/// The race of `make demo` (the default command).
#[derive(Debug, Args)]
struct RaceArgs {
    /// The services raced: started by the demo, or already running.
    #[command(flatten)]
    services: ServiceArgs,
    /// Units in stock (count).
    #[arg(long, default_value_t = 500)]
    stock: i64,
    /// Redis stock shards the coupon's stock is split into (count, 1 to 64; 1: unsharded).
    #[arg(long, default_value_t = 1)]
    stock_shards: u16,
    /// Issue requests fired (count).
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Distinct users among them (count); the rest are repeats.
    #[arg(long, default_value_t = 5_000)]
    users: usize,
    /// Requests in flight at once (count).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seed of the request order and repeats.
    #[arg(long, default_value_t = 20261121)]
    seed: u64,
    /// Longest wait (s) for the consumer to persist every accepted issue.
    #[arg(long, default_value_t = 180)]
    drain_timeout_secs: u64,
    /// Where the picture of the race goes (SVG): answers per 100 ms by outcome, admitted and
    /// persisted over time against the stock.
    #[arg(long, default_value = ".local/demo/race.svg")]
    chart: PathBuf,
    /// The coupon-api's token settings; the demo mints an admin token (to create the coupon)
    /// and one token per user with them.
    #[command(flatten)]
    auth: AuthConfig,
    /// Where to read the results (the same stores the services use).
    #[command(flatten)]
    stores: StoreConfig,
}

/// Which coupon-api instances the race goes to.
#[derive(Debug, Args)]
struct ServiceArgs {
    /// Race coupon-api instances already running at these base URLs instead of starting
    /// services; repeat the flag or separate URLs by commas to race several, round-robin. The
    /// coupon is created through the first.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["api_instances", "consumers"])]
    base_url: Vec<String>,
    /// coupon-api processes to start (count): instance i listens on 127.0.0.1:--api-port + i,
    /// serves metrics on 127.0.0.1:9464 + 2i, and logs to --log-dir/coupon-api.log (one
    /// instance) or coupon-api-i.log. The race is spread over them round-robin.
    #[arg(long, default_value = "1", value_name = "N")]
    api_instances: NonZeroUsize,
    /// coupon-consumer processes to start (count), one Kafka consumer group: consumer j
    /// serves metrics on 127.0.0.1:9465 + 2j and logs to --log-dir/coupon-consumer.log (one
    /// consumer) or coupon-consumer-j.log. With several, the race waits until each holds
    /// partitions of the issue topic.
    #[arg(long, default_value = "1", value_name = "M")]
    consumers: NonZeroUsize,
    /// Port of the first coupon-api instance started.
    #[arg(long, env = "API_PORT", default_value_t = 8080)]
    api_port: u16,
    /// Where the coupon-api and coupon-consumer executables are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the started services' logs go.
    #[arg(long, default_value = ".local/demo")]
    log_dir: PathBuf,
    /// Keep the started services running this long (s) before the race and after the
    /// verification, so a Prometheus scraping them sees the drop between quiet samples
    /// (`make monitor-check` holds 12 s).
    #[arg(long, env = "DEMO_HOLD_SECONDS", default_value_t = 0)]
    hold_secs: u64,
}

/// Where the race goes.
enum Target {
    /// Services the demo starts (and stops).
    Start(ServicePlan),
    /// coupon-api instances already running at these base URLs.
    Running(Vec<String>),
}

impl ServiceArgs {
    fn target(&self) -> Target {
        if self.base_url.is_empty() {
            Target::Start(ServicePlan {
                api_instances: self.api_instances,
                consumers: self.consumers,
                api_port: self.api_port,
                bin_dir: self.bin_dir.clone(),
                log_dir: self.log_dir.clone(),
            })
        } else {
            Target::Running(self.base_url.clone())
        }
    }
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The coupon to verify (`coupons.id`).
    #[arg(long, value_parser = parse_coupon)]
    coupon: CouponId,
    /// `202 Accepted` answers the load tool counted for it; the rows must equal them. Leave
    /// it out when unknown (a coupon raced before, requests left unanswered).
    #[arg(long)]
    accepted: Option<i64>,
    /// Longest wait (s) for the consumer to persist every admission.
    #[arg(long, default_value_t = 60)]
    drain_timeout_secs: u64,
    /// Where to read the results (the same stores the services use).
    #[command(flatten)]
    stores: StoreConfig,
}

fn parse_coupon(text: &str) -> Result<CouponId, String> {
    let raw: i64 = text.parse().map_err(|e| format!("{e}"))?;
    CouponId::parse(raw).map_err(|e| e.0)
}

async fn connect(stores: &StoreConfig) -> anyhow::Result<(MySqlPool, AdmissionStore)> {
    let pool = db::connect(stores.mysql.url(), 4).await?;
    let redis = stores.connect_redis(stores.redis.timeout).await?;
    let keys = RedisKeys::new(stores.redis.key_prefix.clone());
    Ok((pool, AdmissionStore::new(redis, keys)))
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let exact = match cli.command {
        Some(Command::Verify(args)) => verify(args).await?,
        None => demo(cli.race).await?,
    };
    Ok(if exact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `coupon-demo verify`: waits for the consumer, prints the verdict; whether it is exact.
async fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let (pool, redis) = connect(&args.stores).await?;
    let holdings = exactness::wait_until_settled(
        &pool,
        &redis,
        args.coupon,
        args.accepted.unwrap_or(0),
        Duration::from_secs(args.drain_timeout_secs),
    )
    .await?;
    if !holdings.settled() {
        println!(
            "the consumer had not caught up after {} s",
            args.drain_timeout_secs
        );
    }
    let verdict = exactness::audit(args.coupon, &holdings, args.accepted);
    println!("{verdict}");
    Ok(verdict.holds())
}

/// `coupon-demo`: the services started, held, raced and stopped (or the services at
/// `--base-url` raced); whether the race was exact. A Ctrl-C or SIGTERM stops the started
/// services and fails.
async fn demo(cli: RaceArgs) -> anyhow::Result<bool> {
    let plan = match cli.services.target() {
        Target::Running(base_urls) => return race(&cli, &base_urls).await,
        Target::Start(plan) => plan,
    };
    let interrupted = coupon_core::shutdown::shutdown_signal();
    tokio::pin!(interrupted);
    let mut services = tokio::select! {
        started = plan.start(&cli.stores.kafka.issue_topic) => started?,
        () = &mut interrupted => anyhow::bail!("interrupted while the services started"),
    };
    let outcome = tokio::select! {
        outcome = race_started(&cli, &services) => outcome,
        () = &mut interrupted => Err(anyhow::anyhow!("interrupted")),
    };
    services.stop();
    outcome
}

/// The race at the started `services`, between the holds, then each process's share and what
/// ran where; whether the race was exact. The shares and the summary are printed whether or
/// not the race could be run.
async fn race_started(cli: &RaceArgs, services: &Services) -> anyhow::Result<bool> {
    let plan = services.plan();
    let hold = Duration::from_secs(cli.services.hold_secs);
    if !hold.is_zero() {
        println!(
            "[demo] holding {} s before the race (DEMO_HOLD_SECONDS)",
            hold.as_secs()
        );
        tokio::time::sleep(hold).await;
    }
    let outcome = race(cli, &services.base_urls()?).await;
    if plan.api_instances.get() > 1 || plan.consumers.get() > 1 {
        for line in services.shares().await? {
            println!("{line}");
        }
    }
    // What the services ran on: the environment they inherited (unset or empty: their
    // default).
    let inherited = |name: &str, default: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    println!(
        "[demo] ran {} coupon-api instance(s) on ports {} and {} coupon-consumer(s) in group \
         {} on Redis {} ({}), Kafka {}, database {}; logs in {}/",
        plan.api_instances,
        services::join(&plan.api_ports()?),
        plan.consumers,
        inherited("KAFKA_CONSUMER_GROUP", "coupon-consumer"),
        inherited("REDIS_MODE", "single"),
        redact(&inherited("REDIS_URL", "redis://127.0.0.1:6379")),
        inherited("KAFKA_BROKERS", "127.0.0.1:9092"),
        // The URLs' credentials stay out of the output.
        redact(&inherited(
            "DATABASE_URL",
            "mysql://coupon:coupon@127.0.0.1:3306/coupon"
        )),
        plan.log_dir.display(),
    );
    if !hold.is_zero() {
        println!(
            "[demo] holding {} s after the verification (DEMO_HOLD_SECONDS)",
            hold.as_secs()
        );
        tokio::time::sleep(hold).await;
    }
    outcome
}

/// The race of `make demo` at `base_urls` and its verification; whether it is exact.
async fn race(cli: &RaceArgs, base_urls: &[String]) -> anyhow::Result<bool> {
    let plan = RacePlan {
        requests: cli.requests,
        users: cli.users,
        concurrency: cli.concurrency,
        seed: cli.seed,
    };
    let client = coupon_demo::http_client(cli.concurrency)?;
    let signer = TokenSigner::from_config(&cli.auth, None)?;
    let (pool, redis) = connect(&cli.stores).await?;

    let admin_base = base_urls
        .first()
        .context("--base-url needs at least one URL")?;
    let coupon =
        coupon_demo::create_coupon(&client, admin_base, &signer, cli.stock, cli.stock_shards)
            .await?;
    let spread = match base_urls.len() {
        1 => String::new(),
        n => format!(", round-robin over {n} coupon-api instances"),
    };
    let sharded = match cli.stock_shards {
        1 => String::new(),
        k => format!(" in {k} stock shards"),
    };
    println!(
        "coupon {coupon}: {} units{sharded}; firing {} requests from {} users, {} at a time{spread}",
        cli.stock, cli.requests, cli.users, cli.concurrency
    );
    // The counts over time, for the picture: from the first request until the drain ends.
    let started = Instant::now();
    let (stop_sampling, stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(chart::sample_counts(
        pool.clone(),
        redis.clone(),
        StockShards::new(coupon, ShardCount::parse(cli.stock_shards)?),
        started,
        stopped,
    ));
    let report = coupon_demo::race_across(&client, base_urls, &signer, coupon, plan).await?;
    println!(
        "race: {} requests in {:.2} s ({:.0} req/s), latency p50 {:.1} ms, p99 {:.1} ms",
        report.requests,
        report.elapsed.as_secs_f64(),
        report.requests as f64 / report.elapsed.as_secs_f64(),
        report.latency(0.50).as_secs_f64() * 1e3,
        report.latency(0.99).as_secs_f64() * 1e3,
    );
    for (label, n) in &report.answers {
        println!("  {label:<24} {n:>7}");
    }
    let expected = i64::try_from(report.accepted.len())?;
    coupon_demo::wait_until_drained(
        &pool,
        coupon,
        expected,
        Duration::from_secs(cli.drain_timeout_secs),
    )
    .await?;
    let _ = stop_sampling.send(());
    let samples = sampler.await?;
    let verification = coupon_demo::verify(&pool, &redis, coupon, cli.stock, &report).await?;
    println!("{verification}");
    if let Some(dir) = cli.chart.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let verdict = if verification.holds() {
        "EXACT"
    } else {
        "MISMATCH"
    };
    let title = format!(
        "couponrush demo: {} requests from {} users for {} units of coupon {coupon}{sharded}: {verdict}",
        cli.requests, cli.users, cli.stock
    );
    chart::draw(&cli.chart, &title, cli.stock, &report.answered, &samples)?;
    println!("chart: {}", cli.chart.display());
    Ok(verification.holds())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("coupon-demo").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ci_s_scale_demo_arguments_start_three_apis_and_two_consumers() {
        let cli = parse(&[
            "--api-instances",
            "3",
            "--consumers",
            "2",
            "--stock-shards",
            "4",
        ])
        .expect("CI's DEMO_ARGS parse");

        let Target::Start(plan) = cli.race.services.target() else {
            panic!("the demo starts its services");
        };
        assert_eq!(plan.api_instances.get(), 3);
        assert_eq!(plan.consumers.get(), 2);
        assert_eq!(cli.race.stock_shards, 4);
    }

    #[test]
    fn without_flags_the_demo_starts_one_of_each_service() {
        let cli = parse(&[]).expect("no flags parse");

        let Target::Start(plan) = cli.race.services.target() else {
            panic!("the demo starts its services");
        };
        assert_eq!((plan.api_instances.get(), plan.consumers.get()), (1, 1));
        assert_eq!(plan.bin_dir, PathBuf::from("target/release"));
        assert_eq!(plan.log_dir, PathBuf::from(".local/demo"));
    }

    #[test]
    fn a_base_url_races_running_services_and_excludes_the_counts() {
        let cli = parse(&["--base-url", "http://127.0.0.1:8080,http://127.0.0.1:8081"])
            .expect("base URLs parse");
        let Target::Running(urls) = cli.race.services.target() else {
            panic!("the demo starts nothing with --base-url");
        };
        assert_eq!(urls.len(), 2);

        assert!(parse(&[
            "--base-url",
            "http://127.0.0.1:8080",
            "--api-instances",
            "2"
        ])
        .is_err());
    }

    #[test]
    fn a_count_of_zero_is_refused() {
        for flag in ["--api-instances", "--consumers"] {
            let err = parse(&[flag, "0"]).expect_err("zero processes");
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        }
    }
}
