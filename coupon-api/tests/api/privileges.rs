//! Least privileges: with `MIGRATE_ON_START=false`, coupon-api runs with a database user that
//! has only `SELECT, INSERT, UPDATE, DELETE` (`coupon_app`, made by `make up`), and refuses to
//! start on a database this build's migrations were not applied to.

use coupon_api::startup::Application;
use coupon_core::testing;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, test_config};

/// `url` with the runtime user's credentials (`APP_DB_USER`/`APP_DB_PASSWORD` of
/// scripts/stack.sh, `coupon_app` by default).
fn as_runtime_user(url: &str) -> String {
    let user = std::env::var("APP_DB_USER").unwrap_or_else(|_| "coupon_app".into());
    let password = std::env::var("APP_DB_PASSWORD").unwrap_or_else(|_| "coupon_app".into());
    let (scheme, rest) = url.split_once("://").unwrap();
    let address = rest.rsplit_once('@').map_or(rest, |(_, address)| address);
    format!("{scheme}://{user}:{password}@{address}")
}

#[tokio::test]
async fn without_migrating_at_start_the_service_runs_on_data_rights_only() {
    // A database migrated by the DDL-capable user, as `coupon-api migrate` does.
    let migrated = spawn_app().await;
    let stores = migrated.stores.clone();
    let app = spawn_app_with(move |config| {
        config.stores = stores;
        config.stores.mysql.url = as_runtime_user(config.stores.mysql.url()).into();
        config.stores.mysql.migrate_on_start = false;
    })
    .await;

    let created = app
        .client
        .post(app.url("/api/v1/coupons"))
        .json(&testing::open_policy(5))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let coupon = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.issue(coupon, 7).await.status(), 202);
    testing::persist_issue(&app.state.pool, coupon, 8).await;
    let issue: i64 = sqlx::query_scalar("SELECT id FROM coupon_issues WHERE user_id = 8")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    let redeemed = app
        .client
        .post(app.url(&format!("/api/v1/users/8/coupons/{issue}/redeem")))
        .json(&json!({"order_id": "least-1", "order_amount": 30_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(redeemed.status(), 200);
}

#[tokio::test]
async fn the_runtime_user_cannot_migrate_and_an_unmigrated_database_is_refused() {
    let stores = testing::isolated_stores();
    // The database exists (made by the DDL-capable user) but was never migrated.
    let url = stores.mysql.url().to_owned();
    coupon_core::store::db::create_database_if_missing(&url)
        .await
        .unwrap();
    let runtime_url = as_runtime_user(&url);

    let build = |migrate_on_start: bool| {
        let mut config = test_config();
        config.stores = stores.clone();
        config.stores.mysql.url = runtime_url.clone().into();
        config.stores.mysql.migrate_on_start = migrate_on_start;
        Application::build(config)
    };
    let unmigrated = build(false)
        .await
        .err()
        .expect("an unmigrated database is refused");
    assert!(
        format!("{unmigrated:#}").contains("coupon-api migrate"),
        "{unmigrated:#}"
    );
    let no_ddl = build(true)
        .await
        .err()
        .expect("the runtime user cannot migrate");
    assert!(
        format!("{no_ddl:#}").to_lowercase().contains("denied"),
        "{no_ddl:#}"
    );
}
