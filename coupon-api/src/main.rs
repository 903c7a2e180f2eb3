//! `coupon-api` binary: `coupon-api` serves; `coupon-api migrate` only applies migrations.

use clap::{Parser, Subcommand};
use coupon_api::config::ApiConfig;
use coupon_api::startup::Application;
use coupon_core::shutdown::shutdown_signal;

/// couponrush HTTP API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ApiConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create the database if missing, apply migrations, and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coupon_core::telemetry::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let stores = &cli.config.stores;
            coupon_core::db::prepare(stores.database_url(), 1).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            tracing::info!(addr = %app.local_addr()?, "coupon-api listening");
            app.run_until_stopped(shutdown_signal()).await?;
        }
    }
    Ok(())
}
