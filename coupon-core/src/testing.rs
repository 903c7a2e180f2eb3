//! Helpers for the test suites of the workspace (feature `testing`): each test gets its own
//! MySQL database, Redis key prefix and Kafka topics on the real local servers, so tests run
//! in parallel without seeing each other.
//!
//! Server addresses come from the same environment variables as the services
//! (`DATABASE_URL`, `REDIS_URL`, `REDIS_MODE`, `KAFKA_BROKERS`), defaulting to the local stack;
//! `REDIS_MODE=cluster REDIS_URL=redis://127.0.0.1:7000` runs the suites against the local
//! cluster of `REDIS_MODE=cluster make up`.

use std::time::Duration;

mod cluster;
mod cut;
mod deployment;
pub use cluster::OwnRedisCluster;
pub use cut::TcpCut;
pub use deployment::OwnRedisDeployment;

use chrono::{DateTime, Utc};
use coupon_harness::{Output, Process, Program, Signal, Wait};
use sqlx::mysql::MySqlPool;

use crate::config::{KafkaConfig, MySqlConfig, RedisConfig, StoreConfig};
use crate::domain::{CouponType, DiscountType, NewCouponPolicy};

/// Prefix of every database a test creates; `make test` drops leftovers before a run.
pub const TEST_DATABASE_PREFIX: &str = "coupon_test_";

/// HS256 secret of every test's coupon-api (32 bytes, the shortest accepted).
pub const JWT_SECRET: &str = crate::auth::TEST_SECRET;

/// An admin token for the test secret, valid for an hour.
pub fn admin_token() -> String {
    crate::auth::TokenSigner::hs256(JWT_SECRET)
        .mint("test-admin", crate::auth::Role::Admin, 3_600)
        .expect("HS256 signing cannot fail")
}

/// A user token for `user` with the test secret, valid for an hour.
pub fn user_token(user: i64) -> String {
    crate::auth::TokenSigner::hs256(JWT_SECRET)
        .mint(&user.to_string(), crate::auth::Role::User, 3_600)
        .expect("HS256 signing cannot fail")
}

/// A service token (the order service, `sub` = `checkout`) with the test secret, valid for an
/// hour.
pub fn service_token() -> String {
    crate::auth::TokenSigner::hs256(JWT_SECRET)
        .mint("checkout", crate::auth::Role::Service, 3_600)
        .expect("HS256 signing cannot fail")
}

/// `REDIS_MODE` of the test run: `cluster` when so set, else `single`.
pub fn redis_mode() -> crate::store::redis::RedisMode {
    match std::env::var("REDIS_MODE").as_deref() {
        Ok("cluster") => crate::store::redis::RedisMode::Cluster,
        _ => crate::store::redis::RedisMode::Single,
    }
}

