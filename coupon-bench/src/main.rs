//! `coupon-bench`: benchmarks of couponrush against a running coupon-api and its stores.
//! `coupon-bench issue` is the issue-path benchmark behind `make bench`, `coupon-bench codes`
//! the code-coupon benchmark behind `make bench-codes`, `coupon-bench shards` the hot coupon on
//! a Redis Cluster by stock shards and `coupon-bench scale` the issue path with several
//! processes and on the cluster (both also in `make bench`).

mod ceiling;
mod codes;
mod cpu;
mod issue;
mod latency;
mod shards;
mod speed;

/// A client for the benchmarks' own API calls that sends `Authorization: Bearer {token}` with
/// every request and keeps up to `idle` connections.
///
/// # Errors
/// The token is not a valid header value.
fn bearer_client(token: &str, idle: usize) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(idle)
        .build()?)
}

use clap::{Parser, Subcommand};

/// Benchmarks of couponrush.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Code generation rate, then redeem-by-code and search latency with a large hot table,
    /// before and after archiving most of it.
    Codes(codes::CodesArgs),
    /// The issue path against the machine's own limits: ceilings, all admitted, rejections,
    /// consumer drain, exactness.
    Issue(issue::IssueArgs),
    /// The issue path at scale: figure (b) with 1 and 2 coupon-api processes on one Redis node
    /// and on a Redis Cluster (and with `REDIS_WAIT_REPLICAS=1`), the drain with 1 and 2
    /// consumers, with each process's CPU per request.
    Scale(issue::ScaleArgs),
    /// Admissions per second of one hot coupon on a Redis Cluster with its stock in 1 and in K
    /// shards, straight at Redis.
    Shards(shards::ShardsArgs),
    /// The plain axum server of the issue benchmark's ceiling (started by `issue`).
    CeilingServer(ceiling::CeilingArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Codes(args) => codes::run(args).await,
        Command::Issue(args) => issue::run(args).await,
        Command::Scale(args) => issue::run_scale(args).await,
        Command::Shards(args) => shards::run(args).await,
        Command::CeilingServer(args) => ceiling::serve(args).await,
    }
}
