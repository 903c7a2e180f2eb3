//! How fast this machine's cores are right now: a fixed CPU-bound workload timed on one thread.
//!
//! On a shared VM the host's other guests can halve the speed of a core without the guest
//! seeing it (no steal time in `/proc/stat`, no hardware counters), so two runs of the same
//! binary can differ by 2x. A report that carries this probe, taken between the parts of its
//! run, says whether its run was on a fast or a slow machine; its figures are comparable
//! only with runs whose probe is close.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

/// Iterations of the workload per round (about 60 ms on the 2-core development machine when its
/// cores were steady, 2026-12-06).
const ITERATIONS: u64 = 50_000_000;

/// Rounds per probe; the median is reported.
const ROUNDS: usize = 5;

/// The probe's figures through one run, each taken between two of its parts.
#[derive(Debug, Default, Serialize)]
pub struct Probes(Vec<Probe>);

/// One probe: when it was taken and its figure.
#[derive(Debug, Serialize)]
pub struct Probe {
    /// Between which parts of the run, e.g. "after (b)".
    pub at: &'static str,
    /// Median round of the workload (ms; more is a slower machine).
    pub ms: f64,
}

impl Probes {
    /// Times the workload now ([`probe_ms`]) and keeps it under `at`.
    ///
    /// # Errors
    /// As [`probe_ms`].
    pub async fn take(&mut self, at: &'static str) -> anyhow::Result<()> {
        let ms = probe_ms().await?;
        eprintln!("[bench] machine probe {at}: {ms:.1} ms");
        self.0.push(Probe { at, ms });
        Ok(())
    }

    /// One line for a report: every figure in order, and where the workload is defined.
    pub fn describe(&self) -> String {
        let figures: Vec<String> = self
            .0
            .iter()
            .map(|p| format!("{} {:.1}", p.at, p.ms))
            .collect();
        format!(
            "machine probe in ms ({}; median of {ROUNDS} rounds of a fixed single-thread \
             workload, coupon-bench/src/speed.rs; more is a slower machine)",
            figures.join(", ")
        )
    }
}

/// Times the workload [`ROUNDS`] times on a blocking thread and returns the median round (ms).
///
/// # Errors
/// The blocking task panicked or was cancelled.
pub async fn probe_ms() -> anyhow::Result<f64> {
    Ok(tokio::task::spawn_blocking(|| {
        let mut rounds: Vec<f64> = (0..ROUNDS).map(|_| round_ms()).collect();
        rounds.sort_by(f64::total_cmp);
        rounds[ROUNDS / 2]
    })
    .await?)
}

/// One round: `ITERATIONS` steps of splitmix64 (Steele, Lea and Flood, "Fast splittable
/// pseudorandom number generators", OOPSLA 2014): multiplies and shifts in registers, no memory
/// traffic, kept from being folded away by `black_box` on the seed and on the result.
fn round_ms() -> f64 {
    let started = Instant::now();
    let mut state = black_box(0x9e37_79b9_7f4a_7c15_u64);
    let mut acc = 0_u64;
    for _ in 0..ITERATIONS {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        acc ^= z ^ (z >> 31);
    }
    black_box(acc);
    started.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_take_time_and_the_description_names_each_in_order() {
        let mut probes = Probes::default();
        probes.take("at the start").await.unwrap();
        probes.0.push(Probe {
            at: "after (b)",
            ms: 80.26,
        });
        assert!(probes.0[0].ms > 0.0);
        let line = probes.describe();
        let start = line.find("at the start ").expect(&line);
        let after = line.find("after (b) 80.3").expect(&line);
        assert!(start < after, "{line}");
    }
}
