//! The coupon-api client of the benchmark: topics, generation jobs, redeem by code, search
//! and bulk changes, each call timed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};

use super::*;

pub(super) struct Api {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
}

impl Api {
    pub(super) async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("coupon-api answered {status}: {body}");
        }
        Ok(body)
    }

    /// A topic on a fresh unlimited policy.
    pub(super) async fn topic(&self, name: &str) -> anyhow::Result<i64> {
        let now = Utc::now();
        let policy = self
            .send(
                self.http
                    .post(format!("{}/api/v1/coupons", self.base))
                    .json(&json!({
                        "title": format!("couponrush benchmark: {name}"),
                        "coupon_type": "UNLIMITED",
                        "discount_type": "FIXED",
                        "discount_value": 1000,
                        "issue_starts_at": now - chrono::Duration::minutes(1),
                        "issue_ends_at": now + chrono::Duration::days(1),
                        "valid_days": 7,
                    })),
            )
            .await?;
        let topic = self
            .send(
                self.http
                    .post(format!("{}/api/v1/topics", self.base))
                    .json(&json!({"coupon_id": policy["id"], "name": name})),
            )
            .await?;
        topic["id"].as_i64().context("topic id")
    }

    /// Starts one generation job per entry of `counts` and polls them to completion.
    pub(super) async fn generate(
        &self,
        topic: i64,
        counts: &[i64],
        api_pid: Option<u32>,
    ) -> anyhow::Result<Generation> {
        let rss_start = api_pid.and_then(rss_mib);
        let mut rss_peak = rss_start;
        let started = Instant::now();
        let mut jobs = Vec::new();
        for count in counts {
            let job = self
                .send(
                    self.http
                        .post(format!("{}/api/v1/topics/{topic}/codes", self.base))
                        .json(&json!({"count": count})),
                )
                .await?;
            jobs.push(job["job_id"].as_i64().context("job id")?);
        }
        let total: i64 = counts.iter().sum();
        let mut last_print = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(now) = api_pid.and_then(rss_mib) {
                rss_peak = Some(rss_peak.map_or(now, |peak: f64| peak.max(now)));
            }
            let mut generated = 0;
            let mut done = true;
            for job in &jobs {
                let url = format!("{}/api/v1/topics/{topic}/code-jobs/{job}", self.base);
                let state = self.send(self.http.get(url)).await?;
                generated += state["generated"].as_i64().unwrap_or(0);
                done &= state["status"] == "DONE";
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                println!(
                    "[bench]   {generated}/{total} codes after {:.0} s ({:.0} codes/s)",
                    started.elapsed().as_secs_f64(),
                    generated as f64 / started.elapsed().as_secs_f64()
                );
            }
            if done {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(Generation {
            jobs: i64::try_from(counts.len())?,
            codes: total,
            seconds,
            codes_per_second: total as f64 / seconds,
            api_rss_mib_start: rss_start,
            api_rss_mib_peak: rss_peak,
            api_rss_mib_end: api_pid.and_then(rss_mib),
        })
    }

    pub(super) async fn bulk_delete(&self, topic: i64) -> anyhow::Result<u64> {
        let url = format!("{}/api/v1/topics/{topic}/codes", self.base);
        let answer = self.send(self.http.delete(url)).await?;
        answer["changed"].as_u64().context("changed count")
    }

    /// One redeem; its latency and whether it answered 200.
    pub(super) async fn redeem(&self, code: &str, user: i64) -> (Duration, bool) {
        let started = Instant::now();
        let answer = self
            .http
            .post(format!("{}/api/v1/codes/{code}/redeem", self.base))
            .json(&json!({"user_id": user}))
            .send()
            .await;
        let ok = match answer {
            Ok(response) => {
                let ok = response.status() == reqwest::StatusCode::OK;
                let _ = response.bytes().await;
                ok
            }
            Err(_) => false,
        };
        (started.elapsed(), ok)
    }
}
