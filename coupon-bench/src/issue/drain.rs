//! (d) The consumer's drain rate: per run, a new coupon and topic, coupon-consumer (one or
//! several) in a new group, stopped while the topic is pre-filled with issue messages (every
//! user admitted first, as the API would have), then continued; rows/s from the first
//! persisted row to the last.

use std::time::{Duration, Instant};

use anyhow::ensure;
use coupon_core::domain::UserId;
use coupon_core::issue::admission::StockShards;

use coupon_core::store::kafka::IssuePublisher;
use coupon_harness::Signal;

use super::broker::{create_topic, publish_users};
use super::figure::{Figure, Run};
use super::harness::{wait_for, Bench};

/// Longest the pre-fill publishes while the consumers are stopped.
const PREFILL_LIMIT: Duration = Duration::from_secs(5);

/// Messages per pre-fill chunk (count): the limit is checked between chunks.
const PREFILL_CHUNK: i64 = 5_000;

/// `--runs` drain runs with one consumer, one topic and group each.
///
/// # Errors
/// A store or the broker failed, or a run did not drain in time.
pub(super) async fn figure(bench: &Bench) -> anyhow::Result<Figure> {
    let mut runs = Vec::new();
    for _ in 0..bench.args.runs {
        runs.push(run(bench, 1).await?);
    }
    Ok(figure_of(bench, 1, runs))
}

/// The figure of drain runs with `consumers` consumers, each with the rows every consumer
/// inserted.
pub(super) fn figure_of(bench: &Bench, consumers: usize, runs: Vec<(Run, Vec<u64>)>) -> Figure {
    let shares: Vec<String> = runs.iter().map(|(_, by)| format!("{by:?}")).collect();
    let name = match consumers {
        1 => "(d) consumer drain into MySQL (rows/s)".to_owned(),
        n => format!("(d) drain into MySQL, {n} consumers (rows/s)"),
    };
    Figure::new(
        &name,
        runs.into_iter().map(|(run, _)| run).collect(),
        format!(
            "up to {} issue messages (5 s of publishing) pre-filled per run while the group's \
             members were stopped; from the first persisted row to the last; rows by consumer, \
             per run: {}",
            bench.args.drain_messages,
            shares.join(", ")
        ),
    )
}

/// One drain run, and the rows each consumer inserted: a new coupon and topic, `consumers` consumers in a new group, stopped once
/// each holds partitions; up to `--drain-messages` issue messages (at most 5 s of publishing)
/// published to the topic as the API would, one per user; then the consumers continue. Rows/s
/// and CPU per row from the first persisted row to the last.
pub(super) async fn run(bench: &Bench, consumers: usize) -> anyhow::Result<(Run, Vec<u64>)> {
    let args = &bench.args;
    let wanted = args.drain_messages as i64;
    let coupon = bench.create_coupon(wanted).await?;
    // The consumer persists only users in the admission set (an undone admission's message
    // is dead-lettered): admit every user first, as the API would have.
    let store = bench.admission_store();
    let users = (1..=wanted)
        .map(UserId::parse)
        .collect::<Result<Vec<_>, _>>()?;
    store
        .add_members(StockShards::single(coupon), &users)
        .await?;
    let topic = format!("{}-drain-{coupon}", bench.issue_topic);
    create_topic(args, &topic).await?;
    // The consumers join the group first and are stopped (SIGSTOP) once each holds partitions:
    // a group that settles while the messages are there lets its first member take them all
    // before the others join (seen on tansu 0.6, the earlier local broker, during a 100,000-row
    // drain; stopping the members until the drain starts keeps the split even on any broker).
    let group = format!("{}-{coupon}", bench.group);
    let services = (0..consumers)
        .map(|i| bench.start_consumer_at(i, Some(&topic), &group))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_for(
        "the group's assignment",
        Duration::from_secs(120),
        || async {
            let held: Vec<usize> = (0..consumers)
                .map(|i| bench.assigned_partitions(i, &topic))
                .collect();
            let settled = held.iter().all(|&n| n > 0)
                && held.iter().sum::<usize>() == args.partitions as usize;
            settled.then_some(())
        },
    )
    .await?;
    for service in &services {
        service.signal(Signal::Stop)?;
    }
    // The pre-fill, in chunks, for at most PREFILL_LIMIT: a stopped member sends no heartbeat,
    // and the group evicts it after its session timeout (coupon-consumer: 10 s).
    let publisher = IssuePublisher::new(&args.kafka_brokers, &topic, Duration::from_secs(30))?;
    let started = Instant::now();
    let mut total = 0;
    while total < wanted && started.elapsed() < PREFILL_LIMIT {
        let last = (total + PREFILL_CHUNK).min(wanted);
        let (failed, _) = publish_users(&publisher, coupon, total + 1..=last, 1024).await;
        ensure!(failed == 0, "{failed} drain messages were not acknowledged");
        total = last;
    }
    for service in &services {
        service.signal(Signal::Cont)?;
    }
    let (first_at, first_count) = wait_for(
        "the first persisted row",
        Duration::from_secs(120),
        || async {
            let now = bench.issued_quantity(coupon).await.ok()?;
            (now > 0).then(|| (Instant::now(), now))
        },
    )
    .await?;
    let cpu_before = bench.processes.sample();
    wait_for("the drain", Duration::from_secs(600), || async {
        (bench.issued_quantity(coupon).await.ok()? >= total).then_some(())
    })
    .await?;
    let elapsed = first_at.elapsed().as_secs_f64();
    let drained = (total - first_count) as u64;
    let cpu = cpu_before.per_request(&bench.processes.sample(), drained);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues WHERE coupon_id = ?")
        .bind(coupon.get())
        .fetch_one(&bench.pool)
        .await?;
    let issued_quantity = bench.issued_quantity(coupon).await?;
    ensure!(
        rows == total && issued_quantity == total,
        "drain inexact: {total} messages, {rows} rows, issued_quantity {issued_quantity}"
    );
    // Let the outbox relay publish this run's ISSUED events, so the next run starts clean.
    bench.outbox_relayed().await?;
    // Read after the relay: a consumer counts a batch's rows just after its commit.
    let mut by_consumer = Vec::new();
    for index in 0..consumers {
        by_consumer.push(bench.consumer_rows(index).await?);
    }
    ensure!(
        by_consumer.iter().all(|&n| n > 0),
        "a consumer of the group persisted nothing (rows by consumer: {by_consumer:?}): \
         the drain did not run on {consumers} consumers"
    );
    drop(services);
    let rps = drained as f64 / elapsed;
    eprintln!("[bench] (d) drain, {consumers} consumer(s): {total} rows, {rps:.0} rows/s, rows by consumer {by_consumer:?}");
    let run = Run {
        cpu,
        ..Run::rate_only(total as u64, rps)
    };
    Ok((run, by_consumer))
}
