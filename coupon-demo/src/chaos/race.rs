//! The race and what follows it: paced issue requests and their answers by user, the
//! counts read back, the wait for the consumer to drain, and the reconciliation pass.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coupon_core::auth::{Role, TokenSigner};
use coupon_core::domain::{CouponId, UserId};
use coupon_core::issue::admission::{AdmissionStore, StockShards};
use coupon_core::issue::recovery::IssueLog;
use futures::StreamExt;
use sqlx::MySqlPool;

use crate::RacePlan;

use super::*;

/// What the race was answered, by user, and when.
pub(super) struct Answers {
    pub(super) labels: BTreeMap<String, usize>,
    pub(super) accepted: HashSet<i64>,
    pub(super) already_issued: HashSet<i64>,
    pub(super) in_doubt: HashSet<i64>,
    /// When each request answered 202 was sent, and when the answer came.
    pub(super) accepted_at: Vec<(Instant, Instant)>,
    /// When each request answered at all (any status) was sent, and when the answer came.
    pub(super) answered_at: Vec<(Instant, Instant)>,
    /// Every request: user, answer, when it was sent and answered, in the order they were
    /// answered (written to the scenario's `answers.csv`).
    pub(super) all: Vec<(i64, String, (Instant, Instant))>,
    /// When the first request was due.
    pub(super) started: Instant,
    /// When the last answer came.
    pub(super) ended: Instant,
}

/// Sends one issue request for `user`, to `bases[first]` or, when that refuses the connection
/// (nothing was sent: a dead process), to the next base.
pub(super) async fn send(
    client: &reqwest::Client,
    bases: &[String],
    first: usize,
    coupon: CouponId,
    token: &str,
) -> String {
    for attempt in 0..bases.len() {
        let base = &bases[(first + attempt) % bases.len()];
        let sent = client
            .post(format!("{base}/api/v1/coupons/{coupon}/issues"))
            .bearer_auth(token)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 202 {
                    return "202 ACCEPTED".to_owned();
                }
                let code = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|b| b["code"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "?".to_owned());
                return format!("{status} {code}");
            }
            Err(err) if err.is_connect() => continue,
            Err(_) => return "000 IN_DOUBT".to_owned(),
        }
    }
    "000 UNREACHABLE".to_owned()
}

/// Fires `plan`'s requests at `bases` (request i to base i mod n), paced at `plan.rate`;
/// counts the 202s in `accepted_so_far` as they come, so the fault can start on a count.
///
/// # Errors
/// The plan is inconsistent or a token could not be signed; transport failures are answers.
pub(super) async fn race(
    client: &reqwest::Client,
    bases: &[String],
    signer: &TokenSigner,
    coupon: CouponId,
    plan: &ChaosPlan,
    accepted_so_far: &AtomicUsize,
) -> anyhow::Result<Answers> {
    let ids = RacePlan {
        requests: plan.requests,
        users: plan.users,
        concurrency: plan.concurrency,
        seed: plan.seed,
    }
    .user_ids()?;
    let tokens = ids
        .iter()
        .map(|u| Ok((*u, signer.mint(&u.to_string(), Role::User, 3_600)?)))
        .collect::<anyhow::Result<BTreeMap<i64, String>>>()?;
    let started = tokio::time::Instant::now();
    let answers: Vec<(i64, String, (Instant, Instant))> =
        futures::stream::iter(ids.into_iter().enumerate())
            .map(|(i, user)| {
                let token = &tokens[&user];
                async move {
                    let at = started + Duration::from_secs_f64(i as f64 / plan.rate);
                    tokio::time::sleep_until(at).await;
                    let sent = Instant::now();
                    let label = send(client, bases, i, coupon, token).await;
                    if label == "202 ACCEPTED" {
                        accepted_so_far.fetch_add(1, Ordering::Relaxed);
                    }
                    (user, label, (sent, Instant::now()))
                }
            })
            .buffer_unordered(plan.concurrency.max(1))
            .collect()
            .await;
    let mut out = Answers {
        labels: BTreeMap::new(),
        accepted: HashSet::new(),
        already_issued: HashSet::new(),
        in_doubt: HashSet::new(),
        accepted_at: Vec::new(),
        answered_at: Vec::new(),
        all: Vec::new(),
        started: started.into_std(),
        ended: Instant::now(),
    };
    for (user, label, at) in answers.iter().cloned() {
        match label.as_str() {
            "202 ACCEPTED" => {
                out.accepted.insert(user);
                out.accepted_at.push(at);
            }
            "409 ALREADY_ISSUED" => {
                out.already_issued.insert(user);
            }
            "000 IN_DOUBT" => {
                out.in_doubt.insert(user);
            }
            _ => {}
        }
        if !label.starts_with("000") {
            out.answered_at.push(at);
        }
        *out.labels.entry(label).or_default() += 1;
    }
    out.all = answers;
    Ok(out)
}

