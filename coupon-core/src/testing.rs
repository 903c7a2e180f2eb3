//! Helpers for the test suites of the workspace (feature `testing`): each test gets its own
//! MySQL database, Redis key prefix and Kafka topics on the real local servers, so tests run
//! in parallel without seeing each other.
//!
//! Server addresses come from the same environment variables as the services
//! (`DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS`), defaulting to the local stack.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlPool;

use crate::config::StoreConfig;
use crate::domain::{CouponType, DiscountType, NewCouponPolicy};

/// Prefix of every database a test creates; `make test` drops leftovers before a run.
pub const TEST_DATABASE_PREFIX: &str = "coupon_test_";

/// Store settings isolated for one test: a fresh database name, Redis prefix and topic names
/// (3 partitions for the issue topic).
pub fn isolated_stores() -> StoreConfig {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let server = env("DATABASE_URL", "mysql://root@127.0.0.1:3306/coupon");
    let server = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(head, _)| head)
        .to_owned();
    StoreConfig {
        database_url: format!("{server}/{TEST_DATABASE_PREFIX}{tag}").into(),
        database_max_connections: 8,
        redis_url: env("REDIS_URL", "redis://127.0.0.1:6379").into(),
        redis_key_prefix: format!("test:{tag}:"),
        redis_timeout_ms: 2_000,
        kafka_brokers: env("KAFKA_BROKERS", "127.0.0.1:9092"),
        kafka_issue_topic: format!("issues-{tag}"),
        kafka_dead_letter_topic: format!("dlq-{tag}"),
        kafka_payments_topic: format!("payments-{tag}"),
        kafka_events_topic: format!("events-{tag}"),
        kafka_issue_partitions: 3,
        kafka_message_timeout_ms: 10_000,
        kafka_create_topics: true,
    }
}

/// A first-come-first-served policy with `total` in stock whose issue window is open from
/// a minute ago for an hour.
pub fn open_policy(total: i64) -> NewCouponPolicy {
    let now = Utc::now();
    policy_with_window(
        Some(total),
        now - chrono::Duration::minutes(1),
        now + chrono::Duration::hours(1),
    )
}

/// A policy with `total` in stock (`None`: unlimited) and the given issue window.
pub fn policy_with_window(
    total: Option<i64>,
    starts: DateTime<Utc>,
    ends: DateTime<Utc>,
) -> NewCouponPolicy {
    NewCouponPolicy {
        title: "test drop".into(),
        coupon_type: if total.is_some() {
            CouponType::FirstComeFirstServed
        } else {
            CouponType::Unlimited
        },
        total_quantity: total,
        discount_type: DiscountType::Fixed,
        discount_value: 1_000,
        max_discount_amount: None,
        min_order_amount: 0,
        issue_starts_at: starts,
        issue_ends_at: ends,
        valid_days: Some(30),
        valid_until: None,
        valid_from: None,
        restore_on_cancel: true,
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
///
/// # Panics
/// When the condition does not hold in time: the test fails with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `SELECT COUNT(*)` of `table` rows of `coupon_id`.
///
/// # Panics
/// On any database error (a test failure).
pub async fn count_rows(pool: &MySqlPool, coupon_id: i64) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues WHERE coupon_id = ?")
        .bind(coupon_id)
        .fetch_one(pool)
        .await
        .expect("counting coupon_issues rows")
}

/// An issue message for `user`, as coupon-api publishes it: fresh request id, admitted now.
///
/// # Panics
/// When `user` is not positive (a test mistake).
pub fn issue_message(coupon: crate::domain::CouponId, user: i64) -> crate::message::IssueMessage {
    crate::message::IssueMessage {
        coupon_id: coupon,
        user_id: crate::domain::UserId::parse(user).expect("positive user id"),
        request_id: uuid::Uuid::now_v7(),
        admitted_at: Utc::now(),
    }
}

/// Persists `user`'s issue of `coupon` as coupon-consumer would.
///
/// # Panics
/// On a bad id or any database error (a test failure).
pub async fn persist_issue(pool: &MySqlPool, coupon: i64, user: i64) {
    let coupon = crate::domain::CouponId::parse(coupon).expect("positive coupon id");
    crate::repository::persist_batch(pool, &[issue_message(coupon, user)])
        .await
        .expect("persist");
}

/// A fresh database holding one open policy issued to users `1..=users` (valid 30 days), as
/// coupon-consumer would have persisted it; returns the pool, the issue messages and the
/// `coupon_issues` ids in user order.
///
/// # Panics
/// On any database error (a test failure).
pub async fn issued_to_users(
    users: i64,
) -> (MySqlPool, Vec<crate::message::IssueMessage>, Vec<i64>) {
    let stores = isolated_stores();
    let pool = crate::db::prepare(stores.database_url(), 8)
        .await
        .expect("MySQL/MariaDB must run on DATABASE_URL (make up)");
    let mut tx = pool.begin().await.expect("begin");
    let policy = crate::repository::insert_policy(&mut tx, &open_policy(users))
        .await
        .expect("insert policy");
    tx.commit().await.expect("commit");
    let batch: Vec<_> = (1..=users).map(|u| issue_message(policy.id, u)).collect();
    crate::repository::persist_batch(&pool, &batch)
        .await
        .expect("persist");
    let ids = sqlx::query_scalar("SELECT id FROM coupon_issues ORDER BY user_id")
        .fetch_all(&pool)
        .await
        .expect("issue ids");
    (pool, batch, ids)
}
