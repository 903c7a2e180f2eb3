//! What the latency steps measure: random unused codes to redeem, the search shapes, and
//! the hot table's size.

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::latency::Latencies;

use super::*;

/// `n` distinct random codes of `topic`.
pub(super) async fn sample_codes(
    pool: &MySqlPool,
    topic: i64,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let codes: Vec<String> = sqlx::query_scalar(
        "SELECT code FROM coupon_codes WHERE topic_id = ? AND redeemed_by IS NULL ORDER BY RAND() LIMIT ?",
    )
    .bind(topic)
    .bind(u32::try_from(n)?)
    .fetch_all(pool)
    .await?;
    if codes.len() < n {
        bail!("topic {topic} has only {} unused codes", codes.len());
    }
    Ok(codes)
}

pub(super) struct Plan<'a> {
    pub(super) api: &'a Api,
    pub(super) pool: &'a MySqlPool,
    pub(super) live: i64,
    pub(super) searches: usize,
    pub(super) concurrency: usize,
    pub(super) next_user: i64,
}

impl Plan<'_> {
    pub(super) fn users(&mut self, n: usize) -> std::ops::Range<i64> {
        let first = self.next_user;
        self.next_user += i64::try_from(n).unwrap_or(i64::MAX);
        first..self.next_user
    }

    /// Redeems `codes` with `clients` in flight; latencies, failures and rate (per second).
    pub(super) async fn redeem_all(
        &mut self,
        codes: Vec<String>,
        clients: usize,
    ) -> (Latencies, usize, f64) {
        let users = self.users(codes.len());
        let api = self.api;
        let started = Instant::now();
        let answers: Vec<(Duration, bool)> = futures::stream::iter(codes.into_iter().zip(users))
            .map(|(code, user)| async move { api.redeem(&code, user).await })
            .buffer_unordered(clients.max(1))
            .collect()
            .await;
        let rate = answers.len() as f64 / started.elapsed().as_secs_f64();
        let mut latencies = Latencies::default();
        let mut failures = 0;
        for (took, ok) in answers {
            latencies.record(took);
            failures += usize::from(!ok);
        }
        (latencies, failures, rate)
    }

    /// Redeems `codes` one after another until `stop` is cancelled (or the codes run out).
    pub(super) async fn redeem_until(
        &mut self,
        codes: Vec<String>,
        stop: CancellationToken,
    ) -> anyhow::Result<Latencies> {
        let users = self.users(codes.len());
        let mut latencies = Latencies::default();
        for (code, user) in codes.iter().zip(users) {
            if stop.is_cancelled() {
                return Ok(latencies);
            }
            let (took, ok) = self.api.redeem(code, user).await;
            if !ok {
                bail!("a live code failed to redeem during the bulk delete");
            }
            latencies.record(took);
        }
        Ok(latencies)
    }

    /// Redeem and search latencies now.
    pub(super) async fn measure(
        &mut self,
        sequential: Vec<String>,
        concurrent: Vec<String>,
    ) -> anyhow::Result<Measurement> {
        let (hot_codes, hot_table_mib) = hot_table(self.pool).await?;
        let (one, f1, _) = self.redeem_all(sequential, 1).await;
        let (many, f2, rate) = self.redeem_all(concurrent, self.concurrency).await;
        let mut searches = Vec::new();
        for shape in SearchShape::ALL {
            searches.push((
                shape.label().to_owned(),
                self.search(shape).await?.summary(),
            ));
        }
        Ok(Measurement {
            hot_codes,
            hot_table_mib,
            redeem_1_client: one.summary(),
            redeem_concurrent: many.summary(),
            concurrent_clients: self.concurrency,
            redeem_concurrent_per_second: rate,
            redeem_failures: f1 + f2,
            searches,
        })
    }

    /// `self.searches` searches of one shape, 4 in flight.
    pub(super) async fn search(&self, shape: SearchShape) -> anyhow::Result<Latencies> {
        let (min_id, max_id, first, last): (i64, i64, DateTime<Utc>, DateTime<Utc>) =
            sqlx::query_as(
                "SELECT MIN(id), MAX(id), MIN(created_at), MAX(created_at) FROM coupon_codes WHERE topic_id = ?",
            )
            .bind(self.live)
            .fetch_one(self.pool)
            .await?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_121);
        let base = format!("{}/api/v1/topics/{}/codes", self.api.base, self.live);
        let urls: Vec<String> = (0..self.searches)
            .map(|_| {
                let cursor = rng.random_range(min_id..=max_id);
                let span = (last - first).num_milliseconds().max(1);
                let from = first + chrono::Duration::milliseconds(rng.random_range(0..span));
                shape.url(&base, cursor, from)
            })
            .collect();
        let api = self.api;
        let answers: Vec<anyhow::Result<Duration>> = futures::stream::iter(urls)
            .map(|url| async move {
                let started = Instant::now();
                api.send(api.http.get(url)).await?;
                Ok(started.elapsed())
            })
            .buffer_unordered(4)
            .collect()
            .await;
        let mut latencies = Latencies::default();
        for took in answers {
            latencies.record(took?);
        }
        Ok(latencies)
    }
}

/// Codes in `coupon_codes` and the table's size on disk (MiB, InnoDB's estimate).
pub(super) async fn hot_table(pool: &MySqlPool) -> anyhow::Result<(i64, f64)> {
    let codes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_codes")
        .fetch_one(pool)
        .await?;
    let bytes: Option<u64> = sqlx::query_scalar(
        "SELECT CAST(data_length + index_length AS UNSIGNED) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 'coupon_codes'",
    )
    .fetch_optional(pool)
    .await?;
    Ok((codes, bytes.unwrap_or(0) as f64 / 1_048_576.0))
}

/// The filter shapes searched.
#[derive(Debug, Clone, Copy)]
pub(super) enum SearchShape {
    FirstPage,
    Active,
    Redeemed,
    CreatedWindow,
    DeepPage,
}

impl SearchShape {
    pub(super) const ALL: [Self; 5] = [
        Self::FirstPage,
        Self::Active,
        Self::Redeemed,
        Self::CreatedWindow,
        Self::DeepPage,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::FirstPage => "first page, no filter",
            Self::Active => "status=ACTIVE",
            Self::Redeemed => "redeemed=true",
            Self::CreatedWindow => "created_from/created_to (1 s window)",
            Self::DeepPage => "status=ACTIVE from a random cursor",
        }
    }

    pub(super) fn url(self, base: &str, cursor: i64, from: DateTime<Utc>) -> String {
        let stamp = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        match self {
            Self::FirstPage => format!("{base}?limit=50"),
            Self::Active => format!("{base}?status=ACTIVE&limit=50"),
            Self::Redeemed => format!("{base}?redeemed=true&limit=50"),
            Self::CreatedWindow => format!(
                "{base}?created_from={}&created_to={}&limit=50",
                stamp(from),
                stamp(from + chrono::Duration::seconds(1))
            ),
            Self::DeepPage => format!("{base}?status=ACTIVE&cursor={cursor}&limit=50"),
        }
    }
}
