//! Several coupon-api instances on one set of stores, as behind a load balancer: each keeps its
//! own memory (admitted users, sold-out holders, policy cache), and that memory must stay
//! correct when another instance admitted the user. Policy changes reaching every instance are
//! in `admin.rs`. Under `REDIS_MODE=cluster` (the second run of `make test`) the instances share
//! a Redis Cluster.

use coupon_api::issue::sold_out::SoldOut;
use std::collections::BTreeMap;
use std::time::Duration;

use coupon_core::domain::CouponId;
use coupon_core::testing;
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

/// `n` instances on the same database, Redis prefix and topics.
async fn instances(n: usize) -> Vec<TestApp> {
    let first = spawn_app().await;
    let stores = first.stores.clone();
    let mut apps = vec![first];
    for _ in 1..n {
        let stores = stores.clone();
        apps.push(spawn_app_with(move |config| config.stores = stores).await);
    }
    apps
}

/// `SCARD` of `coupon`'s admission set, as `app` reads it.
async fn admitted(app: &TestApp, coupon: i64) -> i64 {
    let coupon = CouponId::parse(coupon).unwrap();
    app.admitted_count(coupon).await
}

#[tokio::test]
async fn a_race_spread_over_three_instances_admits_exactly_the_stock_and_nobody_twice() {
    let apps = instances(3).await;
    let id = apps[0].open_coupon(40).await;
    // 150 users, each asking twice, on two different instances, all at once.
    let requests: Vec<(usize, i64)> = (1..=150)
        .flat_map(|user: i64| {
            let first = usize::try_from(user).unwrap() % 3;
            [(first, user), ((first + 1) % 3, user)]
        })
        .collect();

    let answers: Vec<(i64, u16, String)> = futures::stream::iter(requests)
        .map(|(instance, user)| {
            let app = &apps[instance];
            async move {
                let response = app.issue(id, user).await;
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                let code = body["code"].as_str().unwrap_or("").to_owned();
                (user, status, code)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    let mut accepted: BTreeMap<i64, usize> = BTreeMap::new();
    for (user, status, code) in &answers {
        match status {
            202 => *accepted.entry(*user).or_default() += 1,
            409 => assert!(
                ["ALREADY_ISSUED", "ISSUE_IN_PROGRESS", "SOLD_OUT"].contains(&code.as_str()),
                "user {user}: 409 {code}"
            ),
            other => panic!("user {user}: unexpected {other} {code}"),
        }
    }
    assert_eq!(accepted.len(), 40, "202 answers for exactly the stock");
    assert!(accepted.values().all(|&n| n == 1), "nobody accepted twice");
    assert_eq!(admitted(&apps[1], id).await, 40);
}

#[tokio::test]
async fn a_user_admitted_on_one_instance_is_refused_on_the_others() {
    let apps = instances(3).await;
    let id = apps[0].open_coupon(10).await;
    // b and c read the policy first, so each has it cached before a admits anyone.
    assert_eq!(apps[1].issue(id, 2).await.status(), 202);
    assert_eq!(apps[2].issue(id, 3).await.status(), 202);

    assert_eq!(apps[0].issue(id, 1).await.status(), 202);

    for app in &apps[1..] {
        // Not in b's or c's memory: their answer comes from the admission script, which sees
        // a's admission (pending until a's background clearing of the mark, then settled).
        let response = app.issue(id, 1).await;
        assert_eq!(response.status(), 409);
        let body: Value = response.json().await.unwrap();
        assert!(
            ["ALREADY_ISSUED", "ISSUE_IN_PROGRESS"].contains(&body["code"].as_str().unwrap()),
            "{body}"
        );
    }
    testing::eventually(
        "the pending mark cleared by a",
        Duration::from_secs(5),
        || async {
            let response = apps[2].issue(id, 1).await;
            let body: Value = response.json().await.unwrap();
            (body["code"] == "ALREADY_ISSUED").then_some(())
        },
    )
    .await;
    assert_eq!(admitted(&apps[0], id).await, 3);
}

#[tokio::test]
async fn a_sell_out_broadcast_reaches_every_instance_and_each_answers_from_its_copy() {
    let apps = instances(3).await;
    let id = apps[0].open_coupon(3).await;
    for (user, app) in (1..=3).zip(&apps) {
        assert_eq!(app.issue(id, user).await.status(), 202);
    }
    let coupon = CouponId::parse(id).unwrap();

    apps[0].announce_sold_out(coupon).await;

    for app in &apps {
        let holders = testing::eventually(
            "the holders copied on every instance",
            Duration::from_secs(5),
            || async {
                app.state
                    .issue
                    .sold_out
                    .get(coupon)
                    .await
                    .and_then(SoldOut::holders)
            },
        )
        .await;
        assert_eq!(
            holders.len(),
            3,
            "each copy holds the users of every instance"
        );
    }
    // User 1 was admitted by the first instance: the third answers from its own copy.
    assert_error(apps[2].issue(id, 1).await, 409, "ALREADY_ISSUED").await;
    assert_error(apps[1].issue(id, 4).await, 409, "SOLD_OUT").await;
}
