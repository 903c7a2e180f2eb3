//! `coupon-bench shards`: admissions per second of one hot coupon on a Redis Cluster, with its
//! stock in 1 shard and in K shards (issue 16, item 5 (iii)), driven straight at Redis through
//! [`AdmissionStore::admit`] (the API's own call, with transfers between shards), no HTTP.
//!
//! For each shard count the benchmark picks a coupon id whose shards' hash slots are served by
//! as many different masters as possible (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`; the placement is
//! printed, since a real coupon's shards land where its id hashes), prepares it with a stock no
//! run can exhaust, keeps `--in-flight` admissions of fresh users in flight for `--seconds`,
//! and reads each master's CPU time (`INFO cpu`) and this process's (`/proc/self/stat`) before
//! and after. Results: `shards.json` and `shards.md` in `--out-dir`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coupon_core::domain::ShardCount;
use coupon_core::domain::{CouponId, CouponPolicy, UserId};
use coupon_core::issue::admission::{AdmissionStore, AdmitOutcome, RedisKeys, StockShards};
use coupon_core::store::redis::{connect, node_urls, RedisMode};
use serde::Serialize;
use uuid::Uuid;

use crate::latency::{Latencies, Summary};

/// Flags of `coupon-bench shards`.
#[derive(Debug, clap::Args)]
pub struct ShardsArgs {
    /// Seed nodes of the Redis Cluster, comma-separated.
    #[arg(
        long,
        env = "REDIS_CLUSTER_URL",
        default_value = "redis://127.0.0.1:7000"
    )]
    redis_url: String,
    /// Shard counts to measure, comma-separated (count each).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    shards: Vec<u16>,
    /// Measured seconds per shard count (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Admissions in flight at once (count).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Where `shards.json` and `shards.md` go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

/// One shard count's figure.
#[derive(Debug, Serialize)]
struct Run {
    /// Stock shards (count).
    shards: u16,
    /// The coupon id used (its shards' placement follows from it).
    coupon_id: i64,
    /// Master address serving each shard, by shard index.
    placement: Vec<String>,
    /// Admissions answered in the measured window (count).
    admitted: u64,
    /// Admissions per second.
    per_second: f64,
    /// Latency of one `admit` call.
    latency: Summary,
    /// CPU each master used over the window (% of one core), by address.
    master_cpu_percent: BTreeMap<String, f64>,
    /// CPU this process (the driver) used (% of one core).
    driver_cpu_percent: f64,
    /// Redis CPU per admission, summed over masters (µs).
    redis_usec_per_admission: f64,
}

/// Runs the benchmark and writes its report.
///
/// # Errors
/// The cluster is unreachable or not a cluster, an admission failed, or a file cannot be
/// written.
pub async fn run(args: ShardsArgs) -> anyhow::Result<()> {
    let conn = connect(RedisMode::Cluster, &args.redis_url, Duration::from_secs(5))
        .await
        .context("connecting to the Redis Cluster (REDIS_MODE=cluster make up)")?;
    let seed = node_urls(&args.redis_url)
        .first()
        .copied()
        .context("no seed node")?
        .to_owned();
    let mut meta = redis::Client::open(seed)?
        .get_multiplexed_async_connection()
        .await?;
    let slots = master_slots(&mut meta).await?;
    let prefix = format!("bench-shards-{}:", std::process::id());
    let store = AdmissionStore::new(conn, RedisKeys::new(prefix));
    let mut runs = Vec::new();
    for &count in &args.shards {
        let (coupon, placement) = placed_coupon(&mut meta, &slots, &store, count).await?;
        let run = measure(&args, &store, &slots, coupon, count, placement).await?;
        println!(
            "[shards] K={}: {:.0} admissions/s, p50 {:.2} ms, p99 {:.2} ms; masters {:?} % CPU, driver {:.0} % CPU; shards on {:?}",
            run.shards, run.per_second, run.latency.p50_ms, run.latency.p99_ms,
            run.master_cpu_percent, run.driver_cpu_percent, run.placement
        );
        runs.push(run);
    }
    write_report(&args, &runs)
}

