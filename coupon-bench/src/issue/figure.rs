//! One figure of the report: its load runs, each a rate with latencies and failures, and
//! their min/median/max.

use coupon_core::domain::CouponId;
use serde::Serialize;

use crate::cpu::CpuPerRequest;

/// One load run: rate, latency (ms), failures and the CPU it cost.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Run {
    pub(super) requests: u64,
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) max_ms: f64,
    /// Transport errors, timeouts and answers other than the expected outcome (count).
    pub(super) errors: u64,
    /// CPU µs per request of each process, over the load generator's run (none for runs
    /// measured without one).
    pub(super) cpu: Option<CpuPerRequest>,
}

impl Run {
    /// A run measured as a rate only (no per-request latencies, no errors counted).
    pub(super) fn rate_only(requests: u64, rps: f64) -> Self {
        Self {
            requests,
            rps,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            p999_ms: f64::NAN,
            max_ms: f64::NAN,
            errors: 0,
            cpu: None,
        }
    }
}

/// Runs of one figure with min/median/max of the rate and the median run's latencies.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Figure {
    pub(super) name: String,
    pub(super) runs: Vec<Run>,
    pub(super) rps_min: f64,
    pub(super) rps_median: f64,
    pub(super) rps_max: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) errors: u64,
    /// The median run's CPU per request.
    pub(super) cpu: Option<CpuPerRequest>,
    pub(super) note: String,
}

impl Figure {
    pub(super) fn new(name: &str, runs: Vec<Run>, note: String) -> Self {
        let mut by_rate = runs.clone();
        by_rate.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let median = by_rate[by_rate.len() / 2].clone();
        Self {
            name: name.to_owned(),
            rps_min: by_rate[0].rps,
            rps_median: median.rps,
            rps_max: by_rate[by_rate.len() - 1].rps,
            p50_ms: median.p50_ms,
            p99_ms: median.p99_ms,
            p999_ms: median.p999_ms,
            errors: runs.iter().map(|r| r.errors).sum(),
            cpu: median.cpu,
            runs,
            note,
        }
    }
}

/// A coupon a figure issued, for the exactness check.
#[derive(Debug, Clone, Copy)]
pub(super) struct Issued {
    pub(super) coupon: CouponId,
    /// Units on offer (count).
    pub(super) stock: i64,
    /// Admissions counted while issuing it (count): 202 answers, or admitted and published
    /// after wrk closed the connection at the end of a run.
    pub(super) accepted: u64,
}