/// Store settings isolated for one test: a fresh database name, Redis prefix and topic names
/// (3 partitions for the issue topic), the topics created with the broker's replication
/// factor and `min.insync.replicas` (one replica each on the local single broker).
pub fn isolated_stores() -> StoreConfig {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let server = env(
        "DATABASE_URL",
        "mysql://coupon:coupon@127.0.0.1:3306/coupon",
    );
    let server = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(head, _)| head)
        .to_owned();
    StoreConfig {
        mysql: MySqlConfig {
            url: format!("{server}/{TEST_DATABASE_PREFIX}{tag}").into(),
            max_connections: 8,
            migrate_on_start: true,
        },
        redis: RedisConfig {
            url: env("REDIS_URL", "redis://127.0.0.1:6379").into(),
            mode: redis_mode(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(200),
            key_prefix: format!("test:{tag}:"),
            timeout: Duration::from_millis(2_000),
        },
        kafka: KafkaConfig {
            brokers: env("KAFKA_BROKERS", "127.0.0.1:9092"),
            issue_topic: format!("issues-{tag}"),
            dead_letter_topic: format!("dlq-{tag}"),
            payments_topic: format!("payments-{tag}"),
            events_topic: format!("events-{tag}"),
            issue_partitions: 3,
            message_timeout: Duration::from_millis(10_000),
            create_topics: true,
            topic_replication_factor: crate::config::ReplicationFactor::BrokerDefault,
            topic_min_insync_replicas: None,
        },
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

/// The stored form of an open policy with id `id` and `total` in stock (`None`: unlimited),
/// unsharded, for tests that prepare Redis state without MySQL.
///
/// # Panics
/// When `id` is not positive (a test mistake).
pub fn policy_row(id: i64, total: Option<i64>) -> crate::domain::CouponPolicy {
    let new = open_policy(1);
    crate::domain::CouponPolicy {
        id: crate::domain::CouponId::parse(id).expect("positive coupon id"),
        title: new.title,
        stock: total.map_or(crate::domain::Stock::Unlimited, |total| {
            crate::domain::Stock::Limited {
                total,
                shards: crate::domain::ShardCount::ONE,
            }
        }),
        issued_quantity: 0,
        discount: crate::domain::Discount::Fixed {
            amount: new.discount_value,
        },
        min_order_amount: 0,
        issue_starts_at: new.issue_starts_at,
        issue_ends_at: new.issue_ends_at,
        validity: crate::domain::Validity::Days(
            new.valid_days.expect("open_policy has valid_days"),
        ),
        valid_from: None,
        status: crate::domain::CouponStatus::Active,
        restore_on_cancel: true,
        created_at: new.issue_starts_at,
        updated_at: new.issue_starts_at,
        version: 1,
    }
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
        stock_shards: 1,
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
pub fn issue_message(
    coupon: crate::domain::CouponId,
    user: i64,
) -> crate::issue::message::IssueMessage {
    crate::issue::message::IssueMessage {
        coupon_id: coupon,
        user_id: crate::domain::UserId::parse(user).expect("positive user id"),
        request_id: uuid::Uuid::now_v7(),
        admitted_at: Utc::now(),
        stock_shards: crate::domain::ShardCount::ONE,
        correlation_id: None,
    }
}

/// Persists `user`'s issue of `coupon` as coupon-consumer would.
///
/// # Panics
/// On a bad id or any database error (a test failure).
pub async fn persist_issue(pool: &MySqlPool, coupon: i64, user: i64) {
    let coupon = crate::domain::CouponId::parse(coupon).expect("positive coupon id");
    crate::issue::persistence::persist_batch(pool, &[issue_message(coupon, user)])
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
) -> (
    MySqlPool,
    Vec<crate::issue::message::IssueMessage>,
    Vec<i64>,
) {
    let stores = isolated_stores();
    let pool = crate::store::db::prepare(stores.mysql.url(), 8)
        .await
        .expect("MySQL/MariaDB must run on DATABASE_URL (make up)");
    let mut tx = pool.begin().await.expect("begin");
    let valid = open_policy(users).try_into().expect("open_policy is valid");
    let policy = crate::policies::insert_policy(&mut tx, &valid)
        .await
        .expect("insert policy");
    tx.commit().await.expect("commit");
    let batch: Vec<_> = (1..=users).map(|u| issue_message(policy.id, u)).collect();
    crate::issue::persistence::persist_batch(&pool, &batch)
        .await
        .expect("persist");
    let ids = sqlx::query_scalar("SELECT id FROM coupon_issues ORDER BY user_id")
        .fetch_all(&pool)
        .await
        .expect("issue ids");
    (pool, batch, ids)
}

/// Panics with `err` and its causes: a process of a test's own that cannot start or does not
/// come up is a broken test machine, and the test says which and why (with the log's end).
fn process_failed(err: &coupon_harness::Error, hint: &str) -> ! {
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        message.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    panic!("{message}{hint}")
}

/// A Redis server of a test's own (`redis-server` on a free port, in a temporary directory),
/// so a test can stop and restart it: the Redis failure scenarios. Stopped when dropped. It
/// logs to `redis.log` in its directory, whose end a failure to come up shows.
#[derive(Debug)]
pub struct OwnRedis {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: std::path::PathBuf,
    process: Process,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port. With `persistent`, every write is appended to an
    /// AOF with `appendfsync always`, so a restart loses nothing; without, a restart loses all.
    ///
    /// # Panics
    /// `redis-server` is not installed, exits, or does not answer within 10 s.
    pub async fn start(persistent: bool) -> Self {
        let port = coupon_harness::free_port().expect("a free port");
        let dir = std::env::temp_dir().join(format!("couponrush-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut program = Program::new("redis-server", "redis-server");
        program
            .arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&dir)
            .arg("--save")
            .arg("");
        if persistent {
            program.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            program.args(["--appendonly", "no"]);
        }
        program.output(Output::AppendFile(dir.join("redis.log")));
        let mut redis = Self {
            port,
            dir,
            process: Process::new(program),
        };
        redis.restart().await;
        redis
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no save on the way out).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, the way a
    /// hung host looks. [`Self::resume`] thaws it.
    pub fn pause(&self) {
        let _ = self.process.signal(Signal::Stop);
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        let _ = self.process.signal(Signal::Cont);
    }

    /// Starts the server again on the same port and directory, and waits until it answers.
    ///
    /// # Panics
    /// `redis-server` cannot start, exits, or does not answer within 10 s.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.process.start() {
            process_failed(&err, " (apt-get install redis-server)");
        }
        let url = self.url();
        let wait = Wait::new(
            "the test's redis-server answers PING",
            Duration::from_secs(10),
        );
        let answered = self
            .process
            .wait_ready(&wait, || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url)?;
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                }
            })
            .await;
        if let Err(err) = answered {
            process_failed(&err, "");
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MariaDB server of a test's own (`mariadbd` on a free port, data in a temporary
/// directory, no grant tables), so a test can kill and restart it: the MySQL failure
/// scenarios. Killed when dropped. It logs to `mariadbd.log` in its directory, whose end a
/// failure to come up shows.
#[derive(Debug)]
pub struct OwnMariaDb {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: std::path::PathBuf,
    process: Process,
}

impl OwnMariaDb {
    /// Initialises a data directory (`mariadb-install-db`) and starts `mariadbd` on it.
    ///
    /// # Panics
    /// The MariaDB server binaries are missing, or the server exits or does not answer within
    /// 30 s.
    pub async fn start() -> Self {
        let port = coupon_harness::free_port().expect("a free port");
        let dir = std::env::temp_dir().join(format!("couponrush-mariadb-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let installed = std::process::Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running mariadb-install-db (apt-get install mariadb-server)");
        assert!(installed.success(), "mariadb-install-db failed");
        let mut program = Program::new("mariadbd", "mariadbd");
        program
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ])
            .output(Output::AppendFile(dir.join("mariadbd.log")));
        let mut db = Self {
            port,
            dir,
            process: Process::new(program),
        };
        db.restart().await;
        db
    }

    /// `mysql://root@127.0.0.1:{port}/{database}`.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// Kills the server (SIGKILL: InnoDB recovers committed work on restart).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port and data, and waits until it answers.
    ///
    /// # Panics
    /// `mariadbd` cannot start, exits, or does not answer within 30 s.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.process.start() {
            process_failed(&err, "");
        }
        let url = self.url("mysql");
        let wait = Wait::new("the test's mariadbd answers", Duration::from_secs(30));
        let answered = self
            .process
            .wait_ready(&wait, || {
                let url = url.clone();
                async move {
                    let pool = MySqlPool::connect(&url).await?;
                    let answered = sqlx::query("SELECT 1").execute(&pool).await.map(drop);
                    pool.close().await;
                    answered
                }
            })
            .await;
        if let Err(err) = answered {
            process_failed(&err, "");
        }
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
