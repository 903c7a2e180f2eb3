//! The benchmark's results: `codes.json` (the structs) and `codes.md` (the markdown the
//! docs quote), and the console lines printed as it runs.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::latency::Summary;

/// The result file `codes.json`.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) date: DateTime<Utc>,
    pub(super) cores: usize,
    pub(super) generation: Generation,
    pub(super) fill: Generation,
    pub(super) before: Measurement,
    pub(super) bulk_delete: BulkDelete,
    pub(super) archival: Archival,
    pub(super) after: Measurement,
}

/// A generation run: `codes` in `seconds`, and the API's memory while it ran.
#[derive(Debug, Serialize)]
pub(super) struct Generation {
    pub(super) jobs: i64,
    pub(super) codes: i64,
    pub(super) seconds: f64,
    pub(super) codes_per_second: f64,
    pub(super) api_rss_mib_start: Option<f64>,
    pub(super) api_rss_mib_peak: Option<f64>,
    pub(super) api_rss_mib_end: Option<f64>,
}

/// Latencies with the hot table in one state.
#[derive(Debug, Serialize)]
pub(super) struct Measurement {
    pub(super) hot_codes: i64,
    pub(super) hot_table_mib: f64,
    pub(super) redeem_1_client: Summary,
    pub(super) redeem_concurrent: Summary,
    pub(super) concurrent_clients: usize,
    pub(super) redeem_concurrent_per_second: f64,
    pub(super) redeem_failures: usize,
    pub(super) searches: Vec<(String, Summary)>,
}

/// The bulk soft delete of the bulk topic and what a concurrent redeemer saw meanwhile.
#[derive(Debug, Serialize)]
pub(super) struct BulkDelete {
    pub(super) changed: u64,
    pub(super) seconds: f64,
    pub(super) concurrent_redeems: Summary,
}

/// Archival of the deleted codes.
#[derive(Debug, Serialize)]
pub(super) struct Archival {
    pub(super) archived: usize,
    pub(super) seconds: f64,
    pub(super) codes_per_second: f64,
}

pub(super) fn print_measurement(label: &str, m: &Measurement) {
    println!(
        "[bench] {label}: {} hot codes ({:.0} MiB); redeem p50 {:.2} ms p99 {:.2} ms (1 client), \
         p99 {:.2} ms at {:.0}/s ({} clients)",
        m.hot_codes,
        m.hot_table_mib,
        m.redeem_1_client.p50_ms,
        m.redeem_1_client.p99_ms,
        m.redeem_concurrent.p99_ms,
        m.redeem_concurrent_per_second,
        m.concurrent_clients
    );
    for (shape, s) in &m.searches {
        println!(
            "[bench]   search {shape}: p50 {:.2} ms p99 {:.2} ms",
            s.p50_ms, s.p99_ms
        );
    }
}

/// `13` for `Some(13.2)`, `n/a` for `None` (a memory figure in MiB).
pub(super) fn mib(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
}

/// Resident memory (MiB) of a process, from `/proc/<pid>/status` (Linux).
pub(super) fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The report as the markdown the README quotes.
pub(super) fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Code-coupon benchmark, {} on {} cores (`make bench-codes`).\n",
        r.date.format("%Y-%m-%d"),
        r.cores
    );
    let _ = writeln!(
        md,
        "| generation | jobs | codes | seconds | codes/s | API RSS start → peak → end (MiB) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|");
    for (label, g) in [("timed job", &r.generation), ("fill", &r.fill)] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {:.1} | {:.0} | {} → {} → {} |",
            g.jobs,
            g.codes,
            g.seconds,
            g.codes_per_second,
            mib(g.api_rss_mib_start),
            mib(g.api_rss_mib_peak),
            mib(g.api_rss_mib_end)
        );
    }
    let _ = writeln!(
        md,
        "\n| latency (ms), p50 / p99 / max | before archiving | after archiving |"
    );
    let _ = writeln!(md, "|---|---|---|");
    let cell = |s: &Summary| format!("{:.2} / {:.2} / {:.2}", s.p50_ms, s.p99_ms, s.max_ms);
    let (b, a) = (&r.before, &r.after);
    let _ = writeln!(
        md,
        "| hot table | {} codes, {:.0} MiB | {} codes, {:.0} MiB |",
        b.hot_codes, b.hot_table_mib, a.hot_codes, a.hot_table_mib
    );
    let _ = writeln!(
        md,
        "| redeem by code, 1 client | {} | {} |",
        cell(&b.redeem_1_client),
        cell(&a.redeem_1_client)
    );
    let _ = writeln!(
        md,
        "| redeem by code, {} clients | {} ({:.0}/s) | {} ({:.0}/s) |",
        b.concurrent_clients,
        cell(&b.redeem_concurrent),
        b.redeem_concurrent_per_second,
        cell(&a.redeem_concurrent),
        a.redeem_concurrent_per_second
    );
    for ((shape, before), (_, after)) in b.searches.iter().zip(&a.searches) {
        let _ = writeln!(
            md,
            "| search: {shape} | {} | {} |",
            cell(before),
            cell(after)
        );
    }
    let _ = writeln!(
        md,
        "\nBulk soft delete of {} codes: {:.1} s; one client redeeming meanwhile saw {}.  ",
        r.bulk_delete.changed,
        r.bulk_delete.seconds,
        cell(&r.bulk_delete.concurrent_redeems)
    );
    let _ = writeln!(
        md,
        "Archival: {} codes in {:.1} s ({:.0} codes/s).",
        r.archival.archived, r.archival.seconds, r.archival.codes_per_second
    );
    md
}
