//! The servers of a test's own that the failure tests stop, freeze and restart
//! ([`testing::OwnMariaDb`], [`testing::OwnRedis`]): each does what its documentation says.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use coupon_core::testing;
use sqlx::{Connection, MySqlConnection};

/// `PING` on `url`, bounded by `within`.
async fn ping(url: &str, within: Duration) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    tokio::time::timeout(within, async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn an_own_mariadb_keeps_committed_rows_across_a_kill_and_a_restart() {
    // Arrange
    let mut db = testing::OwnMariaDb::start().await;
    let mut conn = MySqlConnection::connect(&db.url("mysql")).await.unwrap();
    for statement in [
        "CREATE DATABASE kept",
        "CREATE TABLE kept.rows_kept (id INT PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO kept.rows_kept VALUES (1), (2)",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    drop(conn);

    // Act
    db.stop();
    let while_down = MySqlConnection::connect(&db.url("kept")).await;
    db.restart().await;

    // Assert
    assert!(while_down.is_err(), "a killed server answered");
    let mut conn = MySqlConnection::connect(&db.url("kept")).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rows_kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn an_own_redis_frozen_answers_nothing_until_it_is_thawed() {
    let redis = testing::OwnRedis::start(false).await;
    assert_eq!(
        ping(&redis.url(), Duration::from_secs(2)).await.as_deref(),
        Some("PONG")
    );

    redis.pause();
    let frozen = ping(&redis.url(), Duration::from_millis(500)).await;
    redis.resume();
    let thawed = ping(&redis.url(), Duration::from_secs(5)).await;

    assert_eq!(frozen, None);
    assert_eq!(thawed.as_deref(), Some("PONG"));
}

#[tokio::test]
async fn an_own_redis_without_persistence_comes_back_empty_after_a_restart() {
    let mut redis = testing::OwnRedis::start(false).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg("left")
        .arg("behind")
        .query_async(&mut conn)
        .await
        .unwrap();

    redis.stop();
    let while_down = ping(&redis.url(), Duration::from_secs(1)).await;
    redis.restart().await;

    assert_eq!(while_down, None);
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let left: Option<String> = redis::cmd("GET")
        .arg("left")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None);
}
