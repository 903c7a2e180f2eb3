//! The report of `coupon-bench issue`: every figure with the ratios between them, the
//! targets, and the exactness of every coupon the run issued (`issue.json`, `issue.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::bail;
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};

use super::ceilings::Ceilings;
use super::figure::{Figure, Issued};
use super::harness::Bench;
use super::rejections::Rejection;
use super::IssueArgs;
use crate::cpu::CpuPerRequest;
use crate::speed::Probes;

/// One exactness row per coupon: rows in MySQL = distinct users = `issued_quantity` = Redis
/// `SCARD` = admissions ≤ stock. Call once the consumer persisted every admission.
///
/// # Errors
/// MySQL or Redis failed.
pub(super) async fn exactness(bench: &Bench, issued: &[Issued]) -> anyhow::Result<Vec<Value>> {
    let mut rows_out = Vec::new();
    for &Issued {
        coupon,
        stock,
        accepted,
    } in issued
    {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues WHERE coupon_id = ?")
                .bind(coupon.get())
                .fetch_one(&bench.pool)
                .await?;
        let distinct: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT user_id) FROM coupon_issues WHERE coupon_id = ?",
        )
        .bind(coupon.get())
        .fetch_one(&bench.pool)
        .await?;
        let issued_quantity = bench.issued_quantity(coupon).await?;
        let admitted = bench.admitted(coupon).await?;
        let exact = rows == issued_quantity
            && rows == admitted
            && rows == distinct
            && u64::try_from(rows).ok() == Some(accepted)
            && rows <= stock;
        rows_out.push(json!({
            "coupon_id": coupon, "stock": stock, "admitted": accepted, "rows": rows,
            "distinct_users": distinct, "issued_quantity": issued_quantity,
            "redis_scard": admitted, "exact": exact,
        }));
    }
    Ok(rows_out)
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    date: String,
    cores: usize,
    /// How fast the cores were between the parts of the run.
    machine_probe: Probes,
    load_generator: String,
    figures: Vec<Figure>,
    redis_cpu_us_per_admission: f64,
    ratios: BTreeMap<String, f64>,
    bottleneck: String,
    targets: Vec<Value>,
    exactness: Vec<Value>,
}

impl Report {
    /// The report of one run: every figure, the ratios between them, the targets and the
    /// exactness rows.
    pub(super) fn new(
        args: &IssueArgs,
        machine_probe: Probes,
        ceilings: Ceilings,
        issue: Figure,
        rejection: Rejection,
        drain: Figure,
        exactness: Vec<Value>,
    ) -> Self {
        let Ceilings {
            axum,
            redis_plain,
            redis_pipelined,
            redis_usec_per_call,
            produce,
            consume,
        } = ceilings;
        let Rejection {
            sold_out,
            repeat,
            repeat_here,
            ..
        } = rejection;
        // The parts' ceilings: the best rate each part reached alone.
        let redis_best = redis_plain.rps_median.max(redis_pipelined.rps_median);
        let parts = [
            ("plain axum", axum.rps_median),
            ("admission script (Redis)", redis_best),
            ("broker produce", produce.rps_median),
        ];
        let (bottleneck, tightest) = parts
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("none", f64::NAN));
        let ratios: BTreeMap<String, f64> = [
            ("(b) / (a) plain axum", issue.rps_median / axum.rps_median),
            ("(b) / admission script", issue.rps_median / redis_best),
            (
                "(b) / broker produce",
                issue.rps_median / produce.rps_median,
            ),
            ("(b) / tightest ceiling", issue.rps_median / tightest),
            ("(c) sold out / (a)", sold_out.rps_median / axum.rps_median),
            (
                "(c) repeat, admitted elsewhere / (a)",
                repeat.rps_median / axum.rps_median,
            ),
            (
                "(c) repeat, admitted here / (a)",
                repeat_here.rps_median / axum.rps_median,
            ),
            (
                "(d) / broker consume",
                drain.rps_median / consume.rps_median,
            ),
        ]
        .into_iter()
        .map(|(ratio, value)| (ratio.to_owned(), value))
        .collect();
        let drain_target = 30_000_f64.min(0.8 * consume.rps_median);
        let target = |what: &str, pass: bool, detail: String| json!({"target": what, "pass": pass, "measured": detail});
        let targets = vec![
            target(
                "(b) >= 20,000 req/s",
                issue.rps_median >= 20_000.0,
                format!("{:.0} req/s", issue.rps_median),
            ),
            target(
                "(b) p99 < 15 ms",
                issue.p99_ms < 15.0,
                format!("{:.2} ms", issue.p99_ms),
            ),
            target(
                "(b) >= 80 % of the tightest ceiling",
                issue.rps_median >= 0.8 * tightest,
                format!(
                    "{:.0} % of {bottleneck} ({tightest:.0}/s)",
                    100.0 * issue.rps_median / tightest
                ),
            ),
            target(
                "(c) >= 50 % of (a)",
                sold_out
                    .rps_median
                    .min(repeat.rps_median)
                    .min(repeat_here.rps_median)
                    >= 0.5 * axum.rps_median,
                format!(
                    "sold out {:.0} %, repeat admitted elsewhere {:.0} %, admitted here {:.0} %",
                    100.0 * sold_out.rps_median / axum.rps_median,
                    100.0 * repeat.rps_median / axum.rps_median,
                    100.0 * repeat_here.rps_median / axum.rps_median
                ),
            ),
            target(
                "(d) >= 30,000 rows/s or >= 80 % of broker consume",
                drain.rps_median >= drain_target,
                format!("{:.0} rows/s (target {drain_target:.0})", drain.rps_median),
            ),
        ];
        Self {
            date: Utc::now().to_rfc3339(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            machine_probe,
            load_generator: format!(
                "wrk 4.1 -t{} -c{} -d{}s, {} runs after a {} s warm-up",
                args.threads, args.connections, args.seconds, args.runs, args.warmup_seconds
            ),
            figures: vec![
                axum,
                redis_plain,
                redis_pipelined,
                produce,
                consume,
                issue,
                sold_out,
                repeat,
                repeat_here,
                drain,
            ],
            redis_cpu_us_per_admission: redis_usec_per_call,
            ratios,
            bottleneck: format!("{bottleneck} ({tightest:.0}/s)"),
            targets,
            exactness,
        }
    }

