//! The fault-injection suite behind `make chaos` (`coupon-chaos`): real coupon-api,
//! coupon-consumer, Redis, MariaDB and tansu processes, a paced race of issue requests, one
//! fault injected mid-race, at most one reconciliation pass, then the counts.
//!
//! Each [`Fault`] gets fresh stores: its own `redis-server` ([`testing::OwnRedis`]; a Redis
//! Cluster of its own, [`testing::OwnRedisCluster`], when the fault kills a master), its own
//! database (on a `mariadbd` of its own, [`testing::OwnMariaDb`], when the fault stops MySQL),
//! its own topics (on a tansu broker of its own when the fault stops the broker). The race
//! fires [`ChaosPlan::requests`] requests from [`ChaosPlan::users`] users at
//! [`ChaosPlan::rate`] per second; the fault starts once [`ChaosPlan::trigger`] requests were
//! answered 202, so admissions happen before, during and after it.
//!
//! What [`Counts::holds`] asserts, after the consumer drained and one `coupon-api reconcile`
//! pass: rows in MySQL = distinct users in them = Redis `SCARD` = `issued_quantity` ≤ stock;
//! every user answered 202 has a row; and every row belongs to a user answered 202, or, where
//! an API process died mid-request, to a user whose request got no answer ("in doubt": the
//! process may have admitted and published before it died); and every user answered 409
//! `ALREADY_ISSUED` has a row (that answer is given only for a durable admission: a repeat
//! while the first admission is pending hears `ISSUE_IN_PROGRESS`).
//!
//! [`process`] starts and stops the services, [`race`] races and counts.

mod process;
mod race;

use process::*;
use race::*;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coupon_core::auth::TokenSigner;
use coupon_core::issue::admission::{AdmissionStore, RedisKeys};
use coupon_core::store::redis::RedisMode;
use coupon_core::testing::{self, OwnMariaDb, OwnRedis, OwnRedisCluster};

/// One fault of the suite (the issue's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// 1. The Kafka broker killed (SIGKILL) mid-race, started again on its data 7 s later. (On
    ///    SIGTERM, tansu 0.6 panicked during its shutdown, an `unreachable!` in its group
    ///    coordinator's offset commit.)
    BrokerStopped,
    /// 2. coupon-consumer killed with SIGKILL mid-stream, started again 2 s later with the
    ///    same `KAFKA_GROUP_INSTANCE_ID` (static membership). With dynamic membership, the
    ///    restarted member consumed nothing for 4 minutes against tansu 0.6.
    ConsumerKilled,
    /// 3. MySQL killed (SIGKILL) mid-race, started again 10 s later.
    MysqlStopped,
    /// 4. Redis restarted mid-race without persistence: everything in it lost, then rebuilt.
    RedisRestarted,
    /// 5. One of two coupon-api processes killed with SIGKILL mid-race.
    ApiKilled,
    /// 6. Every message delivered twice: a second consumer group replays the topic from the
    ///    start while the first consumes it.
    DeliveredTwice,
    /// 7. On a Redis Cluster of 3 masters and 3 replicas, the master serving the coupon's slot
    ///    killed (SIGKILL) mid-race while its replica lags: the replica is frozen (SIGSTOP)
    ///    and its replication link cut for 1 s, then the master is killed and the replica
    ///    thawed, so whatever the master acknowledged in that second never reached it. The replica takes over about 2 s
    ///    later; the old master is started again 3 s after that and rejoins as the new
    ///    master's replica. The services run with `REDIS_WAIT_REPLICAS` (1 by default, see
    ///    [`ChaosPlan::wait_replicas`]): an admission is answered only once a replica holds it.
    RedisMasterKilled,
}

impl Fault {
    /// Every fault of `make chaos`, in the issues' order.
    pub const ALL: [Self; 7] = [
        Self::BrokerStopped,
        Self::ConsumerKilled,
        Self::MysqlStopped,
        Self::RedisRestarted,
        Self::ApiKilled,
        Self::DeliveredTwice,
        Self::RedisMasterKilled,
    ];

    /// Kebab-case name (as on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Self::BrokerStopped => "broker-stopped",
            Self::ConsumerKilled => "consumer-killed",
            Self::MysqlStopped => "mysql-stopped",
            Self::RedisRestarted => "redis-restarted",
            Self::ApiKilled => "api-killed",
            Self::DeliveredTwice => "delivered-twice",
            Self::RedisMasterKilled => "redis-master-killed",
        }
    }
}

/// The executables a scenario runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// coupon-api.
    pub api: PathBuf,
    /// coupon-consumer.
    pub consumer: PathBuf,
    /// tansu (for the scenario that stops the broker).
    pub tansu: PathBuf,
}

