//! (d) The consumer's drain rate: per run, a new coupon and topic pre-filled with issue
//! messages (every user admitted first, as the API would have), then coupon-consumer in a new
//! group; rows/s from the first persisted row to the last.

use std::time::{Duration, Instant};

use anyhow::ensure;
use coupon_core::issue::admission::{AdmissionStore, RedisKeys, StockShards};
use coupon_core::store::kafka::IssuePublisher;

use super::broker::{create_topic, publish_users};
use super::figure::{Figure, Run};
use super::harness::{wait_for, Bench};

/// `--runs` drain runs, one topic and group each.
///
/// # Errors
/// A store or the broker failed, or a run did not drain in time.
pub(super) async fn figure(bench: &Bench) -> anyhow::Result<Figure> {
    let mut runs = Vec::new();
    for _ in 0..bench.args.runs {
        runs.push(run(bench).await?);
    }
    Ok(Figure::new(
        "(d) consumer drain into MySQL (rows/s)",
        runs,
        format!(
            "{} issue messages pre-filled per run; from the first persisted row to the last",
            bench.args.drain_messages
        ),
    ))
}

/// One drain run: a new coupon and topic, `--drain-messages` issue messages published to it
/// (as the API would, one per user), then a consumer in a new group; rows/s from the first
/// persisted row to the last.
async fn run(bench: &Bench) -> anyhow::Result<Run> {
    let args = &bench.args;
    let total = args.drain_messages as i64;
    let coupon = bench.create_coupon(total).await?;
    // The consumer persists only users in the admission set (an undone admission's message
    // is dead-lettered): admit every user first, as the API would have.
    let redis_url = format!("redis://{}:{}", args.redis_host, args.redis_port);
    let store = AdmissionStore::new(
        coupon_core::store::redis::connect(
            coupon_core::store::redis::RedisMode::Single,
            &redis_url,
            Duration::from_secs(2),
        )
        .await?,
        RedisKeys::new(bench.prefix.clone()),
    );
    let users: Vec<i64> = (1..=total).collect();
    store
        .add_members(StockShards::single(coupon), &users)
        .await?;
    let topic = format!("{}-drain-{coupon}", bench.issue_topic);
    create_topic(&args.kafka_brokers, &topic, args.partitions).await?;
    let publisher = IssuePublisher::new(&args.kafka_brokers, &topic, Duration::from_secs(30))?;
    let (failed, _) = publish_users(&publisher, coupon, 1..=total, 1024).await;
    ensure!(failed == 0, "{failed} drain messages were not acknowledged");
    let consumer = bench.start_consumer(Some(&topic), &format!("{}-{coupon}", bench.group))?;
    let (first_at, first_count) = wait_for(
        "the first persisted row",
        Duration::from_secs(120),
        || async {
            let now = bench.issued_quantity(coupon).await.ok()?;
            (now > 0).then(|| (Instant::now(), now))
        },
    )
    .await?;
    wait_for("the drain", Duration::from_secs(600), || async {
        (bench.issued_quantity(coupon).await.ok()? >= total).then_some(())
    })
    .await?;
    let elapsed = first_at.elapsed().as_secs_f64();
    // Let the outbox relay publish this run's ISSUED events, so the next run starts clean.
    bench.outbox_relayed().await?;
    consumer.stop();
    let rps = (total - first_count) as f64 / elapsed;
    eprintln!("[bench] (d) drain: {total} rows, {rps:.0} rows/s");
    Ok(Run::rate_only(total as u64, rps))
}
