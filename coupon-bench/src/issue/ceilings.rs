//! (a) The ceilings: what each part of the issue path reaches alone on this machine.
//!
//! - the plain axum server of [`crate::ceiling`] under wrk: the API's extractors (bearer token
//!   included) and its 202 body, no I/O;
//! - the admission script alone under `redis-benchmark`, with Redis' own CPU time per call
//!   from `INFO commandstats`;
//! - the broker's acknowledged produce rate for issue messages through [`IssuePublisher`] (the
//!   API's producer settings) and its consume rate to a plain consumer.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use coupon_core::domain::CouponId;
use coupon_core::store::kafka::IssuePublisher;
use coupon_harness::Wait;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;
use uuid::Uuid;

use super::broker::{create_topic, publish_users};
use super::figure::{Figure, Run};
use super::harness::Bench;
use super::wrk::UserPlan;

/// The (a) figures.
pub(super) struct Ceilings {
    /// The plain axum server under wrk.
    pub(super) axum: Figure,
    /// The admission script, one call per round trip.
    pub(super) redis_plain: Figure,
    /// The admission script, pipelined.
    pub(super) redis_pipelined: Figure,
    /// Redis' own CPU time per admission script call (µs).
    pub(super) redis_usec_per_call: f64,
    /// Acknowledged issue messages per second.
    pub(super) produce: Figure,
    /// Issue messages read back per second.
    pub(super) consume: Figure,
}

/// Measures every ceiling in turn.
///
/// # Errors
/// A tool is missing, the ceiling server or a store failed, or the broker stalled.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Ceilings> {
    let axum = axum(bench).await?;
    let (redis_plain, redis_pipelined, redis_usec_per_call) = redis(bench).await?;
    let (produce, consume) = measure_kafka(bench).await?;
    Ok(Ceilings {
        axum,
        redis_plain,
        redis_pipelined,
        redis_usec_per_call,
        produce,
        consume,
    })
}