/// Shape of every scenario's race.
#[derive(Debug, Clone, Copy)]
pub struct ChaosPlan {
    /// Units in stock (count).
    pub stock: i64,
    /// Requests fired (count).
    pub requests: usize,
    /// Distinct users (count).
    pub users: usize,
    /// Requests in flight at most (count).
    pub concurrency: usize,
    /// Requests started per second at most.
    pub rate: f64,
    /// 202 answers after which the fault starts (count).
    pub trigger: usize,
    /// Seed of the request order.
    pub seed: u64,
    /// `REDIS_WAIT_REPLICAS` of the services in [`Fault::RedisMasterKilled`] (count; 0 shows
    /// what asynchronous replication loses without it).
    pub wait_replicas: u32,
}

/// What one scenario counted. [`Counts::holds`] is the verdict.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests fired (count).
    pub requests: usize,
    /// Answers by `"<status> <code>"` (`"000 IN_DOUBT"`: no answer, the connection broke
    /// after the request was sent).
    pub answers: BTreeMap<String, usize>,
    /// Users answered 202 (count).
    pub accepted: usize,
    /// Users whose request got no answer (count).
    pub in_doubt: usize,
    /// Rows in `coupon_issues` (count).
    pub rows: i64,
    /// Distinct users among the rows (count).
    pub distinct_users: i64,
    /// `SCARD` of the admission set.
    pub admitted: i64,
    /// `coupons.issued_quantity`.
    pub issued_quantity: i64,
    /// Users answered 202 without a row (count; must be 0).
    pub accepted_without_row: usize,
    /// Rows of users neither answered 202 nor in doubt (count; must be 0).
    pub row_without_accept: usize,
    /// Rows of users in doubt (count; allowed).
    pub in_doubt_with_row: usize,
    /// Users answered 409 `ALREADY_ISSUED` who hold no row (count; must be 0: that answer is a
    /// promise, given only once an admission is durable).
    pub already_issued_without_row: usize,
    /// Users of issue messages some consumer group had not consumed at the end (count; must
    /// be 0: for [`Fault::DeliveredTwice`] it shows both groups read every message).
    pub unconsumed: usize,
    /// What the reconciliation pass repaired: (re-published, re-admitted, issued_quantity
    /// before, after).
    pub reconciled: (usize, usize, i64, i64),
    /// Wall time of the race.
    pub race: Duration,
    /// How long coupon-consumer took to exit on SIGTERM after the drain (reported; 15 s and
    /// it is killed).
    pub consumer_shutdown: Duration,
}

