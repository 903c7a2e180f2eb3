//! A user's coupons, policy search and stats.

use chrono::Utc;
use coupon_core::testing;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, TestApp};

async fn persist(app: &TestApp, coupon: i64, user: i64) {
    testing::persist_issue(&app.state.pool, coupon, user).await;
}

async fn get(app: &TestApp, path: &str) -> Value {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

fn ids(page: &Value, field: &str) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[field].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_users_coupons_page_newest_first_by_cursor() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let coupon = app.open_coupon(10).await;
        persist(&app, coupon, 7).await;
        persist(&app, coupon, 8).await;
    }

    let first = get(&app, "/api/v1/users/7/coupons?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = get(
        &app,
        &format!("/api/v1/users/7/coupons?limit=2&cursor={cursor}"),
    )
    .await;
    let cursor = second["next_cursor"].as_str().unwrap().to_owned();
    let last = get(
        &app,
        &format!("/api/v1/users/7/coupons?limit=2&cursor={cursor}"),
    )
    .await;

    let all: Vec<i64> = [&first, &second, &last]
        .iter()
        .flat_map(|p| ids(p, "coupon_issue_id"))
        .collect();
    assert_eq!(all.len(), 5);
    assert!(
        all.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats: {all:?}"
    );
    assert_eq!(last["next_cursor"], Value::Null);
    assert_eq!(
        first["items"][0]["title"], "test drop",
        "policy display fields come along"
    );
    assert_eq!(first["items"][0]["status"], "ISSUED");
}

#[tokio::test]
async fn a_users_coupons_filter_by_status() {
    let app = spawn_app().await;
    let used = app.open_coupon(10).await;
    let kept = app.open_coupon(10).await;
    persist(&app, used, 7).await;
    persist(&app, kept, 7).await;
    sqlx::query("UPDATE coupon_issues SET status = 'USED' WHERE coupon_id = ?")
        .bind(used)
        .execute(&app.state.pool)
        .await
        .unwrap();

    let page = get(&app, "/api/v1/users/7/coupons?status=USED").await;

    assert_eq!(ids(&page, "coupon_id"), vec![used]);
}

#[tokio::test]
async fn bad_list_parameters_are_validation_failed() {
    let app = spawn_app().await;

    for query in [
        "status=LOST",
        "limit=0",
        "limit=101",
        "cursor=abc",
        "limit=x",
        "colour=red",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/api/v1/users/7/coupons?{query}")))
            .send()
            .await
            .unwrap();
        assert_error(response, 422, "VALIDATION_FAILED").await;
    }
}

#[tokio::test]
async fn the_user_coupon_list_is_served_by_an_index() {
    let app = spawn_app().await;

    let plan = sqlx::query(
        "EXPLAIN SELECT id FROM coupon_issues WHERE user_id = 7 AND status = 'ISSUED' AND id < 100 ORDER BY id DESC LIMIT 21",
    )
    .fetch_one(&app.state.pool)
    .await
    .unwrap();
    let key: Option<String> = sqlx::Row::try_get(&plan, "key").unwrap();

    assert_eq!(key.as_deref(), Some("idx_coupon_issues_user_status"));
}

#[tokio::test]
async fn policies_can_be_searched_by_title_status_and_window() {
    let app = spawn_app().await;
    let mut spring = testing::open_policy(10);
    spring.title = "Spring 100% sale".into();
    let spring = app.create_policy(&spring).await["id"].as_i64().unwrap();
    let mut autumn = testing::open_policy(10);
    autumn.title = "Autumn sale".into();
    let autumn = app.create_policy(&autumn).await["id"].as_i64().unwrap();
    let now = Utc::now();
    let mut later = testing::policy_with_window(
        Some(5),
        now + chrono::Duration::days(1),
        now + chrono::Duration::days(2),
    );
    later.title = "Later sale".into();
    let later = app.create_policy(&later).await["id"].as_i64().unwrap();
    app.client
        .post(app.url(&format!("/api/v1/coupons/{autumn}/suspend")))
        .send()
        .await
        .unwrap();

    let sale = get(&app, "/api/v1/coupons?q=sale").await;
    let percent = get(&app, "/api/v1/coupons?q=100%25").await;
    let suspended = get(&app, "/api/v1/coupons?status=SUSPENDED").await;
    let active_now = get(
        &app,
        &format!(
            "/api/v1/coupons?active_at={}",
            now.to_rfc3339().replace('+', "%2B")
        ),
    )
    .await;
    let paged = get(&app, "/api/v1/coupons?limit=2").await;

    assert_eq!(ids(&sale, "id"), vec![later, autumn, spring]);
    assert_eq!(ids(&percent, "id"), vec![spring], "% is matched literally");
    assert_eq!(ids(&suspended, "id"), vec![autumn]);
    assert_eq!(ids(&active_now, "id"), vec![autumn, spring]);
    assert_eq!(ids(&paged, "id"), vec![later, autumn]);
    assert_eq!(paged["next_cursor"], autumn.to_string());
}

