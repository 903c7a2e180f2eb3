//! `coupon-demo`: the race load client and the end-to-end verification behind `make demo`
//! and the end-to-end test.
//!
//! [`race`] fires issue requests through real HTTP ([`race_across`] spreads them over several
//! coupon-api instances), [`wait_until_drained`] waits for the consumer, and [`verify`] reads
//! MySQL and Redis directly and checks that every count equals the stock and that exactly the
//! users answered 202 hold a row. [`exactness`] holds those checks, and also the one
//! `coupon-demo verify` runs after another load tool's race. [`services`] starts the
//! coupon-api and coupon-consumer processes the demo races (through coupon-harness).

pub mod chaos;
pub mod chart;
pub mod exactness;
pub mod services;

pub use exactness::{row_count, verify, wait_until_drained, Verification};

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coupon_core::auth::{Role, TokenSigner};
use coupon_core::domain::CouponId;
use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// Shape of a race: `requests` requests from `users` distinct users (ids `1..=users`, each at
/// least once, the rest repeats drawn at random), `concurrency` in flight at once.
#[derive(Debug, Clone, Copy)]
pub struct RacePlan {
    /// Requests fired (count); at least `users`.
    pub requests: usize,
    /// Distinct users (count).
    pub users: usize,
    /// Requests in flight at once (count).
    pub concurrency: usize,
    /// Seed of the order and of the repeats, so a run can be replayed.
    pub seed: u64,
}

impl RacePlan {
    /// The user id of every request, in firing order.
    ///
    /// # Errors
    /// `requests < users` or `users == 0`.
    pub fn user_ids(&self) -> anyhow::Result<Vec<i64>> {
        if self.users == 0 || self.requests < self.users {
            bail!("a race needs at least one user and at least as many requests as users");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let users = i64::try_from(self.users).context("too many users")?;
        let mut ids: Vec<i64> = (1..=users).collect();
        ids.extend((self.users..self.requests).map(|_| rng.random_range(1..=users)));
        ids.shuffle(&mut rng);
        Ok(ids)
    }
}

/// What the race was answered.
#[derive(Debug, Default)]
pub struct RaceReport {
    /// Users answered `202 Accepted`.
    pub accepted: HashSet<i64>,
    /// Answers counted by `"<status> <code>"`, e.g. `"409 SOLD_OUT"` (202s included).
    pub answers: BTreeMap<String, usize>,
    /// Requests fired (count).
    pub requests: usize,
    /// Wall time of the race.
    pub elapsed: Duration,
    /// Per-request latencies, sorted ascending.
    pub latencies: Vec<Duration>,
    /// Every answer's time since the race started, with its `"<status> <code>"` label, in
    /// answer order (the demo's chart counts them per 100 ms).
    pub answered: Vec<(Duration, String)>,
}

impl RaceReport {
    /// Answers with this `"<status> <code>"` label (count).
    pub fn count(&self, label: &str) -> usize {
        self.answers.get(label).copied().unwrap_or(0)
    }