/// Each master's address with the slot ranges it serves (`CLUSTER SLOTS`).
async fn master_slots(
    meta: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<(String, Vec<(u16, u16)>)>> {
    let reply: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(meta).await?;
    let mut masters: BTreeMap<String, Vec<(u16, u16)>> = BTreeMap::new();
    for range in reply {
        let redis::Value::Array(items) = range else {
            continue;
        };
        let (Some(start), Some(end), Some(redis::Value::Array(node))) =
            (items.first(), items.get(1), items.get(2))
        else {
            continue;
        };
        let start: u16 = redis::from_redis_value(start.clone())?;
        let end: u16 = redis::from_redis_value(end.clone())?;
        let host: String = redis::from_redis_value(node[0].clone())?;
        let port: u16 = redis::from_redis_value(node[1].clone())?;
        masters
            .entry(format!("{host}:{port}"))
            .or_default()
            .push((start, end));
    }
    if masters.is_empty() {
        bail!("CLUSTER SLOTS listed no master");
    }
    Ok(masters.into_iter().collect())
}

/// The master serving `key`.
async fn master_of(
    meta: &mut redis::aio::MultiplexedConnection,
    slots: &[(String, Vec<(u16, u16)>)],
    key: &str,
) -> anyhow::Result<String> {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(meta)
        .await?;
    slots
        .iter()
        .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|(addr, _)| addr.clone())
        .with_context(|| format!("no master serves slot {slot}"))
}

/// A coupon id (from 1,000,000 on) whose `count` shards land on as many masters as there are
/// (or shards, if fewer), prepared with a stock of 100,000,000; and the masters of its shards.
async fn placed_coupon(
    meta: &mut redis::aio::MultiplexedConnection,
    slots: &[(String, Vec<(u16, u16)>)],
    store: &AdmissionStore,
    count: u16,
) -> anyhow::Result<(StockShards, Vec<String>)> {
    let wanted = usize::from(count).min(slots.len());
    for id in 1_000_000..1_001_000 {
        let shards = StockShards::new(CouponId::parse(id)?, ShardCount::parse(count)?);
        let mut placement = Vec::new();
        for shard in shards.all() {
            placement.push(master_of(meta, slots, &store.keys().stock(shard)).await?);
        }
        let distinct: std::collections::BTreeSet<&String> = placement.iter().collect();
        if distinct.len() >= wanted {
            store.prepare(&policy(shards)?).await?;
            return Ok((shards, placement));
        }
    }
    bail!("no coupon id in 1,000,000..1,001,000 spreads {count} shards over {wanted} masters")
}

/// The stored form of a hot coupon with 100,000,000 units in `shards`.
fn policy(shards: StockShards) -> anyhow::Result<CouponPolicy> {
    let now = chrono::Utc::now();
    Ok(serde_json::from_value(serde_json::json!({
        "id": shards.coupon().get(),
        "title": "coupon-bench shards",
        "coupon_type": "FIRST_COME_FIRST_SERVED",
        "total_quantity": 100_000_000,
        "issued_quantity": 0,
        "discount_type": "FIXED",
        "discount_value": 1000,
        "max_discount_amount": null,
        "min_order_amount": 0,
        "issue_starts_at": now,
        "issue_ends_at": now + chrono::Duration::hours(1),
        "valid_days": 7,
        "valid_until": null,
        "status": "ACTIVE",
        "created_at": now,
        "updated_at": now,
        "stock_shards": shards.count(),
    }))?)
}

/// CPU seconds (user + system) of each master (`INFO cpu`).
async fn master_cpu(slots: &[(String, Vec<(u16, u16)>)]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut cpu = BTreeMap::new();
    for (addr, _) in slots {
        let mut conn = redis::Client::open(format!("redis://{addr}"))?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        cpu.insert(addr.clone(), field("used_cpu_user") + field("used_cpu_sys"));
    }
    Ok(cpu)
}

