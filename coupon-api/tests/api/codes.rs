//! Code coupons: topics, generation, export and redeem by code.

use std::time::Duration;

use coupon_core::domain::CouponType;
use coupon_core::testing;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

/// An unlimited policy and a topic for it; returns the topic id.
async fn topic(app: &TestApp) -> i64 {
    let mut policy = testing::open_policy(1);
    policy.coupon_type = CouponType::Unlimited;
    policy.total_quantity = None;
    topic_of(app, &policy).await
}

/// A topic for a new `policy`; returns the topic id.
async fn topic_of(app: &TestApp, policy: &coupon_core::domain::NewCouponPolicy) -> i64 {
    let coupon = app.create_policy(policy).await["id"].as_i64().unwrap();
    let response = app
        .client
        .post(app.url("/api/v1/topics"))
        .json(&json!({"coupon_id": coupon, "name": "Influencer A"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// Generates `count` codes through the API and waits for the job; returns them.
async fn generate(app: &TestApp, topic: i64, count: i64) -> Vec<String> {
    let job: Value = app
        .client
        .post(app.url(&format!("/api/v1/topics/{topic}/codes")))
        .json(&json!({"count": count}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["job_id"].as_i64().unwrap();
    let url = app.url(&format!("/api/v1/topics/{topic}/code-jobs/{job_id}"));
    testing::eventually("the generation job", Duration::from_secs(60), || async {
        let job: Value = app
            .client
            .get(&url)
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
        .fetch_all(&app.state.pool)
        .await
        .unwrap()
}

async fn redeem(app: &TestApp, code: &str, user: i64) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/codes/{code}/redeem")))
        .json(&json!({"user_id": user}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn topics_are_created_read_and_listed() {
    let app = spawn_app().await;
    let id = topic(&app).await;

    let one: Value = app
        .client
        .get(app.url(&format!("/api/v1/topics/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list: Value = app
        .client
        .get(app.url("/api/v1/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(one["name"], "Influencer A");
    assert_eq!(list["items"][0]["id"], id);
    let missing = app
        .client
        .get(app.url("/api/v1/topics/999999"))
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "TOPIC_NOT_FOUND").await;
    let orphan = app
        .client
        .post(app.url("/api/v1/topics"))
        .json(&json!({"coupon_id": 999_999, "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(orphan, 404, "COUPON_NOT_FOUND").await;
}

#[tokio::test]
async fn generated_codes_are_unique_well_formed_and_exported_as_csv() {
    let app = spawn_app().await;
    let id = topic(&app).await;

    let codes = generate(&app, id, 2_500).await;

    assert_eq!(codes.len(), 2_500);
    let distinct: std::collections::HashSet<_> = codes.iter().collect();
    assert_eq!(distinct.len(), 2_500);
    assert!(codes.iter().all(|c| c.len() == 16
        && c.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())));
    let csv = app
        .client
        .get(app.url(&format!("/api/v1/topics/{id}/codes.csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "code,status,redeemed_by,redeemed_at,created_at");
    assert_eq!(lines.len(), 2_501);
    assert!(lines[1].starts_with(&format!("{},ACTIVE,", codes[0])));
}

#[tokio::test]
async fn a_code_issues_its_topics_coupon_once_in_any_spelling() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    let codes = generate(&app, id, 3).await;
    let spelled = format!(
        "{}-{}-{}-{}",
        &codes[0][..4],
        &codes[0][4..8],
        &codes[0][8..12],
        &codes[0][12..]
    )
    .to_lowercase();

    let first = redeem(&app, &spelled, 7).await;

    assert_eq!(first.status(), 200);
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["code"], codes[0]);
    assert_eq!(body["status"], "ISSUED");
    assert_error(redeem(&app, &codes[0], 8).await, 409, "CODE_ALREADY_USED").await;
    assert_error(redeem(&app, &codes[1], 7).await, 409, "ALREADY_ISSUED").await;
    assert_error(redeem(&app, "NOT-A-CODE", 7).await, 400, "INVALID_CODE").await;
    assert_error(
        redeem(&app, "AAAABBBBCCCCDDDD", 7).await,
        404,
        "CODE_NOT_FOUND",
    )
    .await;
    sqlx::query("UPDATE coupon_codes SET status = 'SUSPENDED' WHERE code = ?")
        .bind(&codes[2])
        .execute(&app.state.pool)
        .await
        .unwrap();
    assert_error(redeem(&app, &codes[2], 9).await, 409, "CODE_SUSPENDED").await;
}

#[tokio::test]
async fn two_hundred_users_racing_for_one_code_give_exactly_one_success() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    let code = generate(&app, id, 1).await.remove(0);

    let attempts = (1..=200).map(|user| {
        let (app, code) = (&app, &code);
        async move {
            let response = redeem(app, code, user).await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(attempts).await;

    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 1);
    assert!(answers
        .iter()
        .filter(|(s, _)| *s != 200)
        .all(|(s, b)| *s == 409 && b["code"] == "CODE_ALREADY_USED"));
    assert_eq!(
        testing::count_rows(&app.state.pool, coupon_of(&app, id).await).await,
        1
    );
}

#[tokio::test]
async fn one_user_racing_with_two_hundred_codes_of_a_topic_gets_exactly_one() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    let codes = generate(&app, id, 200).await;

    let attempts = codes.iter().map(|code| {
        let app = &app;
        async move { redeem(app, code, 7).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(attempts).await;

    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409));
    let used: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM coupon_codes WHERE redeemed_by IS NOT NULL")
            .fetch_one(&app.state.pool)
            .await
            .unwrap();
    assert_eq!(used, 1);
}

#[tokio::test]
async fn redeeming_by_code_works_without_redis() {
    let mut redis = testing::OwnRedisDeployment::start(false).await;
    let (url, mode) = (redis.url(), redis.mode());
    let app = spawn_app_with(move |config| {
        config.stores.redis.url = url.into();
        config.stores.redis.mode = mode;
        config.stores.redis.timeout = Duration::from_millis(300);
    })
    .await;
    let id = topic(&app).await;
    let codes = generate(&app, id, 2).await;
    let limited = topic_of(&app, &testing::open_policy(10)).await;
    let limited_codes = generate(&app, limited, 1).await;

    redis.stop();

    assert_eq!(redeem(&app, &codes[0], 7).await.status(), 200);
    assert_error(redeem(&app, &codes[0], 8).await, 409, "CODE_ALREADY_USED").await;
    // A limited drop's unit is taken through the Redis admission: without Redis, nothing is
    // issued and the code stays unused (fail closed, docs/invariants.md 7).
    assert_error(redeem(&app, &limited_codes[0], 7).await, 503, "UNAVAILABLE").await;
    let unused: Option<i64> =
        sqlx::query_scalar("SELECT redeemed_by FROM coupon_codes WHERE code = ?")
            .bind(&limited_codes[0])
            .fetch_one(&app.state.pool)
            .await
            .unwrap();
    assert_eq!(unused, None);
    assert_eq!(
        testing::count_rows(&app.state.pool, coupon_of(&app, limited).await).await,
        0
    );
}

async fn coupon_of(app: &TestApp, topic: i64) -> i64 {
    sqlx::query_scalar("SELECT coupon_id FROM coupon_topics WHERE id = ?")
        .bind(topic)
        .fetch_one(&app.state.pool)
        .await
        .unwrap()
}

async fn bulk(app: &TestApp, topic: i64, action: &str) -> Value {
    let url = app.url(&format!("/api/v1/topics/{topic}/codes{action}"));
    let request = if action.is_empty() {
        app.client.delete(url)
    } else {
        app.client.post(url)
    };
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn bulk_suspend_activate_and_delete_report_their_counts_and_are_idempotent() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    let codes = generate(&app, id, 2_500).await;

    assert_eq!(bulk(&app, id, "/suspend").await["changed"], 2_500);
    assert_eq!(bulk(&app, id, "/suspend").await["changed"], 0, "idempotent");
    assert_error(redeem(&app, &codes[0], 7).await, 409, "CODE_SUSPENDED").await;
    assert_eq!(bulk(&app, id, "/activate").await["changed"], 2_500);
    assert_eq!(redeem(&app, &codes[0], 7).await.status(), 200);
    assert_eq!(bulk(&app, id, "").await["changed"], 2_500);
    assert_eq!(bulk(&app, id, "").await["changed"], 0);
    assert_error(redeem(&app, &codes[1], 8).await, 404, "CODE_NOT_FOUND").await;
}

#[tokio::test]
async fn codes_are_searched_by_status_redemption_and_creation_time() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    let codes = generate(&app, id, 30).await;
    assert_eq!(redeem(&app, &codes[0], 7).await.status(), 200);
    sqlx::query("UPDATE coupon_codes SET status = 'SUSPENDED' WHERE code IN (?, ?)")
        .bind(&codes[1])
        .bind(&codes[2])
        .execute(&app.state.pool)
        .await
        .unwrap();
    let get = |query: String| {
        let app = &app;
        async move {
            let response = app
                .client
                .get(app.url(&format!("/api/v1/topics/{id}/codes?{query}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{query}");
            response.json::<Value>().await.unwrap()
        }
    };
    let codes_of = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap().to_owned())
            .collect()
    };

    let redeemed = get("redeemed=true".into()).await;
    let suspended = get("status=SUSPENDED".into()).await;
    let first = get("limit=20".into()).await;
    let rest = get(format!(
        "limit=20&cursor={}",
        first["next_cursor"].as_str().unwrap()
    ))
    .await;
    let future = get(format!(
        "created_from={}",
        (chrono::Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339()
            .replace('+', "%2B")
    ))
    .await;

    assert_eq!(codes_of(&redeemed), vec![codes[0].clone()]);
    assert_eq!(
        codes_of(&suspended),
        vec![codes[2].clone(), codes[1].clone()]
    );
    assert_eq!(codes_of(&first).len() + codes_of(&rest).len(), 30);
    assert_eq!(rest["next_cursor"], Value::Null);
    assert!(codes_of(&future).is_empty());

    // A creation range alone pages in creation order, with a cursor that carries the time.
    let since = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339()
        .replace('+', "%2B");
    let recent = get(format!("created_from={since}&limit=20")).await;
    let cursor = recent["next_cursor"].as_str().unwrap().to_owned();
    assert!(cursor.contains('.'), "{cursor}");
    let older = get(format!("created_from={since}&limit=20&cursor={cursor}")).await;
    let mut all = codes_of(&recent);
    all.extend(codes_of(&older));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "two pages hold every code once");
    let mixed = app
        .client
        .get(app.url(&format!(
            "/api/v1/topics/{id}/codes?status=ACTIVE&cursor={cursor}"
        )))
        .send()
        .await
        .unwrap();
    assert_error(mixed, 422, "VALIDATION_FAILED").await;
    let bad = app
        .client
        .get(app.url(&format!("/api/v1/topics/{id}/codes?status=USED")))
        .send()
        .await
        .unwrap();
    assert_error(bad, 422, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn the_common_code_filters_use_an_index() {
    use coupon_core::codes::{search_index, search_sql, CodeCursor, CodeFilter};
    let app = spawn_app().await;
    // Two topics, the searched one with the lower ids: a primary-key walk from the top would
    // pass every code of the other topic first.
    let searched = topic(&app).await;
    generate(&app, searched, 300).await;
    let other = topic(&app).await;
    generate(&app, other, 3_000).await;
    let status = |s: &str| Some(s.to_owned());
    let filters = [
        CodeFilter::default(),
        CodeFilter {
            status: status("ACTIVE"),
            ..Default::default()
        },
        CodeFilter {
            redeemed: Some(false),
            ..Default::default()
        },
        CodeFilter {
            redeemed: Some(true),
            ..Default::default()
        },
        CodeFilter {
            status: status("ACTIVE"),
            redeemed: Some(false),
            ..Default::default()
        },
        CodeFilter {
            created_from: Some(chrono::Utc::now()),
            ..Default::default()
        },
    ];

    for filter in filters {
        let at = filter.created_from.filter(|_| filter.status.is_none());
        for cursor in [
            None,
            Some(CodeCursor {
                id: 1_000,
                created_at: at,
            }),
        ] {
            let plan = search_sql(true, searched, &filter, cursor, 21)
                .build()
                .fetch_all(&app.state.pool)
                .await
                .unwrap();
            let key: Option<String> = sqlx::Row::try_get(&plan[0], "key").unwrap();
            let extra: Option<String> = sqlx::Row::try_get(&plan[0], "Extra").unwrap();
            assert_eq!(key.as_deref(), Some(search_index(&filter)), "{filter:?}");
            assert!(
                !extra.unwrap_or_default().contains("filesort"),
                "{filter:?} sorts instead of reading the page in index order"
            );
        }
    }
}

#[tokio::test]
async fn codes_deleted_long_ago_move_to_the_archive_in_resumable_batches() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    let codes = generate(&app, id, 25).await;
    assert_eq!(redeem(&app, &codes[0], 7).await.status(), 200);
    assert_eq!(bulk(&app, id, "").await["changed"], 25);
    let now = chrono::Utc::now();
    sqlx::query("UPDATE coupon_codes SET deleted_at = ? WHERE code <> ?")
        .bind(now - chrono::Duration::days(200))
        .bind(&codes[24])
        .execute(&app.state.pool)
        .await
        .unwrap();
    let cutoff = now - chrono::Duration::days(183);

    let mut moved = Vec::new();
    loop {
        let n = coupon_core::codes::archive_deleted(&app.state.pool, cutoff, 7, now)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        moved.push(n);
    }

    assert_eq!(
        moved,
        vec![7, 7, 7, 3],
        "24 old codes in batches of 7; the recent one stays"
    );
    let hot: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupon_codes")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert_eq!(hot, 1);
    let archived: Value = app
        .client
        .get(app.url(&format!("/api/v1/archive/codes/{}", codes[0])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        archived["redeemed_by"], 7,
        "the redemption moved with the code"
    );
    assert_eq!(archived["status"], "DELETED");
    let recent = app
        .client
        .get(app.url(&format!("/api/v1/archive/codes/{}", codes[24])))
        .send()
        .await
        .unwrap();
    assert_error(recent, 404, "CODE_NOT_FOUND").await;
}

#[tokio::test]
async fn a_generation_job_abandoned_by_a_dead_instance_is_resumed_exactly() {
    use coupon_core::codes::jobs::{self, Lease, Step};
    let app = spawn_app_with(|c| c.code_job_lease = Duration::from_millis(300)).await;
    let topic = topic(&app).await;
    let pool = &app.state.pool;
    let now = chrono::Utc::now();
    // An instance that committed 1,000 of 2,500 codes, then died: its lease runs out.
    let dead = Lease {
        owner: "dead-instance".into(),
        length: chrono::Duration::seconds(60),
    };
    let abandoned = jobs::create(pool, topic, 2_500, &dead, now).await.unwrap();
    assert_eq!(
        jobs::step(pool, abandoned.job_id, &dead, 1_000, now)
            .await
            .unwrap(),
        Step::Progressed
    );
    sqlx::query("UPDATE code_generation_jobs SET lease_until = ? WHERE id = ?")
        .bind(now - chrono::Duration::seconds(1))
        .bind(abandoned.job_id)
        .execute(pool)
        .await
        .unwrap();
    // A job a live instance holds for another minute must be left alone.
    let live = Lease {
        owner: "live-instance".into(),
        length: chrono::Duration::seconds(60),
    };
    let held = jobs::create(pool, topic, 10, &live, now).await.unwrap();

    testing::eventually("the resumed job", Duration::from_secs(30), || async {
        let job = jobs::find(pool, topic, abandoned.job_id)
            .await
            .unwrap()
            .unwrap();
        (job.status == "DONE").then_some(job)
    })
    .await;
    let job = jobs::find(pool, topic, abandoned.job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.generated, 2_500);
    assert_eq!(codes_of(pool, topic).await, 2_500);

    // The dead instance, coming back, can no longer write to the job it lost.
    assert_eq!(
        jobs::step(pool, abandoned.job_id, &dead, 1_000, now)
            .await
            .unwrap(),
        Step::LeaseLost
    );
    assert_eq!(codes_of(pool, topic).await, 2_500);
    let untouched = jobs::find(pool, topic, held.job_id).await.unwrap().unwrap();
    assert_eq!(
        (untouched.generated, untouched.status.as_str()),
        (0, "RUNNING")
    );
}

async fn codes_of(pool: &sqlx::MySqlPool, topic: i64) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM coupon_codes WHERE topic_id = ?")
        .bind(topic)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Runs the `coupon-api` binary against the test's database; returns (success, stdout).
fn cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coupon-api"))
        .args(args)
        .env("DATABASE_URL", app.stores.mysql.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running coupon-api");
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("UTF-8 output"),
    )
}

#[tokio::test]
async fn the_archive_cli_archives_lists_and_shows_codes() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    let codes = generate(&app, id, 5).await;
    assert_eq!(redeem(&app, &codes[2], 9).await.status(), 200);
    assert_eq!(bulk(&app, id, "").await["changed"], 5);

    let (ok, out) = cli(&app, &["archive", "run", "--older-than-days", "1"]);
    assert!(ok);
    assert!(out.contains("archived 0 codes"), "{out}");
    let (ok, out) = cli(
        &app,
        &["archive", "run", "--older-than-days", "0", "--batch", "2"],
    );
    assert!(ok);
    assert!(out.contains("archived 5 codes"), "{out}");
    assert_eq!(codes_of(&app.state.pool, id).await, 0);

    let (ok, out) = cli(&app, &["archive", "list", "--topic", &id.to_string()]);
    assert!(ok);
    let listed: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|c| c["status"] == "DELETED"));

    let lower = codes[2].to_lowercase();
    let (ok, out) = cli(&app, &["archive", "show", &lower]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["code"].as_str(), shown["redeemed_by"].as_i64()),
        (Some(codes[2].as_str()), Some(9))
    );
    let (ok, _) = cli(&app, &["archive", "show", "ZZZZ-ZZZZ-ZZZZ-ZZZZ"]);
    assert!(!ok, "a code not in the archive exits non-zero");
}

#[tokio::test]
async fn a_bulk_change_batch_walks_the_status_index() {
    let app = spawn_app().await;
    let id = topic(&app).await;
    generate(&app, id, 2_000).await;
    assert_eq!(bulk(&app, id, "/suspend").await["changed"], 2_000);
    let explain = format!("EXPLAIN {}", coupon_core::codes::BULK_BATCH_SQL);
    let plan = sqlx::query(&explain)
        .bind(id)
        .bind("SUSPENDED")
        .bind(1_000)
        .fetch_all(&app.state.pool)
        .await
        .unwrap();
    let key: Option<String> = sqlx::Row::try_get(&plan[0], "key").unwrap();
    assert_eq!(key.as_deref(), Some("idx_coupon_codes_topic_status"));
}
