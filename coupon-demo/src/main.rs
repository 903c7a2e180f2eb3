//! `coupon-demo`: creates a coupon, races issue requests at a running coupon-api, waits for
//! coupon-consumer to drain, and verifies MySQL and Redis. Exits 1 when any count differs.
//!
//! `coupon-demo verify --coupon N [--accepted M]` runs the verification alone, for a coupon
//! another load tool raced (load-test/run-k6.sh and run-locust.sh call it after their race).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use coupon_core::auth::{AuthConfig, TokenSigner};
use coupon_core::config::StoreConfig;
use coupon_core::domain::CouponId;
use coupon_core::issue::admission::{AdmissionStore, RedisKeys, StockShards};
use coupon_core::store::db;
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
    /// Base URL of coupon-api; repeat the flag or separate URLs by commas to race several
    /// instances, round-robin. The coupon is created through the first.
    #[arg(
        long,
        env = "API_BASE_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    base_url: Vec<String>,
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
        None => race(cli.race).await?,
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

/// `coupon-demo`: the race of `make demo` and its verification; whether it is exact.
async fn race(cli: RaceArgs) -> anyhow::Result<bool> {
    let plan = RacePlan {
        requests: cli.requests,
        users: cli.users,
        concurrency: cli.concurrency,
        seed: cli.seed,
    };
    let client = coupon_demo::http_client(cli.concurrency)?;
    let signer = TokenSigner::from_config(&cli.auth, None)?;
    let (pool, redis) = connect(&cli.stores).await?;

    let admin_base = cli
        .base_url
        .first()
        .context("--base-url needs at least one URL")?;
    let coupon =
        coupon_demo::create_coupon(&client, admin_base, &signer, cli.stock, cli.stock_shards)
            .await?;
    let spread = match cli.base_url.len() {
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
        StockShards::new(coupon, cli.stock_shards),
        started,
        stopped,
    ));
    let report = coupon_demo::race_across(&client, &cli.base_url, &signer, coupon, plan).await?;
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
