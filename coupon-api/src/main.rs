//! `coupon-api` binary: `coupon-api` serves; `coupon-api migrate` only applies migrations;
//! `coupon-api token --sub 7 [--role admin]` prints a bearer token; `coupon-api openapi`
//! prints the OpenAPI document;
//! `coupon-api archive show|list|run` reads the code archive or runs the archival now.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coupon_api::config::ApiConfig;
use coupon_api::startup::Application;
use coupon_core::auth::{Role, TokenSigner};
use coupon_core::codes;
use coupon_core::shutdown::shutdown_signal;

/// mimalloc instead of glibc's malloc: under load the issue path spent about 30 % of its CPU in
/// glibc's allocator and its arena locks (perf, `make bench` rejection path); mimalloc's
/// per-thread heaps avoid both (<https://github.com/microsoft/mimalloc>).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Print a bearer token (JWT) signed with the configured key, for local use: the demo, load
    /// tests, curl. HS256 uses `JWT_SECRET`; RS256/ES256 need `--private-key`.
    Token {
        /// The subject: a user id for user tokens, any name for admin tokens.
        #[arg(long)]
        sub: String,
        /// The role the token carries.
        #[arg(long, value_enum, default_value = "user")]
        role: Role,
        /// Lifetime of the token (seconds).
        #[arg(long, default_value_t = 3_600)]
        ttl_secs: u64,
        /// PEM private key for RS256/ES256 tokens.
        #[arg(long)]
        private_key: Option<std::path::PathBuf>,
    },
    /// Print the OpenAPI document (the one served at `/openapi.json`) and exit.
    Openapi,
    /// Read the code archive, or move long-deleted codes into it now (MySQL only).
    Archive {
        #[command(subcommand)]
        action: ArchiveCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// Print one archived code as JSON; exit status 1 when it is not in the archive.
    Show {
        /// The code, in any case, with or without separators.
        code: String,
    },
    /// Print a topic's archived codes as JSON lines, newest first.
    List {
        /// The topic id.
        #[arg(long)]
        topic: i64,
        /// Only codes with a smaller id (the last id of the previous page).
        #[arg(long)]
        before: Option<i64>,
        /// Most codes printed (count).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Move codes soft-deleted more than `--older-than-days` ago into the archive, in batches;
    /// safe to interrupt, rerun, or run beside coupon-consumer's own archival job.
    Run {
        /// Age (days) of a soft delete before its code is archived.
        #[arg(long, default_value_t = 183)]
        older_than_days: u32,
        /// Codes moved per transaction (count).
        #[arg(long, default_value_t = 1_000)]
        batch: u32,
    },
}

/// Runs an archive command against the configured MySQL database.
async fn archive(database_url: &str, action: ArchiveCommand) -> anyhow::Result<ExitCode> {
    let pool = coupon_core::db::prepare(database_url, 2).await?;
    match action {
        ArchiveCommand::Show { code } => {
            let code = codes::Code::parse(&code).map_err(|e| anyhow::anyhow!(e.0))?;
            let Some(archived) = codes::find_archived(&pool, &code).await? else {
                eprintln!("{} is not in the archive", code.as_str());
                return Ok(ExitCode::FAILURE);
            };
            println!("{}", serde_json::to_string_pretty(&archived)?);
        }
        ArchiveCommand::List {
            topic,
            before,
            limit,
        } => {
            for archived in codes::list_archived(&pool, topic, before, limit).await? {
                println!("{}", serde_json::to_string(&archived)?);
            }
        }
        ArchiveCommand::Run {
            older_than_days,
            batch,
        } => {
            let now = chrono::Utc::now();
            let cutoff = now - chrono::Duration::days(i64::from(older_than_days));
            let mut moved = 0;
            let total = codes::archive_all_deleted(&pool, cutoff, batch.max(1), now, |n| {
                moved += n;
                eprintln!("archived {moved} codes so far");
            })
            .await?;
            println!("archived {total} codes soft-deleted before {cutoff}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    coupon_core::telemetry::init_tracing();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let stores = &cli.config.stores;
            coupon_core::db::prepare(stores.database_url(), 1).await?;
            tracing::info!("migrations applied");
        }
        Command::Token {
            sub,
            role,
            ttl_secs,
            private_key,
        } => {
            let signer = TokenSigner::from_config(&cli.config.auth, private_key.as_deref())?;
            println!("{}", signer.mint(&sub, role, ttl_secs)?);
        }
        Command::Openapi => {
            println!("{}", coupon_api::openapi::document().to_pretty_json()?);
        }
        Command::Archive { action } => {
            return archive(cli.config.stores.database_url(), action).await;
        }
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            tracing::info!(addr = %app.local_addr()?, "coupon-api listening");
            app.run_until_stopped(shutdown_signal()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
