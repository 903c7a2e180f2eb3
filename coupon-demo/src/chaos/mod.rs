//! The fault-injection suite behind `make chaos` (`coupon-chaos`): real coupon-api,
//! coupon-consumer, Redis, MariaDB and Apache Kafka processes, a paced race of issue requests,
//! one fault injected mid-race, the counts read before and after one reconciliation pass, and
//! the verdict.
//!
//! Each [`Fault`] gets fresh stores: its own `redis-server` ([`testing::OwnRedis`]; a Redis
//! Cluster of its own, [`testing::OwnRedisCluster`], when the fault kills a master), its own
//! database `coupon_chaos_<fault>_<pid>` (on a `mariadbd` of its own, [`testing::OwnMariaDb`],
//! when the fault stops MySQL), its own topics (on a Kafka broker of its own when the fault
//! stops the broker, on a Kafka cluster of three of its own, `OwnKafka`, when it kills or
//! stops brokers of a cluster). The race fires [`ChaosPlan::requests`] requests from
//! [`ChaosPlan::users`] users at [`ChaosPlan::rate`] per second; the fault starts once [`ChaosPlan::trigger`]
//! requests were answered 202, so admissions happen before, during and after it. The
//! consumer's periodic reconciliation is off (`RECONCILE_INTERVAL_MS=0`): nothing repairs the
//! stores behind the judge's back.
//!
//! After the race the suite waits until every consumer group consumed every issue message and
//! the stores hold still, reads them ([`Counts::before`]), runs one `coupon-api reconcile`
//! pass, and reads them again ([`Counts::after`]). [`Counts::failures`] judges the first
//! reading: rows = distinct users = `SCARD` = `issued_quantity`, the drop sold out exactly,
//! every 202 has a row and every row a 202, every 409 `ALREADY_ISSUED` a row, every message
//! consumed, only the contract's answers, no request in doubt beyond the scenario's bound,
//! issuing resumed after the fault, and the pass repaired nothing (see [`Rule`]).
//!
//! [`process`] starts and stops the services, [`race`] races and counts, [`verdict`] judges.

mod process;
mod race;
mod verdict;

pub use verdict::{Counts, Failure, FaultWindow, Outage, Reconciled, Rule, StoreCounts};

use process::*;
use race::*;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coupon_core::auth::TokenSigner;
use coupon_core::issue::admission::{AdmissionStore, RedisKeys};
use coupon_core::issue::recovery::IssueLog;
use coupon_core::store::redis::RedisMode;
use coupon_core::testing::{self, OwnMariaDb, OwnRedis, OwnRedisCluster};

