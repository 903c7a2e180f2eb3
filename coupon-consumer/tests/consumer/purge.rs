//! The purge: expired idempotency keys, published events and finished jobs past their
//! retention are deleted without a request; what is still needed stays.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coupon_core::store::db::datetime;
use coupon_core::{idempotency, testing};
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::helpers::{build, run};

/// Longest wait for a purge (the loop runs at start, then every interval).
const PURGE_WAIT: Duration = Duration::from_secs(20);

const HOUR: chrono::Duration = chrono::Duration::hours(1);
const DAY: chrono::Duration = chrono::Duration::days(1);

/// An outbox event created a month ago, published at `published` (`None`: not yet).
async fn event(pool: &MySqlPool, published: Option<DateTime<Utc>>) -> i64 {
    let id = sqlx::query(
        "INSERT INTO coupon_events \
         (event_id, event_type, coupon_issue_id, payload, created_at, published_at) \
         VALUES (?, 'ISSUED', 1, '{}', ?, ?)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(datetime(Utc::now() - DAY * 30))
    .bind(datetime(published))
    .execute(pool)
    .await
    .unwrap()
    .last_insert_id();
    i64::try_from(id).unwrap()
}

/// A reconciliation job in `status`, finished at `finished` (`None`: running), created two
/// months ago.
async fn reconciliation_job(
    pool: &MySqlPool,
    status: &str,
    finished: Option<DateTime<Utc>>,
) -> i64 {
    let id = sqlx::query(
        "INSERT INTO reconciliation_jobs (grace_ms, dry_run, status, created_at, finished_at) \
         VALUES (0, FALSE, ?, ?, ?)",
    )
    .bind(status)
    .bind(datetime(Utc::now() - DAY * 60))
    .bind(datetime(finished))
    .execute(pool)
    .await
    .unwrap()
    .last_insert_id();
    i64::try_from(id).unwrap()
}

/// A code generation job in `status` whose last batch was at `updated`.
async fn code_job(pool: &MySqlPool, status: &str, updated: DateTime<Utc>) -> i64 {
    let id = sqlx::query(
        "INSERT INTO code_generation_jobs \
         (topic_id, requested, generated, status, created_at, updated_at) \
         VALUES (1, 10, 10, ?, ?, ?)",
    )
    .bind(status)
    .bind(datetime(updated - DAY))
    .bind(datetime(updated))
    .execute(pool)
    .await
    .unwrap()
    .last_insert_id();
    i64::try_from(id).unwrap()
}

/// An idempotency key claimed at `at`, remembered for a day.
async fn key(pool: &MySqlPool, name: &str, at: DateTime<Utc>) {
    let claim = idempotency::claim(pool, name, &"f".repeat(64), at, DAY)
        .await
        .unwrap();
    assert_eq!(claim, idempotency::Claim::Acquired);
}

/// The ids of `table` still there, in order.
async fn ids(pool: &MySqlPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn keys(pool: &MySqlPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT CONVERT(idempotency_key USING utf8mb4) FROM idempotency_keys ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rows_past_their_retention_are_purged_and_everything_still_needed_is_kept() {
    let (consumer, config) = build(|config| {
        config.purge_interval = Some(Duration::from_millis(200));
        config.outbox_retention = Duration::from_secs(3_600);
        config.job_retention = Duration::from_secs(86_400);
    })
    .await;
    let pool = coupon_core::store::db::connect(config.stores.mysql.url(), 4)
        .await
        .unwrap();
    let now = Utc::now();
    key(&pool, "expired", now - DAY * 2).await;
    key(&pool, "live", now - HOUR).await;
    let _old_event = event(&pool, Some(now - HOUR * 2)).await;
    let recent_event = event(&pool, Some(now - HOUR / 2)).await;
    let unpublished = event(&pool, None).await;
    let _done = reconciliation_job(&pool, "DONE", Some(now - DAY * 2)).await;
    let _failed = reconciliation_job(&pool, "FAILED", Some(now - DAY * 2)).await;
    let recent_job = reconciliation_job(&pool, "DONE", Some(now - HOUR)).await;
    let running = reconciliation_job(&pool, "RUNNING", None).await;
    let _old_codes = code_job(&pool, "DONE", now - DAY * 2).await;
    let recent_codes = code_job(&pool, "DONE", now - HOUR).await;
    let running_codes = code_job(&pool, "RUNNING", now - DAY * 40).await;
    // The relay would publish the unpublished event as soon as the consumer runs; held locked
    // here, the relay skips it (`SKIP LOCKED`) and the purge sees it unpublished throughout.
    let mut hold = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM coupon_events WHERE id = ? FOR UPDATE")
        .bind(unpublished)
        .fetch_one(&mut *hold)
        .await
        .unwrap();

    let consumer = run(consumer, config).await;

    testing::eventually(
        "the rows past their retention purged",
        PURGE_WAIT,
        || async {
            let purged = keys(&pool).await.len() == 1
                && ids(&pool, "coupon_events").await.len() == 2
                && ids(&pool, "reconciliation_jobs").await.len() == 2
                && ids(&pool, "code_generation_jobs").await.len() == 2;
            purged.then_some(())
        },
    )
    .await;
    // Several runs later, what is still needed is still there.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(keys(&pool).await, ["live"]);
    assert_eq!(
        ids(&pool, "coupon_events").await,
        [recent_event, unpublished]
    );
    assert_eq!(
        ids(&pool, "reconciliation_jobs").await,
        [recent_job, running]
    );
    assert_eq!(
        ids(&pool, "code_generation_jobs").await,
        [recent_codes, running_codes]
    );
    hold.rollback().await.unwrap();
    consumer.stop.cancel();
}

#[tokio::test]
async fn a_backlog_larger_than_a_batch_is_drained_in_one_run() {
    let (consumer, config) = build(|config| {
        // One run at start; the next one would be a minute later.
        config.purge_interval = Some(Duration::from_millis(60_000));
        config.purge_batch = 3;
        config.outbox_retention = Duration::from_secs(3_600);
    })
    .await;
    let pool = coupon_core::store::db::connect(config.stores.mysql.url(), 4)
        .await
        .unwrap();
    let now = Utc::now();
    for n in 0..10 {
        event(&pool, Some(now - DAY - chrono::Duration::minutes(n))).await;
        key(&pool, &format!("expired-{n}"), now - DAY * 2).await;
    }
    let kept = event(&pool, Some(now)).await;

    let consumer = run(consumer, config).await;

    testing::eventually("the backlog drained", PURGE_WAIT, || async {
        (ids(&pool, "coupon_events").await == [kept] && keys(&pool).await.is_empty()).then_some(())
    })
    .await;
    consumer.stop.cancel();
}
