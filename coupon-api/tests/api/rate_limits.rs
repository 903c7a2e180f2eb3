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
