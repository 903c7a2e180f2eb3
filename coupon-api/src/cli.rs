//! The `coupon-api` command line: `coupon-api` serves; `coupon-api migrate` only applies
//! migrations; `coupon-api token --sub 7 [--role admin]` prints a bearer token;
//! `coupon-api openapi` prints the OpenAPI document; `coupon-api reconcile` runs one
//! reconciliation pass; `coupon-api archive show|list|run` reads the code archive or runs the
//! archival now. Each command is a thin shell over coupon-core's own functions.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coupon_core::auth::{Role, TokenSigner};
use coupon_core::codes;
use coupon_core::domain::CouponId;
use coupon_core::issue::admission::{AdmissionStore, RedisKeys};
use coupon_core::issue::reconciliation::Reconciler;
use coupon_core::issue::recovery::IssueLog;
use coupon_core::shutdown::shutdown_signal;
use coupon_core::store::kafka::IssuePublisher;

use crate::config::ApiConfig;
use crate::startup::Application;

/// couponrush HTTP API.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do (default: serve).
    pub command: Option<Command>,
    #[command(flatten)]
    /// The service's settings (flags or environment).
    pub config: ApiConfig,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Compare each coupon's admission set, issue messages in flight and MySQL rows, and
    /// repair them (coupon_core::issue::reconciliation): re-publish admissions lost before the broker, add
    /// rows' users missing from the set, fix issued_quantity. Prints one JSON line per coupon.
    /// Safe beside live traffic and when run twice at once.
    Reconcile {
        /// Only this coupon (default: every coupon not deleted).
        #[arg(long)]
        coupon: Option<i64>,
        /// Wait (s) between the two reads that must both show an admission as lost; at least
        /// the producer's message timeout (default: twice it).
        #[arg(long)]
        grace_secs: Option<u64>,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the OpenAPI document (the one served at `/openapi.json`) and exit.
    Openapi,
    /// Read the code archive, or move long-deleted codes into it now (MySQL only).
    Archive {
        /// What to do with the archive.
        #[command(subcommand)]
        action: ArchiveCommand,
    },
}

/// The archive's commands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
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

/// Runs the command `cli` names.
///
/// # Errors
/// The command failed (a store unreachable, bad settings); a command that ran but found a
/// problem answers [`ExitCode::FAILURE`] instead.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let stores = &cli.config.stores;
            coupon_core::store::db::prepare(stores.mysql.url(), 1).await?;
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
        Command::Reconcile {
            coupon,
            grace_secs,
            dry_run,
        } => return reconcile(&cli.config, coupon, grace_secs, dry_run).await,
        Command::Openapi => {
            println!("{}", crate::http::openapi::document().to_pretty_json()?);
        }
        Command::Archive { action } => {
            return archive(cli.config.stores.mysql.url(), action).await;
        }
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            tracing::info!(addr = %app.local_addr()?, "coupon-api listening");
            app.run_until_stopped(shutdown_signal()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs an archive command against the configured MySQL database.
async fn archive(database_url: &str, action: ArchiveCommand) -> anyhow::Result<ExitCode> {
    let pool = coupon_core::store::db::prepare(database_url, 2).await?;
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

/// Runs one reconciliation pass ([`Reconciler::run`]) over `coupon` or every coupon and prints
/// one JSON report per coupon; exit status 1 when a `--dry-run` found something to repair
/// (usable as a check).
async fn reconcile(
    config: &ApiConfig,
    coupon: Option<i64>,
    grace_secs: Option<u64>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let stores = &config.stores;
    let coupon = coupon
        .map(|id| CouponId::parse(id).map_err(|e| anyhow::anyhow!(e.0)))
        .transpose()?;
    let pool = coupon_core::store::db::connect(stores.mysql.url(), 4).await?;
    let redis = stores.connect_redis(stores.redis.timeout).await?;
    let admission = AdmissionStore::new(redis, RedisKeys::new(stores.redis.key_prefix.clone()));
    let publisher = IssuePublisher::new(
        &stores.kafka.brokers,
        &stores.kafka.issue_topic,
        stores.kafka.message_timeout,
    )?;
    let log = IssueLog::new(stores, &config.kafka_consumer_group);
    let grace = grace_secs.map_or(
        stores.kafka.message_timeout * 2,
        std::time::Duration::from_secs,
    );
    let reconciler = Reconciler {
        pool: &pool,
        admission: &admission,
        log: &log,
        publisher: &publisher,
        grace,
        dry_run,
    };
    let reports = reconciler.run(coupon).await;
    publisher.flush(std::time::Duration::from_secs(5));
    let reports = reports?;
    let repaired = reports.iter().filter(|r| r.needed_repair()).count();
    for report in &reports {
        println!("{}", serde_json::to_string(report)?);
    }
    eprintln!(
        "reconciled: {repaired} coupon(s) needed a repair{}",
        if dry_run { " (dry run: none made)" } else { "" }
    );
    Ok(if dry_run && repaired > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