/// One fault of the suite (the issue's numbering). No request may go unanswered ("in doubt")
/// except where a fault's documentation gives the bound and its reason
/// ([`Fault::in_doubt_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// 1. The Kafka broker stopped mid-race with SIGTERM (a controlled shutdown: the broker
    ///    gives up leadership and closes its logs cleanly), started again on its data 7 s after
    ///    it exited. Produce requests in flight fail or time out (`KAFKA_MESSAGE_TIMEOUT_MS`):
    ///    those admissions are undone and answered 503. In doubt: none.
    BrokerStopped,
    /// 2. coupon-consumer killed with SIGKILL mid-stream (it holds the issue topic's
    ///    partitions and consumes), started again 2 s later, with dynamic group membership as
    ///    configured by default: the group coordinator hands the dead member's partitions to
    ///    the new one only once the dead member's session timed out (10 s), so persistence
    ///    pauses for about that long while admissions go on; the fault ends when the new member
    ///    holds the partitions. Static membership (`KAFKA_GROUP_INSTANCE_ID`) would let it take
    ///    them back at once; the scenario checks the default, which the pause does not break.
    ///    In doubt: none.
    ConsumerKilled,
    /// 3. MySQL killed (SIGKILL) mid-race, started again 10 s later. In doubt: none.
    MysqlStopped,
    /// 4. Redis restarted mid-race without persistence: everything in it lost, then rebuilt.
    ///    In doubt: none.
    RedisRestarted,
    /// 5. One of two coupon-api processes killed with SIGKILL mid-race. In doubt: at most
    ///    [`ChaosPlan::concurrency`]: every request in flight to the killed instance loses its
    ///    connection, and the race has no more than that in flight. Such a request may have
    ///    been admitted and not yet published; the reconciliation pass may re-publish those
    ///    users, and only those.
    ApiKilled,
    /// 6. Every message delivered twice: a second consumer group replays the topic from the
    ///    start while the first consumes it. In doubt: none.
    DeliveredTwice,
    /// 7. On a Redis Cluster of 3 masters and 3 replicas, the master serving the coupon's slot
    ///    killed (SIGKILL) mid-race while its replica lags: the replica is frozen (SIGSTOP)
    ///    and its replication link cut for 1 s, then the master is killed and the replica
    ///    thawed, so whatever the master acknowledged in that second never reached it. The
    ///    replica takes over about 2 s later; the old master is started again 3 s after that
    ///    and rejoins as the new master's replica. The services run with `REDIS_WAIT_REPLICAS`
    ///    (1 by default, see [`ChaosPlan::wait_replicas`]): an admission is answered only once
    ///    a replica holds it. In doubt: none.
    RedisMasterKilled,
    /// 8. On a Kafka cluster of three brokers (topics with 3 replicas and
    ///    `min.insync.replicas=2`), the leader of the issue topic's busiest partition (the
    ///    most messages so far) killed with SIGKILL mid-race, and started again on its data
    ///    5 s after. Its partitions have no leader until the controllers fence it
    ///    (`broker.session.timeout.ms`, 9 s) or it comes back; publishes to them are retried
    ///    by the idempotent producer (same producer id and sequence numbers, so a retried
    ///    batch is written once) until they succeed or `KAFKA_MESSAGE_TIMEOUT_MS` passes (then
    ///    undone and answered 503). Every 202 was on two brokers (`acks=all`, two in sync at
    ///    least), so the new leader holds it. The fault ends when the node is back in every
    ///    issue partition's in-sync replicas. In doubt: none.
    ClusterLeaderKilled,
    /// 9. On the cluster of 8, the leader of the busiest issue partition stopped with SIGTERM
    ///    (a controlled shutdown: leadership moves to another in-sync replica first) for
    ///    longer than the producer's message timeout (`KAFKA_MESSAGE_TIMEOUT_MS` + 3 s), then
    ///    started again. Two replicas stay in sync, so `min.insync.replicas=2` still holds and
    ///    publishes go on. The fault ends as in 8. In doubt: none.
    ClusterBrokerStopped,
    /// 10. On the cluster of 8, two of the three brokers stopped with SIGTERM (the busiest
    ///     partition's leader, then the next node) for `KAFKA_MESSAGE_TIMEOUT_MS` + 3 s, then
    ///     both started again. One broker is left: fewer in-sync replicas than
    ///     `min.insync.replicas`, and one controller of three, so no quorum. Every publish
    ///     fails (refused `NOT_ENOUGH_REPLICAS`, or no leader) until the message timeout; its
    ///     admission is undone and the client hears 503. The fault ends as in 8. In doubt:
    ///     none.
    ClusterBelowMinInsync,
}