    /// The report as the Markdown of `issue.md`.
    pub(super) fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Issue-path benchmark\n\n{} · {} cores · {} · everything (load generator, services, \
             Redis, broker, MariaDB) on the same machine · {}\n",
            &self.date[..10],
            self.cores,
            self.load_generator,
            self.machine_probe.describe()
        );
        let _ = writeln!(
            md,
            "| figure | rate/s min | median | max | p50 ms | p99 ms | p99.9 ms | errors | note |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        let ms = |v: f64| {
            if v.is_nan() {
                "–".to_owned()
            } else {
                format!("{v:.2}")
            }
        };
        for f in &self.figures {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                f.name,
                f.rps_min,
                f.rps_median,
                f.rps_max,
                ms(f.p50_ms),
                ms(f.p99_ms),
                ms(f.p999_ms),
                f.errors,
                f.note
            );
        }
        let _ = writeln!(
            md,
            "\nCPU per request (µs of CPU, per message for the broker ceilings, per row for the \
             drain) of each kind of process over each figure's median run, read from \
             `/proc/<pid>/stat`; the load generator (wrk or redis-benchmark) is the benchmark's \
             waited-for children; the broker ceilings' producer and consumer are this process, \
             not counted.\n\n| figure | {} |\n| --- |{}",
            CpuPerRequest::header(),
            " ---: |".repeat(7)
        );
        for f in self.figures.iter().filter(|f| f.cpu.is_some()) {
            let _ = writeln!(
                md,
                "| {} | {} |",
                f.name,
                CpuPerRequest::cells(f.cpu.as_ref())
            );
        }
        let _ = writeln!(
            md,
            "\nRedis CPU per admission script call: {:.2} µs (`INFO commandstats`).\n\n\
             Tightest standalone ceiling: **{}**.\n\n| ratio | value |\n| --- | ---: |",
            self.redis_cpu_us_per_admission, self.bottleneck
        );
        for (name, value) in &self.ratios {
            let _ = writeln!(md, "| {name} | {:.0} % |", value * 100.0);
        }
        let _ = writeln!(md, "\n| target | measured | met |\n| --- | --- | --- |");
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t["target"].as_str().unwrap_or(""),
                t["measured"].as_str().unwrap_or(""),
                if t["pass"] == json!(true) {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        let _ = writeln!(
            md,
            "\nAdmitted = `coupon_issue_requests_total{{outcome=\"issued\"}}`: answered 202, or admitted and \
             published after wrk closed the connection at the end of a run.\n\n\
             | coupon | stock | admitted | rows | distinct users | issued_quantity | Redis SCARD | exact |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for e in &self.exactness {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                e["coupon_id"],
                e["stock"],
                e["admitted"],
                e["rows"],
                e["distinct_users"],
                e["issued_quantity"],
                e["redis_scard"],
                if e["exact"] == json!(true) {
                    "EXACT"
                } else {
                    "**MISMATCH**"
                }
            );
        }
        md
    }
}

impl Report {
    /// Whether the run measured what it claims: every coupon exact and no figure with a
    /// failed request (a transport error, a timeout, or an answer other than the figure's
    /// expected one, such as the 500s of a ceiling server without a token verifier).
    ///
    /// # Errors
    /// Which coupons were inexact and which figures had errors.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        let inexact: Vec<&Value> = self
            .exactness
            .iter()
            .filter(|e| e["exact"] != json!(true))
            .collect();
        let failing: Vec<String> = self
            .figures
            .iter()
            .filter(|f| f.errors > 0)
            .map(|f| format!("{}: {} errors", f.name, f.errors))
            .collect();
        match (inexact.is_empty(), failing.is_empty()) {
            (true, true) => Ok(()),
            (false, _) => bail!("EXACTNESS FAILED: {inexact:?}; figures with errors: {failing:?}"),
            (true, false) => bail!("figures with errors: {failing:?}"),
        }
    }
}
