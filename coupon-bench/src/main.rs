//! `coupon-bench`: benchmarks of couponrush against a running coupon-api and its stores.
//! `coupon-bench codes` is the code-coupon benchmark behind `make bench-codes`.

mod codes;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Codes(args) => codes::run(args).await,
    }
}
