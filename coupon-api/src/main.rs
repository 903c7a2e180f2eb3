//! The `coupon-api` binary: see [`coupon_api::cli`] for its commands.

use std::process::ExitCode;

use clap::Parser;
use coupon_api::cli::{self, Cli};

/// mimalloc instead of glibc's malloc: under load the issue path spent about 30 % of its CPU in
/// glibc's allocator and its arena locks (perf, `make bench` rejection path); mimalloc's
/// per-thread heaps avoid both (<https://github.com/microsoft/mimalloc>).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let _telemetry = coupon_core::telemetry::init_tracing("coupon-api")?;
    cli::run(Cli::parse()).await
}
