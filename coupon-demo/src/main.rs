//! `coupon-demo`: creates a coupon, races issue requests at a running coupon-api, waits for
//! coupon-consumer to drain, and verifies MySQL and Redis. Exits 1 when any count differs.

use std::time::Duration;

use clap::Parser;
use coupon_core::admission::{self, AdmissionStore, RedisKeys};
use coupon_core::auth::{AuthConfig, TokenSigner};
use coupon_core::config::StoreConfig;
use coupon_core::db;
use coupon_demo::RacePlan;

/// Race a coupon drop through real HTTP and verify the result.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Base URL of coupon-api.
    #[arg(long, env = "API_BASE_URL", default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// Units in stock (count).
    #[arg(long, default_value_t = 500)]
    stock: i64,
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
    /// The coupon-api's token settings; the demo mints an admin token (to create the coupon)
    /// and one token per user with them.
    #[command(flatten)]
    auth: AuthConfig,
    /// Where to read the results (the same stores the services use).
    #[command(flatten)]
    stores: StoreConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let plan = RacePlan {
        requests: cli.requests,
        users: cli.users,
        concurrency: cli.concurrency,
        seed: cli.seed,
    };
    let client = coupon_demo::http_client(cli.concurrency)?;
    let signer = TokenSigner::from_config(&cli.auth, None)?;
    let pool = db::connect(cli.stores.database_url(), 4).await?;
    let redis = admission::connect(cli.stores.redis_url(), cli.stores.redis_timeout()).await?;
    let redis = AdmissionStore::new(redis, RedisKeys::new(cli.stores.redis_key_prefix.clone()));

    let coupon = coupon_demo::create_coupon(&client, &cli.base_url, &signer, cli.stock).await?;
    println!(
        "coupon {coupon}: {} units; firing {} requests from {} users, {} at a time",
        cli.stock, cli.requests, cli.users, cli.concurrency
    );
    let report = coupon_demo::race(&client, &cli.base_url, &signer, coupon, plan).await?;
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
    let verification = coupon_demo::verify(&pool, &redis, coupon, cli.stock, &report).await?;
    println!("{verification}");
    if !verification.holds() {
        std::process::exit(1);
    }
    Ok(())
}
