//! `coupon-consumer` binary: joins the consumer group and persists issue messages until
//! SIGTERM/Ctrl-C.

use clap::Parser;
use coupon_consumer::config::ConsumerConfig;
use coupon_consumer::Application;

/// mimalloc instead of glibc's malloc: under load the issue path spent about 30 % of its CPU in
/// glibc's allocator and its arena locks (perf, `make bench` rejection path); mimalloc's
/// per-thread heaps avoid both (<https://github.com/microsoft/mimalloc>).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// couponrush issue consumer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ConsumerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = coupon_core::telemetry::init_tracing("coupon-consumer")?;
    let cli = Cli::parse();
    let consumer = Application::build(&cli.config).await?;
    tracing::info!(group = %cli.config.group_id, topic = %cli.config.stores.kafka.issue_topic, "coupon-consumer running");
    consumer
        .run_until_stopped(coupon_core::shutdown::shutdown_signal())
        .await
}
