//! End to end: coupon-api and coupon-consumer in this process, talking to the real MySQL/MariaDB,
//! Redis and Kafka-protocol broker, raced through real HTTP.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

mod common;

use common::Stack;
use coupon_core::auth::TokenSigner;
use coupon_core::domain::ShardCount;
use coupon_core::issue::admission::StockShards;
use coupon_core::testing;
use coupon_demo::RacePlan;

const STOCK: i64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_requests_from_five_thousand_users_issue_exactly_the_stock() {
    let plan = RacePlan {
        requests: 10_000,
        users: 5_000,
        concurrency: 200,
        seed: 42,
    };
    race_for_exactly_the_stock("e2e", STOCK, 1, plan).await;
}

/// Issue 16's test of stock shards, end to end: K = 4, stock 1,000, 10,000 users racing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_users_race_for_1000_units_in_four_stock_shards_exactly() {
    let plan = RacePlan {
        requests: 12_000,
        users: 10_000,
        concurrency: 200,
        seed: 7,
    };
    race_for_exactly_the_stock("e2e-shards", 1_000, 4, plan).await;
}

/// Races `plan` for a coupon of `stock` units in `shards` stock shards through coupon-api,
/// waits for coupon-consumer to persist, and checks every promise against the rows.
async fn race_for_exactly_the_stock(name: &str, stock: i64, shards: u16, plan: RacePlan) {
    // One client address: the per-address limit would refuse most of the race.
    let stack = Stack::start(false, name).await;
    let (base, state) = (&stack.base, &stack.state);

    let client = coupon_demo::http_client(plan.concurrency).unwrap();
    let signer = TokenSigner::hs256(testing::JWT_SECRET);
    let coupon = coupon_demo::create_coupon(&client, base, &signer, stock, shards)
        .await
        .unwrap();
    let report = coupon_demo::race(&client, base, &signer, coupon, plan)
        .await
        .unwrap();
    coupon_demo::wait_until_drained(&state.pool, coupon, stock, Duration::from_secs(180))
        .await
        .unwrap();
    let verification =
        coupon_demo::verify(&state.pool, &state.issue.admission, coupon, stock, &report)
            .await
            .unwrap();

    println!("{verification}");
    assert_eq!(report.requests, plan.requests);
    assert_eq!(verification.accepted, stock, "202 answers");
    assert_eq!(verification.rows, stock, "rows in coupon_issues");
    assert_eq!(
        verification.distinct_users, stock,
        "no (coupon, user) twice"
    );
    assert_eq!(verification.issued_quantity, stock);
    assert_eq!(verification.admitted, stock, "SCARD");
    assert_eq!(
        verification.rows_without_admission, 0,
        "every row belongs to a member of the admission set (docs/invariants.md 4)"
    );
    assert_eq!(
        verification.accepted_without_row, 0,
        "every accepted user has a row"
    );
    assert_eq!(verification.row_without_accept, 0, "no other user has one");
    assert_eq!(verification.unexpected, 0, "answers: {:?}", report.answers);
    assert_eq!(
        verification.already_issued
            + verification.in_progress
            + verification.sold_out
            + report.accepted.len(),
        plan.requests,
        "every request answered 202, ALREADY_ISSUED, ISSUE_IN_PROGRESS or SOLD_OUT"
    );
    assert!(verification.already_issued > 0, "the plan repeats users");
    // Every shard admitted users, and none has a unit left.
    let mut redis = stack
        .stores
        .connect_redis(Duration::from_secs(5))
        .await
        .unwrap();
    let keys = state.issue.admission.keys();
    for shard in StockShards::new(coupon, ShardCount::parse(shards).unwrap()).all() {
        let (bound, members): (i64, i64) = redis::pipe()
            .get(keys.stock(shard))
            .scard(keys.admission_set(shard))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(members > 0, "shard {} admitted nobody", shard.index);
        assert_eq!(bound, members, "shard {} has units left", shard.index);
    }

    stack.stop().await;
}