impl Fault {
    /// Every fault of `make chaos`, in the issues' order.
    pub const ALL: [Self; 10] = [
        Self::BrokerStopped,
        Self::ConsumerKilled,
        Self::MysqlStopped,
        Self::RedisRestarted,
        Self::ApiKilled,
        Self::DeliveredTwice,
        Self::RedisMasterKilled,
        Self::ClusterLeaderKilled,
        Self::ClusterBrokerStopped,
        Self::ClusterBelowMinInsync,
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
            Self::ClusterLeaderKilled => "cluster-leader-killed",
            Self::ClusterBrokerStopped => "cluster-broker-stopped",
            Self::ClusterBelowMinInsync => "cluster-below-min-insync",
        }
    }

    /// Most requests of `plan`'s race that may go unanswered in this scenario (count; see each
    /// fault's documentation for the reason). Only a process killed mid-request breaks
    /// connections; every other fault must be answered, 503 included.
    pub fn in_doubt_bound(self, plan: &ChaosPlan) -> usize {
        match self {
            Self::ApiKilled => plan.concurrency,
            Self::BrokerStopped
            | Self::ConsumerKilled
            | Self::MysqlStopped
            | Self::RedisRestarted
            | Self::DeliveredTwice
            | Self::RedisMasterKilled
            | Self::ClusterLeaderKilled
            | Self::ClusterBrokerStopped
            | Self::ClusterBelowMinInsync => 0,
        }
    }

    /// Whether the scenario runs on a Kafka cluster of three brokers of its own.
    pub fn is_cluster(self) -> bool {
        self.own_brokers() >= 3
    }

    /// Kafka brokers the scenario runs of its own: one for the fault that stops the broker, a
    /// cluster of three for the cluster faults, none for the others (their topics are on the
    /// shared broker of `make up`).
    fn own_brokers(self) -> usize {
        match self {
            Self::BrokerStopped => 1,
            Self::ClusterLeaderKilled
            | Self::ClusterBrokerStopped
            | Self::ClusterBelowMinInsync => 3,
            Self::ConsumerKilled
            | Self::MysqlStopped
            | Self::RedisRestarted
            | Self::ApiKilled
            | Self::DeliveredTwice
            | Self::RedisMasterKilled => 0,
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
    /// The broker launcher, `scripts/kafka-broker.sh DIR PORT CONTROLLER_PORT [NODE_ID VOTERS
    /// CLUSTER_ID]` (for the scenarios with brokers of their own): it execs the JVM, so its
    /// pid is the broker's.
    pub broker: PathBuf,
    /// The installed Apache Kafka (`scripts/install-kafka.sh` prints it), the launcher's
    /// `KAFKA_ROOT`.
    pub kafka_root: PathBuf,
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

/// The shared broker of `make up`, where every scenario without brokers of its own
/// ([`Fault::own_brokers`]) has its topics.
const SHARED_BROKER: &str = "127.0.0.1:9092";

/// The services' `KAFKA_MESSAGE_TIMEOUT_MS` (their default): the longest a publish may wait
/// for its acknowledgement, retries included, before the admission is undone (503).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one scenario: fresh stores and services, the race with `fault` injected, the drain,
/// the counts, one reconciliation pass, the counts again. Logs go to `log_dir`.
///
/// # Errors
/// A process or store could not be started or read; a broken rule is not an error but a
/// [`Failure`] of [`Counts::failures`].
pub async fn run(
    fault: Fault,
    bins: &Binaries,
    plan: &ChaosPlan,
    log_dir: &Path,
) -> anyhow::Result<Counts> {
    std::fs::create_dir_all(log_dir)?;
    let tag = format!("chaos-{}-{}", fault.name(), std::process::id());
    // The services' MariaDB account has rights on `coupon` and `coupon_*` only.
    let database = format!("coupon_{}", tag.replace('-', "_"));
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
    let database_url = match &own_mysql {
        Some(own) => own.url(&database),
        None => format!("mysql://coupon:coupon@127.0.0.1:3306/{database}"),
    };
    let mut own_kafka = match fault.own_brokers() {
        0 => None,
        nodes => Some(OwnKafka::start(bins, log_dir, nodes).await?),
    };
    let brokers = own_kafka
        .as_ref()
        .map_or_else(|| SHARED_BROKER.to_owned(), OwnKafka::address);
    let replicated = fault.is_cluster();
    let issue_topic = format!("{tag}-issues");
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
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_ISSUE_TOPIC", issue_topic.clone()),
        ("KAFKA_DEAD_LETTER_TOPIC", format!("{tag}-issues-dlq")),
        ("KAFKA_PAYMENTS_TOPIC", format!("{tag}-payments")),
        ("KAFKA_EVENTS_TOPIC", format!("{tag}-events")),
        ("KAFKA_CONSUMER_GROUP", tag.clone()),
        (
            "KAFKA_MESSAGE_TIMEOUT_MS",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        ),
        // No periodic reconciliation: the verdict reads the stores as the fault left them,
        // and the suite's own pass afterwards must find nothing to repair.
        ("RECONCILE_INTERVAL_MS", "0".to_owned()),
        ("JWT_SECRET", testing::JWT_SECRET.to_owned()),
        ("ALLOW_DEVELOPMENT_SECRET", "true".to_owned()),
        ("RATE_LIMITS", "off".to_owned()),
        ("METRICS_LISTEN", "off".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        // No error backtraces (anyhow captures one per error when RUST_BACKTRACE=1 is
        // inherited): symbolizing one for each logged 503 of a debug build saturated both
        // cores in redis-master-killed and kept every Redis call timing out to the race's end.
        ("RUST_LIB_BACKTRACE", "0".to_owned()),
    ]
    .into_iter()
    // On the cluster, the topics the services create as a shop must run them.
    .chain(
        [
            ("KAFKA_TOPIC_REPLICATION_FACTOR", "3".to_owned()),
            ("KAFKA_TOPIC_MIN_INSYNC_REPLICAS", "2".to_owned()),
        ]
        .into_iter()
        .filter(|_| replicated),
    )
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
        let mut api = scenario_process(&format!("coupon-api-{i}"), &bins.api, &api_env, log_dir);
        let base = format!("http://127.0.0.1:{port}");
        start_api(&mut api, port).await?;
        apis.push(api);
        bases.push(base);
    }
    let mut consumer = scenario_process("coupon-consumer", &bins.consumer, &env, log_dir);
    start_consumer(&mut consumer, &issue_topic).await?;
    let mut replay_env = env.clone();
    replay_env.push(("KAFKA_CONSUMER_GROUP".into(), format!("{tag}-replay")));
    let mut replay = scenario_process(
        "coupon-consumer-replay",
        &bins.consumer,
        &replay_env,
        log_dir,
    );

    let signer = TokenSigner::hs256(testing::JWT_SECRET);
    let coupon = crate::create_coupon(&client, &bases[0], &signer, plan.stock, 1).await?;
    let pool = coupon_core::store::db::connect(&database_url, 4).await?;
    let redis_conn =
        coupon_core::store::redis::connect(redis_mode, &redis_url, Duration::from_secs(2)).await?;
    let admission = AdmissionStore::new(redis_conn, RedisKeys::new(String::new()));
    let issue_log = |group: &str| IssueLog {
        brokers: brokers.clone(),
        topic: issue_topic.clone(),
        group: group.to_owned(),
        timeout: Duration::from_secs(10),
    };

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
    // Returns when the fault started and when it ended (the failed part serves again), and
    // for the cluster faults when the stopped brokers were all down.
    let inject = async {
        let mut outage = None;
        while accepted_so_far.load(Ordering::Relaxed) < plan.trigger {
            if race_over.load(Ordering::Relaxed) {
                bail!(
                    "the race ended before {} requests were accepted",
                    plan.trigger
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        note(&format!("fault {} starts", fault.name()));
        match fault {
            Fault::BrokerStopped => {
                let broker = own_kafka.as_mut().context("own broker")?;
                let stopped = broker
                    .stop(1, Signal::Term, Duration::from_secs(60))
                    .await?
                    .context("the broker was not running")?;
                note(&format!("the broker (SIGTERM) {stopped}"));
                tokio::time::sleep(Duration::from_secs(7)).await;
                note("starting the broker again on its data");
                broker.restart(&issue_log(&tag), coupon).await?;
                note("the broker serves the issue topic again");
            }
            Fault::ClusterLeaderKilled
            | Fault::ClusterBrokerStopped
            | Fault::ClusterBelowMinInsync => {
                let kafka = own_kafka.as_mut().context("own Kafka cluster")?;
                let partitions = kafka.partitions(&issue_topic).await?;
                let busiest = partitions
                    .iter()
                    .max_by_key(|p| p.high_watermark)
                    .context("the issue topic has no partition")?;
                let mut victims = vec![busiest.leader];
                let (signal, down) = match fault {
                    Fault::ClusterLeaderKilled => (Signal::Kill, Duration::from_secs(5)),
                    _ => (Signal::Term, MESSAGE_TIMEOUT + Duration::from_secs(3)),
                };
                if fault == Fault::ClusterBelowMinInsync {
                    let next = kafka.ids().into_iter().find(|id| *id != busiest.leader);
                    victims.extend(next);
                }
                note(&format!(
                    "partition {} is the busiest ({} messages), led by node {}",
                    busiest.partition, busiest.high_watermark, busiest.leader
                ));
                for &node in &victims {
                    let stopped = kafka
                        .stop(node, signal, Duration::from_secs(60))
                        .await?
                        .with_context(|| format!("node {node} was not running"))?;
                    note(&format!("node {node} ({signal}) {stopped}"));
                }
                let down_since = Instant::now();
                tokio::time::sleep(down).await;
                outage = Some((down_since, Instant::now()));
                for &node in &victims {
                    note(&format!("starting node {node} again on its data"));
                    kafka.start_again(node)?;
                }
                kafka
                    .wait_until_in_sync(&issue_topic, &issue_log(&tag), coupon)
                    .await?;
                note("every issue partition has its three replicas in sync again");
            }
            Fault::ConsumerKilled => {
                let _ = consumer.stop(Signal::Kill, Duration::from_secs(15)).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                note("starting coupon-consumer again");
                start_consumer(&mut consumer, &issue_topic).await?;
                note("the new member holds the issue topic's partitions");
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
            Fault::ApiKilled => {
                let _ = apis[1].stop(Signal::Kill, Duration::from_secs(15)).await;
            }
            Fault::DeliveredTwice => start_consumer(&mut replay, &issue_topic).await?,
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
        anyhow::Ok((started, Instant::now(), outage))
    };
    let (raced, injected) = tokio::join!(
        async {
            let raced = race(&client, &bases, &signer, coupon, plan, &accepted_so_far).await;
            race_over.store(true, Ordering::Relaxed);
            raced
        },
        inject
    );
    let answers = raced?;
    write_answers(&answers, &log_dir.join("answers.csv"))?;
    let (fault_started, fault_ended, outage) = injected?;
    note("race ends");

    // The drain: every group past every message, then the stores holding still.
    let mut groups = vec![tag.clone()];
    if fault == Fault::DeliveredTwice {
        groups.push(format!("{tag}-replay"));
    }
    let logs: Vec<IssueLog> = groups.iter().map(|g| issue_log(g)).collect();
    let unconsumed = unconsumed(&logs, coupon, Duration::from_secs(120)).await?;
    settle(&pool, &admission, coupon, Duration::from_secs(120)).await;
    let before = read_state(&pool, &admission, coupon).await?;
    note("counted before the reconciliation pass");
    let reconciled = reconcile(bins, &env, coupon)?;
    note("reconciled");
    settle(&pool, &admission, coupon, Duration::from_secs(60)).await;
    let after = read_counts(&pool, &admission, coupon).await?;

    let with_row = &before.with_row;
    let without_accept: HashSet<i64> = with_row.difference(&answers.accepted).copied().collect();
    let members_without_row: HashSet<i64> = before.members.difference(with_row).copied().collect();
    let since_start = |at: Instant| at.saturating_duration_since(answers.started);
    // Issuing recovered when requests sent after the fault's end were answered 202; the units
    // left then are those not taken by the 202s of requests sent before it, nor in doubt.
    let accepted_after: Vec<_> = answers
        .accepted_at
        .iter()
        .filter(|&&(sent, _)| sent > fault_ended)
        .collect();
    let units_left_at = |at: Instant| {
        let taken = answers
            .accepted_at
            .iter()
            .filter(|&&(sent, _)| sent <= at)
            .count();
        (plan.stock - i64::try_from(taken + answers.in_doubt.len()).unwrap_or(i64::MAX)).max(0)
    };
    let units_left = units_left_at(fault_ended);
    let within = |times: &[(Instant, Instant)], from: Instant, until: Instant| {
        times
            .iter()
            .filter(|&&(sent, answered)| sent >= from && answered <= until)
            .count()
    };
    for (what, users) in [
        (
            "rows of users neither answered 202 nor in doubt",
            without_accept
                .difference(&answers.in_doubt)
                .copied()
                .collect::<Vec<_>>(),
        ),
        (
            "users answered 202 without a row",
            answers.accepted.difference(with_row).copied().collect(),
        ),
    ] {
        if !users.is_empty() {
            note(&format!("{what}: {users:?} (see answers.csv)"));
        }
    }
    let mut counts = Counts {
        requests: plan.requests,
        accepted: answers.accepted.len(),
        in_doubt: answers.in_doubt.len(),
        before: before.counts,
        after,
        accepted_without_row: answers.accepted.difference(with_row).count(),
        row_without_accept: without_accept.difference(&answers.in_doubt).count(),
        in_doubt_with_row: without_accept.intersection(&answers.in_doubt).count(),
        admitted_without_row: members_without_row.difference(&answers.in_doubt).count(),
        in_doubt_admitted_without_row: members_without_row.intersection(&answers.in_doubt).count(),
        row_not_admitted: with_row.difference(&before.members).count(),
        already_issued_without_row: answers.already_issued.difference(with_row).count(),
        unconsumed,
        republished_not_in_doubt: reconciled
            .republished
            .iter()
            .filter(|user| !answers.in_doubt.contains(user))
            .count(),
        reconciled,
        fault: FaultWindow {
            started: since_start(fault_started),
            ended: since_start(fault_ended),
            race_ended: since_start(answers.ended),
            units_left,
            accepted_after: accepted_after.len(),
            first_accept_after: accepted_after
                .iter()
                .map(|&&(_, answered)| answered - fault_ended)
                .min(),
            outage: outage.map(|(from, until)| Outage {
                from: since_start(from),
                until: since_start(until),
                units_left: units_left_at(from),
                answered: within(&answers.answered_at, from, until),
                accepted: within(&answers.accepted_at, from, until),
            }),
        },
        race: answers.ended - answers.started,
        answers: answers.labels,
        consumer_shutdown: Duration::ZERO,
    };
    let stopping = Instant::now();
    consumer.stop_blocking(Signal::Term, Duration::from_secs(15));
    counts.consumer_shutdown = stopping.elapsed();
    drop(apis);
    drop(consumer);
    drop(replay);
    drop(own_kafka);
    if own_mysql.is_none() {
        // The scenario's database on the shared server, dropped through the scenario's own
        // connection (the account may not use the `mysql` database); an own server goes with
        // its directory.
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(counts)
}
