//! wrk runs with `bench/wrk/issue.lua`: which user ids a run sends, and wrk's own figures.

use std::process::Command;

use anyhow::Context;

use super::IssueArgs;

/// Which user ids a wrk run sends.
pub(super) enum UserPlan {
    /// A new id per request, from `start` on.
    Fresh { start: i64 },
    /// `start ..= start + count - 1` in turn.
    Cycle { start: i64, count: i64 },
}

/// wrk's own figures (`WRK_JSON` line of bench/wrk/issue.lua).
#[derive(Debug, serde::Deserialize)]
pub(super) struct WrkResult {
    pub(super) requests: u64,
    pub(super) duration_us: u64,
    pub(super) connect_errors: u64,
    pub(super) read_errors: u64,
    pub(super) write_errors: u64,
    pub(super) status_errors: u64,
    pub(super) timeouts: u64,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    pub(super) max_us: u64,
}

/// Runs wrk with `bench/wrk/issue.lua` against `base` + `path` for `seconds`; with `spread`
/// (`host:port,host:port,…`), wrk's threads connect to those servers in turn instead.
///
/// # Errors
/// wrk is missing or printed no result line.
pub(super) fn wrk(
    args: &IssueArgs,
    base: &str,
    spread: Option<&str>,
    path: &str,
    users: &UserPlan,
    seconds: u64,
    token: &str,
) -> anyhow::Result<WrkResult> {
    let (mode, start, count) = match users {
        UserPlan::Fresh { start } => ("fresh", *start, 0),
        UserPlan::Cycle { start, count } => ("cycle", *start, *count),
    };
    let output = Command::new("wrk")
        .env("BENCH_TOKEN", token)
        .env("BENCH_ADDRS", spread.unwrap_or(""))
        .arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&args.wrk_script)
        .arg(base)
        .arg("--")
        .args([
            path.to_owned(),
            mode.to_owned(),
            start.to_string(),
            count.to_string(),
            args.threads.to_string(),
        ])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .with_context(|| {
            format!(
                "wrk printed no result: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    Ok(serde_json::from_str(line)?)
}