async fn measure(
    args: &ShardsArgs,
    store: &AdmissionStore,
    slots: &[(String, Vec<(u16, u16)>)],
    shards: StockShards,
    count: u16,
    placement: Vec<String>,
) -> anyhow::Result<Run> {
    let next_user = Arc::new(AtomicI64::new(1));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.in_flight {
        let (store, next_user, measuring, stop, latencies) = (
            store.clone(),
            Arc::clone(&next_user),
            Arc::clone(&measuring),
            Arc::clone(&stop),
            Arc::clone(&latencies),
        );
        workers.spawn(async move {
            let mut admitted = 0_u64;
            let mut local = Latencies::default();
            while !stop.load(Ordering::Relaxed) {
                let user = UserId::parse(next_user.fetch_add(1, Ordering::Relaxed))?;
                let started = Instant::now();
                let outcome = store.admit(shards, user, Uuid::now_v7()).await?;
                if outcome != AdmitOutcome::Admitted {
                    bail!("a fresh user was answered {outcome:?}");
                }
                if measuring.load(Ordering::Relaxed) {
                    admitted += 1;
                    local.record(started.elapsed());
                }
            }
            latencies
                .lock()
                .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
                .merge(&local);
            anyhow::Ok(admitted)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_before, own_before) = (master_cpu(slots).await?, crate::cpu::own_seconds());
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, own_after) = (master_cpu(slots).await?, crate::cpu::own_seconds());
    stop.store(true, Ordering::Relaxed);
    let mut admitted = 0;
    while let Some(done) = workers.join_next().await {
        admitted += done??;
    }
    let master_cpu_percent: BTreeMap<String, f64> = cpu_after
        .iter()
        .map(|(addr, after)| {
            let used = after - cpu_before.get(addr).copied().unwrap_or(*after);
            (addr.clone(), (used / elapsed * 100.0).round())
        })
        .collect();
    let redis_seconds: f64 = cpu_after
        .iter()
        .map(|(addr, after)| after - cpu_before.get(addr).copied().unwrap_or(*after))
        .sum();
    let latency = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .summary();
    Ok(Run {
        shards: count,
        coupon_id: shards.coupon().get(),
        placement,
        admitted,
        per_second: admitted as f64 / elapsed,
        latency,
        master_cpu_percent,
        driver_cpu_percent: ((own_after - own_before) / elapsed * 100.0).round(),
        redis_usec_per_admission: redis_seconds * 1e6 / admitted.max(1) as f64,
    })
}

fn write_report(args: &ShardsArgs, runs: &[Run]) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(
        args.out_dir.join("shards.json"),
        serde_json::to_string_pretty(runs)?,
    )?;
    let mut md = format!(
        "# One hot coupon on the local Redis Cluster, by stock shards\n\n\
         `coupon-bench shards --seconds {} --in-flight {}`: `AdmissionStore::admit` (the API's \
         call) for fresh users of one coupon, straight at the cluster, no HTTP. CPU is % of one \
         core over the window.\n\n\
         | stock shards | shards on masters | admissions/s | p50 ms | p99 ms | masters' CPU % | driver CPU % | Redis µs/admission |\n\
         |---:|---|---:|---:|---:|---|---:|---:|\n",
        args.seconds, args.in_flight
    );
    for run in runs {
        let cpu: Vec<String> = run
            .master_cpu_percent
            .iter()
            .map(|(addr, pct)| format!("{addr}: {pct:.0}"))
            .collect();
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.1} |\n",
            run.shards,
            run.placement.join(", "),
            run.per_second,
            run.latency.p50_ms,
            run.latency.p99_ms,
            cpu.join("; "),
            run.driver_cpu_percent,
            run.redis_usec_per_admission
        ));
    }
    std::fs::write(args.out_dir.join("shards.md"), md)?;
    println!(
        "[shards] wrote {}",
        args.out_dir.join("shards.md").display()
    );
    Ok(())
}
