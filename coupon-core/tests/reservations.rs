//! Checkout holds and the sweeper against a real MySQL/MariaDB, with the clock passed in.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;

use chrono::{Duration, Utc};
use coupon_core::domain::UserId;
use coupon_core::redemption::{self, OrderId, RedeemError};
use coupon_core::testing;
use sqlx::MySqlPool;

async fn issued(users: i64) -> (MySqlPool, Vec<i64>) {
    let (pool, _, ids) = testing::issued_to_users(users).await;
    (pool, ids)
}

async fn hold(
    pool: &MySqlPool,
    issue: i64,
    user: i64,
    at: chrono::DateTime<Utc>,
) -> Result<(), RedeemError> {
    let order = OrderId::parse(&format!("order-{issue}")).unwrap();
    redemption::reserve(
        pool,
        issue,
        UserId::parse(user).unwrap(),
        &order,
        10_000,
        Duration::seconds(60),
        at,
    )
    .await
    .map(drop)
}

async fn count(pool: &MySqlPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM coupon_issues WHERE status = ?")
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn holds_are_released_only_once_their_time_has_run_out() {
    let (pool, ids) = issued(10).await;
    let t0 = Utc::now();
    for (user, issue) in (1..).zip(&ids) {
        hold(&pool, *issue, user, t0).await.unwrap();
    }

    let early = redemption::release_expired_holds(&pool, t0 + Duration::seconds(59), 100)
        .await
        .unwrap();
    let late = redemption::release_expired_holds(&pool, t0 + Duration::seconds(60), 100)
        .await
        .unwrap();

    assert!(early.is_empty());
    assert_eq!(late.len(), 10);
    assert_eq!(count(&pool, "ISSUED").await, 10);
    hold(&pool, ids[0], 1, t0 + Duration::seconds(61))
        .await
        .expect("usable again");
}

#[tokio::test]
async fn two_sweepers_release_every_expired_hold_exactly_once() {
    let (pool, ids) = issued(200).await;
    let t0 = Utc::now();
    for (user, issue) in (1..).zip(&ids) {
        hold(&pool, *issue, user, t0).await.unwrap();
    }
    let later = t0 + Duration::minutes(5);

    let sweeper = |pool: MySqlPool| async move {
        let mut released = Vec::new();
        loop {
            let batch = redemption::release_expired_holds(&pool, later, 7)
                .await
                .unwrap();
            if batch.is_empty() {
                return released;
            }
            released.extend(batch);
        }
    };
    let (a, b) = tokio::join!(sweeper(pool.clone()), sweeper(pool.clone()));

    let a_ids: HashSet<_> = a.iter().collect();
    assert!(
        b.iter().all(|id| !a_ids.contains(id)),
        "no hold released twice"
    );
    assert_eq!(a.len() + b.len(), 200);
    assert_eq!(count(&pool, "RESERVED").await, 0);
}

#[tokio::test]
async fn fifty_concurrent_holds_of_one_coupon_give_exactly_one() {
    let (pool, ids) = issued(1).await;
    let issue = ids[0];
    let user = UserId::parse(1).unwrap();

    let attempts = (0..50).map(|n| {
        let pool = pool.clone();
        async move {
            let order = OrderId::parse(&format!("order-{n}")).unwrap();
            redemption::reserve(
                &pool,
                issue,
                user,
                &order,
                10_000,
                Duration::minutes(10),
                Utc::now(),
            )
            .await
        }
    });
    let results = futures::future::join_all(attempts).await;

    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, RedeemError::Reserved)));
}

#[tokio::test]
async fn a_payment_result_applied_twice_changes_nothing_the_second_time() {
    let (pool, ids) = issued(2).await;
    let now = Utc::now();
    hold(&pool, ids[0], 1, now).await.unwrap();
    hold(&pool, ids[1], 2, now).await.unwrap();
    let paid = OrderId::parse(&format!("order-{}", ids[0])).unwrap();
    let failed = OrderId::parse(&format!("order-{}", ids[1])).unwrap();

    assert_eq!(
        redemption::settle_order(&pool, &paid, true, now)
            .await
            .unwrap()
            .settled,
        1
    );
    assert_eq!(
        redemption::settle_order(&pool, &paid, true, now)
            .await
            .unwrap()
            .unchanged(),
        Some(redemption::Unchanged::AlreadySettled)
    );
    assert_eq!(
        redemption::settle_order(&pool, &failed, false, now)
            .await
            .unwrap()
            .settled,
        1
    );
    assert_eq!(
        redemption::settle_order(&pool, &failed, false, now)
            .await
            .unwrap()
            .unchanged(),
        Some(redemption::Unchanged::AlreadySettled)
    );

    assert_eq!(count(&pool, "USED").await, 1);
    assert_eq!(count(&pool, "ISSUED").await, 1);
    let redemptions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_redemptions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(redemptions, 1);
}