    /// Answers that are none of 202, 409 `ALREADY_ISSUED`, `ISSUE_IN_PROGRESS` or `SOLD_OUT`
    /// (count).
    pub fn unexpected(&self) -> usize {
        const EXPECTED: [&str; 4] = [
            "202 ACCEPTED",
            "409 ALREADY_ISSUED",
            "409 ISSUE_IN_PROGRESS",
            "409 SOLD_OUT",
        ];
        self.answers
            .iter()
            .filter(|(label, _)| !EXPECTED.contains(&label.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Latency at quantile `q` (0.0–1.0), nearest rank.
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

#[derive(Deserialize)]
struct Created {
    id: i64,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
}

/// Creates a first-come-first-served coupon with `stock` units split into `stock_shards`
/// Redis stock shards (1: unsharded), open from a minute ago for an hour, through
/// `POST {base}/api/v1/coupons`; returns its id.
///
/// # Errors
/// The API is unreachable or did not answer 201.
pub async fn create_coupon(
    client: &reqwest::Client,
    base: &str,
    signer: &TokenSigner,
    stock: i64,
    stock_shards: u16,
) -> anyhow::Result<CouponId> {
    let now = chrono::Utc::now();
    let body = serde_json::json!({
        "title": format!("couponrush demo: {stock} units"),
        "coupon_type": "FIRST_COME_FIRST_SERVED",
        "total_quantity": stock,
        "discount_type": "FIXED",
        "discount_value": 5000,
        "min_order_amount": 30000,
        "issue_starts_at": now - chrono::Duration::minutes(1),
        "issue_ends_at": now + chrono::Duration::hours(1),
        "valid_days": 7,
        "stock_shards": stock_shards,
    });
    let response = client
        .post(format!("{base}/api/v1/coupons"))
        .bearer_auth(signer.mint("coupon-demo", Role::Admin, 600)?)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "creating the coupon answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let created: Created = response.json().await?;
    Ok(CouponId::parse(created.id)?)
}

/// Fires the race against `POST {base}/api/v1/coupons/{coupon}/issues` and tallies the answers.
/// Each request carries its user's own token, minted by `signer`, and no body.
///
/// # Errors
/// The plan is inconsistent, or a token could not be signed. Transport failures are tallied as `"000 TRANSPORT"`, not raised.
pub async fn race(
    client: &reqwest::Client,
    base: &str,
    signer: &TokenSigner,
    coupon: CouponId,
    plan: RacePlan,
) -> anyhow::Result<RaceReport> {
    race_across(client, &[base], signer, coupon, plan).await
}

/// [`race`] spread over several coupon-api instances behind `bases`, round-robin: request `i`
/// goes to `bases[i % bases.len()]`, so each instance admits its share of the same coupon and
/// only the shared Redis script keeps the count exact.
///
/// # Errors
/// `bases` is empty, the plan is inconsistent, or a token could not be signed. Transport
/// failures are tallied as `"000 TRANSPORT"`, not raised.
pub async fn race_across(
    client: &reqwest::Client,
    bases: &[impl AsRef<str>],
    signer: &TokenSigner,
    coupon: CouponId,
    plan: RacePlan,
) -> anyhow::Result<RaceReport> {
    if bases.is_empty() {
        bail!("a race needs at least one coupon-api base URL");
    }
    let ids = plan.user_ids()?;
    let tokens = ids
        .iter()
        .map(|user| Ok((*user, signer.mint(&user.to_string(), Role::User, 3_600)?)))
        .collect::<anyhow::Result<BTreeMap<i64, String>>>()?;
    let urls: Vec<String> = bases
        .iter()
        .map(|base| format!("{}/api/v1/coupons/{coupon}/issues", base.as_ref()))
        .collect();
    let started = Instant::now();
    let answers: Vec<(i64, String, Duration, Duration)> =
        futures::stream::iter(ids.into_iter().enumerate())
            .map(|(i, user)| {
                let request = client
                    .post(&urls[i % urls.len()])
                    .bearer_auth(&tokens[&user]);
                async move {
                    let sent = Instant::now();
                    let label = match request.send().await {
                        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                            "202 ACCEPTED".to_owned()
                        }
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let code = response
                                .json::<ErrorBody>()
                                .await
                                .map_or_else(|_| "?".to_owned(), |b| b.code);
                            format!("{status} {code}")
                        }
                        Err(_) => "000 TRANSPORT".to_owned(),
                    };
                    (user, label, sent.elapsed(), started.elapsed())
                }
            })
            .buffer_unordered(plan.concurrency.max(1))
            .collect()
            .await;
    let mut report = RaceReport {
        requests: answers.len(),
        elapsed: started.elapsed(),
        ..RaceReport::default()
    };
    for (user, label, latency, answered_at) in answers {
        if label == "202 ACCEPTED" {
            report.accepted.insert(user);
        }
        *report.answers.entry(label.clone()).or_default() += 1;
        report.latencies.push(latency);
        report.answered.push((answered_at, label));
    }
    report.latencies.sort_unstable();
    Ok(report)
}

/// An HTTP client sized for `concurrency` requests in flight.
///
/// # Errors
/// The TLS-less client could not be built (never expected).
pub fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_has_every_user_at_least_once_and_the_right_length() {
        let plan = RacePlan {
            requests: 1_000,
            users: 400,
            concurrency: 1,
            seed: 7,
        };
        let ids = plan.user_ids().unwrap();
        assert_eq!(ids.len(), 1_000);
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 400);
        assert!(ids.iter().all(|&u| (1..=400).contains(&u)));
    }

    #[test]
    fn a_plan_with_fewer_requests_than_users_is_refused() {
        assert!(RacePlan {
            requests: 10,
            users: 20,
            concurrency: 1,
            seed: 0
        }
        .user_ids()
        .is_err());
    }

    #[test]
    fn latency_quantiles_use_the_nearest_rank() {
        let report = RaceReport {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..RaceReport::default()
        };
        assert_eq!(report.latency(0.5), Duration::from_millis(50));
        assert_eq!(report.latency(0.99), Duration::from_millis(99));
        assert_eq!(report.latency(1.0), Duration::from_millis(100));
    }
}