/// Writes every request of `answers` to `path` as CSV: user, answer, sent and answered (ms
/// from the race's start), for tracing one user's requests after a failed scenario.
pub(super) fn write_answers(answers: &Answers, path: &std::path::Path) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let ms = |at: Instant| at.saturating_duration_since(answers.started).as_millis();
    let mut csv = String::from("user,answer,sent_ms,answered_ms\n");
    for (user, label, (sent, answered)) in &answers.all {
        let _ = writeln!(csv, "{user},{label},{},{}", ms(*sent), ms(*answered));
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// The store counts of `coupon`.
pub(super) async fn read_counts(
    pool: &MySqlPool,
    redis: &AdmissionStore,
    coupon: CouponId,
) -> anyhow::Result<StoreCounts> {
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM coupon_issues WHERE coupon_id = ?",
    )
    .bind(coupon.get())
    .fetch_one(pool)
    .await?;
    let issued: i64 = sqlx::query_scalar("SELECT issued_quantity FROM coupons WHERE id = ?")
        .bind(coupon.get())
        .fetch_one(pool)
        .await?;
    let shards = StockShards::single(coupon); // the chaos drops are unsharded
    Ok(StoreCounts {
        rows,
        distinct_users: distinct,
        admitted: redis.admitted_count(shards).await?,
        issued_quantity: issued,
    })
}

/// The stores of `coupon` at one moment: the counts, the users with a row and the members of
/// the admission set.
pub(super) struct StoreState {
    pub(super) counts: StoreCounts,
    pub(super) with_row: HashSet<i64>,
    pub(super) members: HashSet<i64>,
}

/// Reads [`StoreState`]: the members first, then the rows, then the counts (the stores are
/// expected to be still: the consumer drained).
pub(super) async fn read_state(
    pool: &MySqlPool,
    redis: &AdmissionStore,
    coupon: CouponId,
) -> anyhow::Result<StoreState> {
    let members = redis
        .members(StockShards::single(coupon))
        .await?
        .into_iter()
        .map(UserId::get)
        .collect();
    let with_row = sqlx::query_scalar("SELECT user_id FROM coupon_issues WHERE coupon_id = ?")
        .bind(coupon.get())
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    Ok(StoreState {
        counts: read_counts(pool, redis, coupon).await?,
        with_row,
        members,
    })
}

/// Waits until rows = `issued_quantity` = SCARD and the counts held still for 3 s, or they
/// differ but held still for 15 s (an admission without a message waits for reconciliation),
/// or `timeout` passed (the verdict then shows what differs). Store errors count as "not
/// yet".
pub(super) async fn settle(
    pool: &MySqlPool,
    redis: &AdmissionStore,
    coupon: CouponId,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        if let Ok(now) = read_counts(pool, redis, coupon).await {
            let consistent = now.rows == now.issued_quantity && now.rows == now.admitted;
            if last != Some(now) {
                last = Some(now);
                still_since = Instant::now();
            } else if still_since.elapsed() >= Duration::from_secs(if consistent { 3 } else { 15 })
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Users of `coupon`'s issue messages that one of `logs`' groups has not consumed yet, once
/// every group caught up or after `timeout` (count).
///
/// # Errors
/// The broker did not answer.
pub(super) async fn unconsumed(
    logs: &[IssueLog],
    coupon: CouponId,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = 0;
        for log in logs {
            behind += log.unpersisted_users(coupon).await?.len();
        }
        if behind == 0 || Instant::now() > deadline {
            return Ok(behind);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `coupon-api reconcile --coupon ID` once and returns its report.
///
/// # Errors
/// The pass could not run, failed, or printed no report.
pub(super) fn reconcile(
    bins: &Binaries,
    env: &[(String, String)],
    coupon: CouponId,
) -> anyhow::Result<Reconciled> {
    let output = Command::new(&bins.api)
        .args([
            "reconcile",
            "--coupon",
            &coupon.to_string(),
            "--grace-secs",
            "6",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::inherit())
        .output()
        .context("running coupon-api reconcile")?;
    if !output.status.success() {
        bail!("coupon-api reconcile exited {}", output.status);
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the reconcile report")?;
    let users = |key: &str| -> Vec<i64> {
        report[key]
            .as_array()
            .map(|users| users.iter().filter_map(serde_json::Value::as_i64).collect())
            .unwrap_or_default()
    };
    Ok(Reconciled {
        republished: users("republished"),
        readmitted: users("readmitted"),
        issued_quantity_before: report["issued_quantity_before"].as_i64().unwrap_or(-1),
        issued_quantity_after: report["issued_quantity_after"].as_i64().unwrap_or(-1),
        pending_cleared: report["pending_cleared"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0),
    })
}