#[tokio::test]
async fn stats_count_every_state_of_a_coupon() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(10).await;
    for user in 1..=3 {
        assert_eq!(app.issue(coupon, user).await.status(), 202);
    }
    persist(&app, coupon, 1).await;
    persist(&app, coupon, 2).await;
    let issue: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_issues WHERE coupon_id = ? AND user_id = 1")
            .bind(coupon)
            .fetch_one(&app.state.pool)
            .await
            .unwrap();
    let redeemed = app
        .client
        .post(app.url(&format!("/api/v1/users/1/coupons/{issue}/redeem")))
        .json(&json!({"order_id": "o-1", "order_amount": 50_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(redeemed.status(), 200);

    let stats = get(&app, &format!("/api/v1/coupons/{coupon}/stats")).await;

    assert_eq!(stats["total"], 10);
    assert_eq!(stats["admitted"], 3);
    assert_eq!(stats["issued"], 2);
    assert_eq!(stats["pending"], 1);
    assert_eq!(stats["available"], 1);
    assert_eq!(stats["used"], 1);
    assert_eq!(stats["reserved"], 0);
    assert_eq!(stats["expired"], 0);
    assert_eq!(stats["remaining"], 7);
    assert_eq!(stats["redemption_rate"], 0.5);
    let missing = app
        .client
        .get(app.url("/api/v1/coupons/99999/stats"))
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "COUPON_NOT_FOUND").await;
}

#[tokio::test]
async fn a_poll_flood_of_a_public_policy_read_reaches_the_stores_once_a_second() {
    // Every GET once read MySQL and Redis: during a drop, shoppers refreshing the coupon page
    // landed on the stores per request. A change written behind the API's back (no
    // announcement) shows only once the one-second cache entry is gone.
    let app = spawn_app().await;
    let id = app.open_coupon(10).await;
    let path = format!("/api/v1/coupons/{id}");
    let first = get(&app, &path).await;
    let started = std::time::Instant::now();
    sqlx::query("UPDATE coupons SET title = 'changed behind the API' WHERE id = ?")
        .bind(id)
        .execute(&app.state.pool)
        .await
        .unwrap();

    let polls = futures::future::join_all((0..50).map(|_| get(&app, &path))).await;
    if started.elapsed() < coupon_api::policies::public_reads::PUBLIC_READ_TTL {
        for poll in &polls {
            assert_eq!(
                poll["title"], first["title"],
                "served from the stores, not the cache"
            );
        }
    }
    tokio::time::sleep(coupon_api::policies::public_reads::PUBLIC_READ_TTL).await;
    assert_eq!(get(&app, &path).await["title"], "changed behind the API");
    // An admin change through the API shows at once on the instance that made it.
    let patched = app
        .client
        .patch(app.url(&path))
        .json(&json!({"title": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(get(&app, &path).await["title"], "renamed");
}

#[tokio::test]
async fn the_search_text_is_bounded() {
    let app = spawn_app().await;
    let at_most = "a".repeat(100);
    let ok = app
        .anonymous
        .get(app.url(&format!("/api/v1/coupons?q={at_most}")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let too_long = app
        .anonymous
        .get(app.url(&format!("/api/v1/coupons?q={at_most}b")))
        .send()
        .await
        .unwrap();
    let message = assert_error(too_long, 422, "VALIDATION_FAILED").await;
    assert!(message.contains("100"), "{message}");
}

#[tokio::test]
async fn the_public_sees_no_suspended_policy_and_no_drop_before_it_opens() {
    let app = spawn_app().await;
    let open = app.open_coupon(5).await;
    let now = chrono::Utc::now();
    let upcoming = testing::policy_with_window(
        Some(5),
        now + chrono::Duration::hours(1),
        now + chrono::Duration::hours(2),
    );
    let upcoming = app.create_policy(&upcoming).await["id"].as_i64().unwrap();
    let suspended = app.open_coupon(5).await;
    let response = app
        .client
        .post(app.url(&format!("/api/v1/coupons/{suspended}/suspend")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let user = testing::user_token(7);
    for (who, token) in [("anonymous", None), ("a user", Some(user.as_str()))] {
        let request = |path: String| {
            let request = app.anonymous.get(app.url(&path));
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
        };
        let listed: Value = request("/api/v1/coupons".into())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ids(&listed, "id"), [open], "{who}: {listed}");
        let asked: Value = request("/api/v1/coupons?status=SUSPENDED".into())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ids(&asked, "id"), Vec::<i64>::new(), "{who}: {asked}");
        for hidden in [upcoming, suspended] {
            let read = request(format!("/api/v1/coupons/{hidden}"))
                .send()
                .await
                .unwrap();
            assert_error(read, 404, "COUPON_NOT_FOUND").await;
        }
    }
    // An operator sees all three.
    let listed = get(&app, "/api/v1/coupons").await;
    assert_eq!(ids(&listed, "id"), [suspended, upcoming, open]);
    assert_eq!(
        get(&app, &format!("/api/v1/coupons/{upcoming}")).await["id"],
        upcoming
    );
}
