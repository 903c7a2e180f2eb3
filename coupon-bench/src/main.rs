//! `coupon-bench`: benchmarks of couponrush against a running coupon-api and its stores.
//! `coupon-bench issue` is the issue-path benchmark behind `make bench`, `coupon-bench codes`
//! the code-coupon benchmark behind `make bench-codes`.

mod ceiling;
mod codes;
mod issue;
mod latency;

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
    /// The plain axum server of the issue benchmark's ceiling (started by `issue`).
    CeilingServer(ceiling::CeilingArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Codes(args) => codes::run(args).await,
        Command::Issue(args) => issue::run(args).await,
        Command::CeilingServer(args) => ceiling::serve(args).await,
    }
}