/// Generates `count` codes of a new topic for `coupon` through the API; returns them.
async fn generate_codes(
    client: &reqwest::Client,
    base: &str,
    state: &coupon_api::state::AppState,
    coupon: coupon_core::domain::CouponId,
    count: i64,
) -> Vec<String> {
    let admin = testing::admin_token();
    let topic: serde_json::Value = client
        .post(format!("{base}/api/v1/topics"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"coupon_id": coupon.get(), "name": "influencer drop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let topic = topic["id"].as_i64().unwrap();
    let job: serde_json::Value = client
        .post(format!("{base}/api/v1/topics/{topic}/codes"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"count": count}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = job["job_id"].as_i64().unwrap();
    let url = format!("{base}/api/v1/topics/{topic}/code-jobs/{job}");
    testing::eventually("the generation job", Duration::from_secs(60), || async {
        let job: serde_json::Value = client
            .get(&url)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (job["status"] == "DONE").then_some(())
    })
    .await;
    sqlx::query_scalar("SELECT code FROM coupon_codes WHERE topic_id = ? ORDER BY id")
        .bind(topic)
        .fetch_all(&state.pool)
        .await
        .unwrap()
}

/// One unit pool for code redeems and issue requests: a 100-unit drop with a topic of 150
/// codes; 150 users redeem a code each while 300 other users, and 50 of the code users, call
/// the issue endpoint, all at once. Every success answer (200 for a code, 202 for an issue) is
/// a promise: exactly the stock of rows, each owner told once, nobody else told, no 5xx, and a
/// reconciliation pass after the drain finds nothing to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn code_redeems_and_issue_requests_share_one_stock() {
    const STOCK: i64 = 100;
    let stack = Stack::start(false, "e2e").await;
    let (base, state) = (stack.base.as_str(), &stack.state);
    let client = coupon_demo::http_client(500).unwrap();
    let signer = TokenSigner::hs256(testing::JWT_SECRET);
    let coupon = coupon_demo::create_coupon(&client, base, &signer, STOCK, 1)
        .await
        .unwrap();
    let codes = generate_codes(&client, base, state, coupon, 150).await;
    assert_eq!(codes.len(), 150);

    // (user, what it called, status)
    let answer = |user: i64, what: &'static str, url: String| {
        let client = &client;
        async move {
            let response = client
                .post(url)
                .bearer_auth(testing::user_token(user))
                .send()
                .await
                .unwrap();
            (user, what, response.status().as_u16())
        }
    };
    let code_users = codes
        .iter()
        .zip(1_i64..)
        .map(|(code, user)| answer(user, "code", format!("{base}/api/v1/codes/{code}/redeem")));
    let issue_users = (1_001..=1_300).chain(1..=50).map(|user| {
        answer(
            user,
            "issue",
            format!("{base}/api/v1/coupons/{coupon}/issues"),
        )
    });
    let (by_code, by_issue) = tokio::join!(
        futures::future::join_all(code_users),
        futures::future::join_all(issue_users)
    );
    let answers: Vec<(i64, &str, u16)> = by_code.into_iter().chain(by_issue).collect();

    let failed: Vec<_> = answers.iter().filter(|(_, _, s)| *s >= 500).collect();
    assert!(failed.is_empty(), "5xx answers: {failed:?}");
    let mut told: std::collections::BTreeMap<i64, usize> = Default::default();
    for (user, _, status) in &answers {
        if matches!(status, 200 | 202) {
            *told.entry(*user).or_default() += 1;
        }
    }
    let promised: i64 = answers
        .iter()
        .filter(|(_, _, s)| matches!(s, 200 | 202))
        .count()
        .try_into()
        .unwrap();
    assert!(
        promised <= STOCK,
        "{promised} success answers for {STOCK} units"
    );
    // 450 distinct users for 100 units: the drop sells out.
    coupon_demo::wait_until_drained(&state.pool, coupon, STOCK, Duration::from_secs(60))
        .await
        .unwrap();
    let holdings =
        coupon_demo::exactness::Holdings::read(&state.pool, &state.issue.admission, coupon)
            .await
            .unwrap();
    let owners: std::collections::BTreeSet<i64> = holdings.row_users.iter().copied().collect();
    assert_eq!(holdings.rows(), STOCK, "rows");
    assert_eq!(holdings.issued_quantity, STOCK, "issued_quantity");
    assert_eq!(holdings.admitted, STOCK, "SCARD");
    assert_eq!(owners.len(), holdings.row_users.len(), "nobody twice");
    let told_users: std::collections::BTreeSet<i64> = told.keys().copied().collect();
    assert_eq!(told_users, owners, "the users told success are the owners");
    assert!(
        told.values().all(|n| *n == 1),
        "an owner told twice: {told:?}"
    );
    assert!(
        answers.iter().all(|(_, _, s)| matches!(s, 200 | 202 | 409)),
        "{answers:?}"
    );

    let log = coupon_core::issue::recovery::IssueLog::new(&stack.stores, &stack.group);
    let report = coupon_core::issue::reconciliation::Reconciler {
        pool: &state.pool,
        admission: &state.issue.admission,
        log: &log,
        publisher: &state.issue.publisher,
        grace: Duration::from_millis(200),
        dry_run: true,
    }
    .reconcile(StockShards::single(coupon))
    .await
    .unwrap();
    assert!(!report.needed_repair(), "{report:?}");

    stack.stop().await;
}
