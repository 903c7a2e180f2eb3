//! Tracing and metrics set-up shared by both services.

use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber, writing to stderr (stdout stays free for what a
/// command prints): `RUST_LOG` filters (default `info`), and `LOG_FORMAT=json` switches to one
/// JSON object per line. Safe to call more than once (later
/// calls are no-ops), which tests rely on.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}

/// Histogram buckets (seconds) for every `*_duration_seconds` metric: 0.5 ms to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets (count) for batch sizes.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the global Prometheus recorder and serves `GET /metrics` on `listen`, a port apart
/// from public traffic. Must run inside a Tokio runtime. Only the first call in a process
/// installs anything (the recorder is process-global); later calls return `Ok`.
///
/// # Errors
/// The listener cannot bind or the recorder cannot be installed.
pub fn install_metrics(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    if INSTALLED.set(()).is_err() {
        return Ok(());
    }
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("batch_size".into()), BATCH_SIZE_BUCKETS)?
        .install()
        .with_context(|| format!("serving metrics on {listen}"))
}