impl Counts {
    /// Answers that are none of 202, 409 `ALREADY_ISSUED` / `ISSUE_IN_PROGRESS` / `SOLD_OUT`, 503
    /// `UNAVAILABLE`, or no answer (count; must be 0).
    pub fn unexpected(&self) -> usize {
        const EXPECTED: [&str; 6] = [
            "202 ACCEPTED",
            "409 ALREADY_ISSUED",
            "409 ISSUE_IN_PROGRESS",
            "409 SOLD_OUT",
            "503 UNAVAILABLE",
            "000 IN_DOUBT",
        ];
        self.answers
            .iter()
            .filter(|(label, _)| !EXPECTED.contains(&label.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// The suite's assertion for one scenario (see the module documentation).
    pub fn holds(&self, stock: i64) -> bool {
        self.rows == self.distinct_users
            && self.rows == self.admitted
            && self.rows == self.issued_quantity
            && self.rows <= stock
            && self.accepted_without_row == 0
            && self.row_without_accept == 0
            && self.already_issued_without_row == 0
            && self.unconsumed == 0
            && self.unexpected() == 0
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answers = self
            .answers
            .iter()
            .map(|(label, n)| format!("{label}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            f,
            "  race: {} requests in {:.1} s; {answers}",
            self.requests,
            self.race.as_secs_f64()
        )?;
        writeln!(
            f,
            "  202 users {}, rows {}, distinct users {}, SCARD {}, issued_quantity {}",
            self.accepted, self.rows, self.distinct_users, self.admitted, self.issued_quantity
        )?;
        writeln!(
            f,
            "  202 without row {}, row without 202 {}, in doubt {} (with a row {}), \
             409 ALREADY_ISSUED without row {}, unconsumed messages' users {}",
            self.accepted_without_row,
            self.row_without_accept,
            self.in_doubt,
            self.in_doubt_with_row,
            self.already_issued_without_row,
            self.unconsumed
        )?;
        let (republished, readmitted, before, after) = self.reconciled;
        writeln!(
            f,
            "  reconciliation: {republished} re-published, {readmitted} re-admitted, \
             issued_quantity {before} -> {after}"
        )?;
        write!(
            f,
            "  coupon-consumer exited {:.1} s after SIGTERM",
            self.consumer_shutdown.as_secs_f64()
        )
    }
}
/// Runs one scenario: fresh stores and services, the race with `fault` injected, the drain,
/// one reconciliation pass, the counts. Logs go to `log_dir`.
///
/// # Errors
/// A process or store could not be started or read; a failed assertion is not an error but
/// [`Counts::holds`] returning false.
pub async fn run(
    fault: Fault,
    bins: &Binaries,
    plan: &ChaosPlan,
    log_dir: &Path,
) -> anyhow::Result<Counts> {
    std::fs::create_dir_all(log_dir)?;
    let tag = format!("chaos-{}-{}", fault.name(), std::process::id());
    let mut redis = OwnRedis::start(false).await;
    let mut cluster = match fault {
        Fault::RedisMasterKilled => Some(OwnRedisCluster::start().await),
        _ => None,
    };
    let (redis_mode, redis_url) = match &cluster {
        Some(cluster) => (RedisMode::Cluster, cluster.url()),
        None => (RedisMode::Single, redis.url()),
    };
    let mut own_mysql = match fault {
        Fault::MysqlStopped => Some(OwnMariaDb::start().await),
        _ => None,
    };
    let database = tag.replace('-', "_");
    let database_url = match &own_mysql {
        Some(own) => own.url(&database),
        None => format!("mysql://coupon:coupon@127.0.0.1:3306/{database}"),
    };
    let broker_port = match fault {
        Fault::BrokerStopped => free_port()?,
        _ => 9092,
    };
    let mut own_broker = match fault {
        Fault::BrokerStopped => {
            let mut process = broker(bins, log_dir, broker_port)?;
            start_broker(&mut process, broker_port).await?;
            Some(process)
        }
        _ => None,
    };
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url.clone()),
        ("REDIS_URL", redis_url.clone()),
        (
            "REDIS_MODE",
            if cluster.is_some() {
                "cluster"
            } else {
                "single"
            }
            .to_owned(),
        ),
        // Only the cluster has replicas: on a single node WAIT could only time out.
        (
            "REDIS_WAIT_REPLICAS",
            if cluster.is_some() {
                plan.wait_replicas
            } else {
                0
            }
            .to_string(),
        ),
        ("KAFKA_BROKERS", format!("127.0.0.1:{broker_port}")),
        ("KAFKA_ISSUE_TOPIC", format!("{tag}-issues")),
        ("KAFKA_DEAD_LETTER_TOPIC", format!("{tag}-issues-dlq")),
        ("KAFKA_PAYMENTS_TOPIC", format!("{tag}-payments")),
        ("KAFKA_EVENTS_TOPIC", format!("{tag}-events")),
        ("KAFKA_CONSUMER_GROUP", tag.clone()),
        ("JWT_SECRET", testing::JWT_SECRET.to_owned()),
        ("RATE_LIMITS", "off".to_owned()),
        ("METRICS_LISTEN", "off".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let client = crate::http_client(plan.concurrency)?;
    let instances = if fault == Fault::ApiKilled { 2 } else { 1 };
    let mut apis = Vec::new();
    let mut bases = Vec::new();
    for i in 0..instances {
        let port = free_port()?;
        let mut api_env = env.clone();
        api_env.push(("API_LISTEN".into(), format!("127.0.0.1:{port}")));
        let mut api = Process::new(&format!("coupon-api-{i}"), &bins.api, api_env, log_dir);
        let base = format!("http://127.0.0.1:{port}");
        start_api(&mut api, &client, &base).await?;
        apis.push(api);
        bases.push(base);
    }
    let mut consumer_env = env.clone();
    consumer_env.push((
        "KAFKA_GROUP_INSTANCE_ID".into(),
        format!("{tag}-consumer-0"),
    ));
    let mut consumer = Process::new("coupon-consumer", &bins.consumer, consumer_env, log_dir);
    start_consumer(&mut consumer).await?;
    let mut replay_env = env.clone();
    replay_env.push(("KAFKA_CONSUMER_GROUP".into(), format!("{tag}-replay")));
    let mut replay = Process::new(
        "coupon-consumer-replay",
        &bins.consumer,
        replay_env,
        log_dir,
    );

    let signer = TokenSigner::hs256(testing::JWT_SECRET);
    let coupon = crate::create_coupon(&client, &bases[0], &signer, plan.stock, 1).await?;
    let pool = coupon_core::store::db::connect(&database_url, 4).await?;
    let redis_conn =
        coupon_core::store::redis::connect(redis_mode, &redis_url, Duration::from_secs(2)).await?;
    let admission = AdmissionStore::new(redis_conn, RedisKeys::new(String::new()));

    let accepted_so_far = AtomicUsize::new(0);
    let fault_log = log_dir.join("fault.log");
    let note = |what: &str| {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&fault_log)
        {
            let _ = writeln!(f, "{} {what}", chrono::Utc::now().to_rfc3339());
        }
    };
    let race_over = AtomicBool::new(false);
    let inject = async {
        while accepted_so_far.load(Ordering::Relaxed) < plan.trigger {
            if race_over.load(Ordering::Relaxed) {
                bail!(
                    "the race ended before {} requests were accepted",
                    plan.trigger
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        note(&format!("fault {} starts", fault.name()));
        match fault {
            Fault::BrokerStopped => {
                let broker = own_broker.as_mut().context("own broker")?;
                broker.stop("KILL");
                tokio::time::sleep(Duration::from_secs(7)).await;
                start_broker(broker, broker_port).await?;
            }
            Fault::ConsumerKilled => {
                consumer.stop("KILL");
                tokio::time::sleep(Duration::from_secs(2)).await;
                start_consumer(&mut consumer).await?;
            }
            Fault::MysqlStopped => {
                let mysql = own_mysql.as_mut().context("own MariaDB")?;
                mysql.stop();
                tokio::time::sleep(Duration::from_secs(10)).await;
                mysql.restart().await;
            }
            Fault::RedisRestarted => {
                redis.stop();
                redis.restart().await;
            }
            Fault::ApiKilled => apis[1].stop("KILL"),
            Fault::DeliveredTwice => start_consumer(&mut replay).await?,
            Fault::RedisMasterKilled => {
                let cluster = cluster.as_mut().context("own Redis Cluster")?;
                let key = admission.keys().admission_set(coupon);
                let master = cluster
                    .master_of(&key)
                    .context("the master of the coupon's slot")?;
                let replica = cluster
                    .replica_of(master)
                    .context("the replica of that master")?;
                note(&format!(
                    "freezing the replica on port {replica} and cutting its link for 1 s"
                ));
                cluster.pause(replica);
                cluster.cut_replication(master);
                tokio::time::sleep(Duration::from_secs(1)).await;
                note(&format!("killing the master on port {master}"));
                cluster.kill(master);
                cluster.resume(replica);
                cluster.wait_until_served(Duration::from_secs(30)).await;
                note("its replica serves the slot");
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.restart(master).await;
                note(&format!("port {master} rejoined as a replica"));
            }
        }
        note(&format!("fault {} ends", fault.name()));
        anyhow::Ok(())
    };
    let (raced, injected) = tokio::join!(
        async {
            let raced = race(&client, &bases, &signer, coupon, plan, &accepted_so_far).await;
            race_over.store(true, Ordering::Relaxed);
            raced
        },
        inject
    );
    let (answers, elapsed) = raced?;
    injected?;
    note("race ends");

    settle(&pool, &admission, coupon, Duration::from_secs(120)).await;
    let reconciled = reconcile(bins, &env, coupon)?;
    note("reconciled");
    settle(&pool, &admission, coupon, Duration::from_secs(60)).await;
    let mut groups = vec![tag.clone()];
    if fault == Fault::DeliveredTwice {
        groups.push(format!("{tag}-replay"));
    }
    let unconsumed = unconsumed(
        &format!("127.0.0.1:{broker_port}"),
        &format!("{tag}-issues"),
        &groups,
        coupon,
        Duration::from_secs(60),
    )
    .await?;

    let users: Vec<i64> =
        sqlx::query_scalar("SELECT user_id FROM coupon_issues WHERE coupon_id = ?")
            .bind(coupon.get())
            .fetch_all(&pool)
            .await?;
    let with_row: HashSet<i64> = users.iter().copied().collect();
    let (rows, distinct_users, issued_quantity, admitted) =
        read_counts(&pool, &admission, coupon).await?;
    let without_accept: HashSet<i64> = with_row.difference(&answers.accepted).copied().collect();
    let mut counts = Counts {
        requests: plan.requests,
        accepted: answers.accepted.len(),
        in_doubt: answers.in_doubt.len(),
        rows,
        distinct_users,
        admitted,
        issued_quantity,
        accepted_without_row: answers.accepted.difference(&with_row).count(),
        row_without_accept: without_accept.difference(&answers.in_doubt).count(),
        in_doubt_with_row: without_accept.intersection(&answers.in_doubt).count(),
        already_issued_without_row: answers.already_issued.difference(&with_row).count(),
        unconsumed,
        reconciled,
        race: elapsed,
        answers: answers.labels,
        consumer_shutdown: Duration::ZERO,
    };
    let stopping = Instant::now();
    consumer.stop("TERM");
    counts.consumer_shutdown = stopping.elapsed();
    drop(apis);
    drop(consumer);
    drop(replay);
    drop(own_broker);
    pool.close().await;
    if own_mysql.is_none() {
        // The scenario's database on the shared server; an own server goes with its directory.
        let admin = coupon_core::store::db::connect("mysql://coupon:coupon@127.0.0.1:3306/mysql", 1).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute(&admin)
            .await?;
        admin.close().await;
    }
    Ok(counts)
}