/// The plain axum server (`coupon-bench ceiling-server`, this binary) on `--api-port` + 9,
/// checking the benchmark's token as coupon-api does, under the same wrk load as (b).
async fn axum(bench: &Bench) -> anyhow::Result<Figure> {
    let port = bench.args.api_port + 9;
    let mut program = bench.program("ceiling-server", &std::env::current_exe()?);
    program
        .args(["ceiling-server", "--listen", &format!("127.0.0.1:{port}")])
        .env("JWT_SECRET", &bench.jwt_secret);
    // Its CPU is sampled as coupon-api's, the server it stands in for.
    let mut server = bench.spawn(crate::cpu::Part::Api, program)?;
    let wait =
        Wait::new("the ceiling server", Duration::from_secs(10)).every(Duration::from_millis(20));
    server
        .wait_ready(&wait, || {
            coupon_harness::probe::tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .await?;
    let runs = bench
        .figure(
            "(a) plain axum",
            &format!("http://127.0.0.1:{port}"),
            "/api/v1/coupons/1/issues",
            |i| UserPlan::Fresh {
                start: 1 + i as i64 * 100,
            },
            None,
        )
        .await?;
    server.stop();
    Ok(Figure::new(
        "(a) plain axum: same extractors (bearer token checked) and 202 body, no I/O",
        runs,
        String::new(),
    ))
}

/// The admission script alone: `redis-benchmark` sends `EVALSHA` with a random user per call
/// to an unlimited stock key, without and with pipelining; Redis' CPU per call comes from the
/// `INFO commandstats` difference.
async fn redis(bench: &Bench) -> anyhow::Result<(Figure, Figure, f64)> {
    let mut conn = bench.redis.clone();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(coupon_core::issue::admission::ADMIT_SCRIPT)
        .query_async(&mut conn)
        .await?;
    let issued = format!("{}ceiling:{{0}}:issued", bench.prefix);
    let stock = format!("{}ceiling:{{0}}:stock", bench.prefix);
    let pending = format!("{}ceiling:{{0}}:pending", bench.prefix);
    let _: () = redis::cmd("SET")
        .arg(&stock)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let commandstats = |conn: coupon_core::store::redis::RedisConnection| async move {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn.clone())
            .await?;
        // cmdstat_evalsha:calls=N,usec=U,...
        let line = info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .unwrap_or("cmdstat_evalsha:calls=0,usec=0");
        let field = |name: &str| -> f64 {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        anyhow::Ok(CallStats {
            calls: field("calls="),
            usec: field("usec="),
            failed: field("failed_calls=") + field("rejected_calls="),
        })
    };
    let mut figures = Vec::new();
    let mut cpu = (0.0, 0.0);
    let calls = bench.args.redis_calls.to_string();
    for (name, clients, pipeline) in [
        ("redis-benchmark EVALSHA admit, 64 clients", 64, 1),
        (
            "redis-benchmark EVALSHA admit, 8 clients × pipeline 16",
            8,
            16,
        ),
    ] {
        let mut runs = Vec::new();
        for _ in 0..bench.args.runs {
            let before = commandstats(conn.clone()).await?;
            let cpu_before = bench.processes.sample();
            let output = Command::new("redis-benchmark")
                .args(["-h", &bench.args.redis_host])
                .args(["-p", &bench.args.redis_port.to_string()])
                .args(["-c", &clients.to_string()])
                .args(["-P", &pipeline.to_string()])
                .args(["-n", &calls, "-r", "1000000000", "--csv"])
                .args([
                    "EVALSHA",
                    &sha,
                    "3",
                    &issued,
                    &stock,
                    &pending,
                    "__rand_int__",
                    "ceiling",
                ])
                .output()
                .context("running redis-benchmark (apt-get install redis-tools)")?;
            let cpu_after = bench.processes.sample();
            let after = commandstats(conn.clone()).await?;
            ensure!(
                output.status.success(),
                "redis-benchmark failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            cpu.0 += after.calls - before.calls;
            cpu.1 += after.usec - before.usec;
            let stdout = String::from_utf8_lossy(&output.stdout);
            // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
            let row = stdout
                .lines()
                .nth(1)
                .with_context(|| format!("redis-benchmark printed: {stdout}"))?;
            let fields: Vec<f64> = row
                .split("\",\"")
                .skip(1)
                .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
                .collect();
            ensure!(fields.len() >= 7, "unexpected redis-benchmark row: {row}");
            runs.push(Run {
                requests: bench.args.redis_calls,
                rps: fields[0],
                p50_ms: fields[3],
                p99_ms: fields[5],
                p999_ms: f64::NAN,
                max_ms: fields[6],
                // Calls the script refused or failed in (NOSCRIPT, a Lua error).
                errors: (after.failed - before.failed) as u64,
                // redis-benchmark is the load generator here.
                cpu: cpu_before.per_request(&cpu_after, bench.args.redis_calls),
            });
            // UNLINK: the set holds about a million members; Redis frees it off its main
            // thread instead of blocking the next calls.
            let _: () = redis::cmd("UNLINK")
                .arg(&issued)
                .query_async(&mut conn)
                .await?;
        }
        eprintln!(
            "[bench] {name}: {:?}",
            runs.iter().map(|r| r.rps.round()).collect::<Vec<_>>()
        );
        figures.push(Figure::new(
            name,
            runs,
            format!(
                "{} calls per run; redis-benchmark reports no p99.9",
                bench.args.redis_calls
            ),
        ));
    }
    let usec_per_call = if cpu.0 > 0.0 { cpu.1 / cpu.0 } else { 0.0 };
    let _: () = redis::cmd("DEL")
        .arg(&stock)
        .arg(&issued)
        .arg(&pending)
        .query_async(&mut conn)
        .await?;
    let pipelined = figures.pop().context("two figures")?;
    let plain = figures.pop().context("two figures")?;
    Ok((plain, pipelined, usec_per_call))
}

/// `cmdstat_evalsha` of `INFO commandstats`: cumulative since Redis started.
struct CallStats {
    calls: f64,
    usec: f64,
    /// `failed_calls` + `rejected_calls` (Redis 7; 0 where absent).
    failed: f64,
}

/// The broker's acknowledged produce rate of issue messages through [`IssuePublisher`] with
/// `--produce-concurrency` publishes in flight, then the rate a plain consumer reads them back.
pub(super) async fn measure_kafka(bench: &Bench) -> anyhow::Result<(Figure, Figure)> {
    let args = &bench.args;
    let topic = format!("bench-produce-{}", Uuid::new_v4().simple());
    create_topic(args, &topic).await?;
    let publisher = IssuePublisher::new(&args.kafka_brokers, &topic, Duration::from_secs(30))?;
    let coupon = CouponId::parse(1)?;
    let produce_concurrency = args
        .produce_concurrency
        .unwrap_or(args.connections as usize);
    let mut runs = Vec::new();
    let mut user = 0_i64;
    for _ in 0..args.runs {
        let started = Instant::now();
        let first_user = user + 1;
        user += args.produce_messages as i64;
        let cpu_before = bench.processes.sample();
        let (failures, latencies) =
            publish_users(&publisher, coupon, first_user..=user, produce_concurrency).await;
        let elapsed = started.elapsed().as_secs_f64();
        // The producer is this process, not a sampled one: the broker's share is what counts.
        let cpu = cpu_before.per_request(&bench.processes.sample(), args.produce_messages as u64);
        let summary = latencies.summary();
        let run = Run {
            requests: args.produce_messages as u64,
            rps: args.produce_messages as f64 / elapsed,
            p50_ms: summary.p50_ms,
            p99_ms: summary.p99_ms,
            p999_ms: summary.p999_ms,
            max_ms: summary.max_ms,
            errors: failures as u64,
            cpu,
        };
        eprintln!(
            "[bench] kafka produce: {:.0} msg/s, p99 {:.2} ms",
            run.rps, run.p99_ms
        );
        runs.push(run);
    }
    let produce = Figure::new(
        "broker produce (acks=all, API producer settings)",
        runs,
        format!(
            "{} issue messages per run, {} in flight",
            args.produce_messages, produce_concurrency
        ),
    );

    // Read everything back, once per run, each time with a new group from the earliest offset.
    let total = (args.produce_messages * args.runs) as u64;
    let mut consume_runs = Vec::new();
    for _ in 0..args.runs {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &args.kafka_brokers)
            .set(
                "group.id",
                format!("bench-read-{}", Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        consumer.subscribe(&[&topic])?;
        let mut stream = consumer.stream();
        let mut read = 0_u64;
        let mut first = None;
        // From the first message: the group's join and first fetch are not the broker's
        // reading cost.
        let mut cpu_before = None;
        while read < total {
            let next = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
            match next {
                Ok(Some(Ok(_))) => {
                    first.get_or_insert_with(Instant::now);
                    cpu_before.get_or_insert_with(|| bench.processes.sample());
                    read += 1;
                }
                Ok(Some(Err(err))) => bail!("reading back: {err}"),
                Ok(None) | Err(_) => bail!("reading back stalled after {read} of {total}"),
            }
        }
        let elapsed = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let rps = total as f64 / elapsed;
        eprintln!("[bench] kafka consume: {rps:.0} msg/s");
        let mut run = Run::rate_only(total, rps);
        run.cpu =
            cpu_before.and_then(|before| before.per_request(&bench.processes.sample(), total));
        consume_runs.push(run);
    }
    let consume = Figure::new(
        "broker consume (plain consumer)",
        consume_runs,
        format!("{total} messages per run, from the first message to the last"),
    );
    Ok((produce, consume))
}
