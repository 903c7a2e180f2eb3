//! Per-user and per-address rate limits on the issue endpoint.

use crate::helpers::{assert_error, spawn_app_with};

#[tokio::test]
async fn a_user_past_their_burst_is_told_429_with_retry_after_and_is_not_admitted() {
    let app = spawn_app_with(|c| {
        c.rate_limits.rate_limits = true;
        c.rate_limits.rate_limit_user_per_sec = 1;
        c.rate_limits.rate_limit_user_burst = 2;
    })
    .await;
    let coupons = [
        app.open_coupon(5).await,
        app.open_coupon(5).await,
        app.open_coupon(5).await,
    ];

    // At once: a first publish can take a second (producer start-up), refilling the bucket.
    let (a, b, c) = tokio::join!(
        app.issue(coupons[0], 7),
        app.issue(coupons[1], 7),
        app.issue(coupons[2], 7)
    );
    let answers = [a, b, c];
    let limited: Vec<usize> = (0..3).filter(|&i| answers[i].status() == 429).collect();
    assert_eq!(
        limited.len(),
        1,
        "statuses {:?}",
        answers.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
    let [a, b, c] = answers;
    let third = [a, b, c].into_iter().nth(limited[0]).unwrap();
    let retry_after: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_error(third, 429, "RATE_LIMITED").await;

    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let refused = coupon_core::domain::CouponId::parse(coupons[limited[0]]).unwrap();
    assert_eq!(
        app.state
            .issue
            .admission
            .admitted_count(coupon_core::issue::admission::StockShards::single(refused))
            .await
            .unwrap(),
        0
    );
    // Another user has a bucket of their own.
    assert_eq!(app.issue(coupons[limited[0]], 8).await.status(), 202);
}

#[tokio::test]
async fn one_address_past_its_burst_is_told_429_whoever_the_users_are() {
    let app = spawn_app_with(|c| {
        c.rate_limits.rate_limits = true;
        c.rate_limits.rate_limit_user_per_sec = 0;
        c.rate_limits.rate_limit_ip_per_sec = 1;
        c.rate_limits.rate_limit_ip_burst = 3;
    })
    .await;
    let coupon = app.open_coupon(10).await;

    let answers = futures::future::join_all((1..=4).map(|user| app.issue(coupon, user))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();

    assert_eq!(statuses, [202, 202, 202, 429]);
}

#[tokio::test]
async fn with_limits_switched_off_a_burst_is_answered_on_its_merits() {
    let app = spawn_app_with(|c| {
        c.rate_limits.rate_limits = false;
        c.rate_limits.rate_limit_user_per_sec = 1;
        c.rate_limits.rate_limit_user_burst = 1;
    })
    .await;
    let coupon = app.open_coupon(5).await;

    assert_eq!(app.issue(coupon, 7).await.status(), 202);
    for _ in 0..5 {
        assert_error(app.issue(coupon, 7).await, 409, "ALREADY_ISSUED").await;
    }
}

/// Three anonymous reads of one policy from 127.0.0.1, each claiming another client in
/// `X-Forwarded-For`; the statuses.
async fn three_reads_claiming(
    app: &crate::helpers::TestApp,
    coupon: i64,
    clients: [&str; 3],
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for client in clients {
        let response = app
            .anonymous
            .get(app.url(&format!("/api/v1/coupons/{coupon}")))
            .header("x-forwarded-for", client)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

fn two_per_address(c: &mut coupon_api::config::ApiConfig) {
    c.rate_limits.rate_limits = true;
    c.rate_limits.rate_limit_public_per_sec = 0;
    c.rate_limits.rate_limit_ip_per_sec = 1;
    c.rate_limits.rate_limit_ip_burst = 2;
}

#[tokio::test]
async fn a_client_that_is_not_a_trusted_proxy_cannot_choose_its_address() {
    let app = spawn_app_with(two_per_address).await;
    let coupon = app.open_coupon(5).await;

    let statuses = three_reads_claiming(&app, coupon, ["6.6.6.1", "6.6.6.2", "6.6.6.3"]).await;

    assert_eq!(statuses, [200, 200, 429], "the header was believed");
}

#[tokio::test]
async fn the_clients_of_a_trusted_proxy_are_limited_one_by_one() {
    let app = spawn_app_with(|c| {
        two_per_address(c);
        c.rate_limits.trusted_proxies =
            vec![coupon_api::http::rate_limit::parse_network("127.0.0.1").unwrap()];
    })
    .await;
    let coupon = app.open_coupon(5).await;

    // The proxy appended the client's address to whatever the client sent.
    let a = "6.6.6.6, 203.0.113.1";
    let first = three_reads_claiming(&app, coupon, [a, a, a]).await;
    let other = three_reads_claiming(&app, coupon, ["203.0.113.2", "203.0.113.2", a]).await;

    assert_eq!(first, [200, 200, 429], "client .1 has a bucket of its own");
    assert_eq!(
        other,
        [200, 200, 429],
        "so does client .2; .1 is still limited"
    );
}

#[tokio::test]
async fn anonymous_reads_are_limited_per_client() {
    let app = spawn_app_with(|c| {
        c.rate_limits.rate_limits = true;
        c.rate_limits.rate_limit_public_per_sec = 1;
        c.rate_limits.rate_limit_public_burst = 2;
    })
    .await;
    let coupon = app.open_coupon(5).await;
    let read = || {
        app.anonymous
            .get(app.url(&format!("/api/v1/coupons/{coupon}")))
            .send()
    };

    let statuses = [
        read().await.unwrap().status(),
        read().await.unwrap().status(),
        read().await.unwrap().status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 429]);
    // The probes are never limited; a token holder has a bucket of its own.
    let ready = app.anonymous.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let as_user = app
        .anonymous
        .get(app.url(&format!("/api/v1/coupons/{coupon}")))
        .bearer_auth(coupon_core::testing::user_token(7))
        .send()
        .await
        .unwrap();
    assert_eq!(as_user.status(), 200);
}

/// A user token flooding reads, issue-status polls and admin calls with fresh keys, from 32
/// addresses behind the trusted proxy (so the address limit does not stop it), while the order
/// service redeems: every redeem succeeds within the stated bound (500 ms each) on pools of two
/// connections, and the flood gets no more answers past the limit than the user's limit
/// allows (burst 10, 5 a second): one token cannot drain the database.
#[tokio::test]
async fn a_flood_from_one_user_does_not_fail_or_slow_the_order_services_redeems() {
    const BOUND: std::time::Duration = std::time::Duration::from_millis(500);
    let app = spawn_app_with(|c| {
        c.rate_limits.rate_limits = true;
        c.rate_limits.trusted_proxies =
            vec![coupon_api::http::rate_limit::parse_network("127.0.0.1").unwrap()];
        c.stores.mysql.max_connections = 2;
        c.database_order_max_connections = 2;
    })
    .await;
    let coupon = app.open_coupon(100).await;
    for user in 1..=20 {
        coupon_core::testing::persist_issue(&app.state.pool, coupon, user).await;
    }
    let issues: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT id, user_id FROM coupon_issues WHERE coupon_id = ? ORDER BY user_id",
    )
    .bind(coupon)
    .fetch_all(&app.state.pool)
    .await
    .unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let flooders: Vec<_> = (0..32)
        .map(|n| {
            let (app_url, stop) = (app.base.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let token = coupon_core::testing::user_token(7);
                let mut answers = std::collections::BTreeMap::<u16, u64>::new();
                let mut i = 0u64;
                while !stop.is_cancelled() {
                    i += 1;
                    let request = match i % 3 {
                        0 => client.get(format!("{app_url}/api/v1/users/7/coupons")),
                        1 => client.get(format!("{app_url}/api/v1/coupons/{coupon}/issues/7")),
                        _ => client
                            .post(format!("{app_url}/api/v1/coupons"))
                            .header("idempotency-key", format!("flood-{n}-{i}"))
                            .json(&serde_json::json!({})),
                    };
                    let status = request
                        .bearer_auth(&token)
                        .header("x-forwarded-for", format!("203.0.113.{n}"))
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    *answers.entry(status).or_default() += 1;
                }
                answers
            })
        })
        .collect();
    let flood_started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let service = coupon_core::testing::service_token();
    let mut slowest = std::time::Duration::ZERO;
    for (issue, user) in issues {
        let started = std::time::Instant::now();
        let redeemed = app
            .anonymous
            .post(app.url(&format!("/api/v1/users/{user}/coupons/{issue}/redeem")))
            .bearer_auth(&service)
            .json(&serde_json::json!({"order_id": format!("flood-order-{user}"), "order_amount": 30_000}))
            .send()
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            redeemed.status(),
            200,
            "user {user}: {}",
            redeemed.text().await.unwrap()
        );
    }
    stop.cancel();
    let flood_secs = flood_started.elapsed().as_secs() + 1;
    let mut flood = std::collections::BTreeMap::<u16, u64>::new();
    for flooder in flooders {
        for (status, n) in flooder.await.unwrap() {
            *flood.entry(status).or_default() += n;
        }
    }

    assert!(
        slowest < BOUND,
        "the slowest redeem took {slowest:?}; the flood got {flood:?}"
    );
    let let_in: u64 = flood
        .iter()
        .filter(|(status, _)| **status != 429)
        .map(|(_, n)| n)
        .sum();
    assert!(
        let_in <= 10 + 5 * flood_secs,
        "{let_in} flood requests let in over {flood_secs} s: {flood:?}"
    );
}
