//! Bearer tokens: who may call what, and for whom.

use coupon_core::auth::{unix_now, Claims, Role, TokenSigner};
use coupon_core::issue::admission::StockShards;
use coupon_core::testing;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn an_issue_without_a_valid_token_is_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;
    let url = app.url(&format!("/api/v1/coupons/{coupon}/issues"));
    let signer = TokenSigner::hs256(testing::JWT_SECRET);
    let now = unix_now();
    let expired = signer
        .sign(&Claims {
            sub: "7".into(),
            role: Role::User,
            exp: now - 60,
            iat: now - 120,
            nbf: None,
            iss: None,
            aud: None,
        })
        .unwrap();
    let forged = TokenSigner::hs256("somebody-else's-secret-of-32-bytes")
        .mint("7", Role::User, 60)
        .unwrap();
    let cases: [(&str, Option<String>, &str); 5] = [
        ("no header", None, "required"),
        ("not bearer", Some("Basic dXNlcjpwdw==".into()), "Bearer"),
        ("garbage", Some("Bearer not-a-jwt".into()), "malformed"),
        ("expired", Some(format!("Bearer {expired}")), "expired"),
        ("forged", Some(format!("Bearer {forged}")), "signature"),
    ];

    for (case, header, says) in cases {
        let mut request = app.anonymous.post(&url);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        let challenge = response.headers().get("www-authenticate").cloned();
        let message = assert_error(response, 401, "UNAUTHORIZED").await;
        assert!(message.contains(says), "{case}: {message}");
        assert!(challenge.is_some(), "{case}: no WWW-Authenticate");
    }
    assert_eq!(testing::count_rows(&app.state.pool, coupon).await, 0);
    let admitted = app.admitted_count(coupon_id(coupon)).await;
    assert_eq!(admitted, 0, "a refused caller was admitted");
}

fn coupon_id(id: i64) -> coupon_core::domain::CouponId {
    coupon_core::domain::CouponId::parse(id).unwrap()
}

#[tokio::test]
async fn a_user_token_issues_for_its_own_subject_and_never_for_another_user() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;
    let url = app.url(&format!("/api/v1/coupons/{coupon}/issues"));

    let for_other = app
        .client
        .post(&url)
        .bearer_auth(testing::user_token(7))
        .json(&json!({ "user_id": 8 }))
        .send()
        .await
        .unwrap();
    assert_error(for_other, 403, "FORBIDDEN").await;

    let own_in_body = app
        .client
        .post(&url)
        .bearer_auth(testing::user_token(7))
        .json(&json!({ "user_id": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(own_in_body.status(), 202);
    let no_body = app.issue(coupon, 9).await;
    assert_eq!(no_body.status(), 202);

    for user in [7, 9] {
        assert!(app
            .state
            .issue
            .admission
            .is_admitted(StockShards::single(coupon_id(coupon)), user_id(user))
            .await
            .unwrap());
    }
    assert!(!app
        .state
        .issue
        .admission
        .is_admitted(StockShards::single(coupon_id(coupon)), user_id(8))
        .await
        .unwrap());
}

fn user_id(id: i64) -> coupon_core::domain::UserId {
    coupon_core::domain::UserId::parse(id).unwrap()
}

#[tokio::test]
async fn an_admin_token_issues_for_the_user_its_body_names() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;

    let response = app
        .client
        .post(app.url(&format!("/api/v1/coupons/{coupon}/issues")))
        .json(&json!({ "user_id": 31 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(app
        .state
        .issue
        .admission
        .is_admitted(StockShards::single(coupon_id(coupon)), user_id(31))
        .await
        .unwrap());

    let unnamed = app
        .client
        .post(app.url(&format!("/api/v1/coupons/{coupon}/issues")))
        .send()
        .await
        .unwrap();
    assert_error(unnamed, 422, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn admin_endpoints_refuse_user_tokens_with_403_and_anonymous_callers_with_401() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;
    let policy = testing::open_policy(5);

    let as_user = app
        .client
        .post(app.url("/api/v1/coupons"))
        .bearer_auth(testing::user_token(7))
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_error(as_user, 403, "FORBIDDEN").await;
    let anonymous = app
        .anonymous
        .post(app.url(&format!("/api/v1/coupons/{coupon}/suspend")))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, 401, "UNAUTHORIZED").await;
    let stats = app
        .client
        .get(app.url(&format!("/api/v1/coupons/{coupon}/stats")))
        .bearer_auth(testing::user_token(7))
        .send()
        .await
        .unwrap();
    assert_error(stats, 403, "FORBIDDEN").await;

    // The policy itself is public: a shop page shows it to anyone.
    let public = app
        .anonymous
        .get(app.url(&format!("/api/v1/coupons/{coupon}")))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    assert_eq!(
        public.json::<serde_json::Value>().await.unwrap()["status"],
        "ACTIVE"
    );
}

#[tokio::test]
async fn a_user_reads_only_their_own_coupons() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;
    assert_eq!(app.issue(coupon, 7).await.status(), 202);

    let someone_elses = app
        .client
        .get(app.url("/api/v1/users/8/coupons"))
        .bearer_auth(testing::user_token(7))
        .send()
        .await
        .unwrap();
    assert_error(someone_elses, 403, "FORBIDDEN").await;
    let status_of_other = app
        .client
        .get(app.url(&format!("/api/v1/coupons/{coupon}/issues/7")))
        .bearer_auth(testing::user_token(8))
        .send()
        .await
        .unwrap();
    assert_error(status_of_other, 403, "FORBIDDEN").await;

    let own = app
        .client
        .get(app.url("/api/v1/users/7/coupons"))
        .bearer_auth(testing::user_token(7))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(app.issue_status(coupon, 7).await.status(), 200);
}

#[tokio::test]
async fn one_idempotency_key_from_two_users_is_two_requests() {
    let app = spawn_app().await;
    let coupon = app.open_coupon(5).await;
    let url = app.url(&format!("/api/v1/coupons/{coupon}/issues"));

    for user in [7, 8] {
        let response = app
            .client
            .post(&url)
            .bearer_auth(testing::user_token(user))
            .header("idempotency-key", "same-key")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "user {user}");
        assert!(
            response.headers().get("idempotent-replayed").is_none(),
            "user {user}"
        );
    }
    for user in [7, 8] {
        assert!(app
            .state
            .issue
            .admission
            .is_admitted(StockShards::single(coupon_id(coupon)), user_id(user))
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn tokens_for_another_audience_not_yet_valid_or_too_long_lived_are_refused() {
    let app = spawn_app().await;
    let now = unix_now();
    let admin = |aud: Option<&str>, iat: u64, exp: u64, nbf: Option<u64>| {
        TokenSigner::hs256(testing::JWT_SECRET)
            .sign(&Claims {
                sub: "ops".into(),
                role: Role::Admin,
                exp,
                iat,
                nbf,
                iss: None,
                aud: aud.map(str::to_owned),
            })
            .unwrap()
    };
    let cases = [
        ("audience", admin(Some("another-app"), now, now + 600, None)),
        ("nbf", admin(None, now, now + 7_200, Some(now + 3_600))),
        ("iat", admin(None, now + 3_600, now + 7_200, None)),
        ("exp - iat", admin(None, now, now + 86_400 * 30, None)),
    ];
    for (says, token) in cases {
        let response = app
            .client
            .post(app.url("/api/v1/coupons"))
            .bearer_auth(token)
            .json(&testing::open_policy(5))
            .send()
            .await
            .unwrap();
        let message = assert_error(response, 401, "UNAUTHORIZED").await;
        assert!(message.contains(says), "{says}: {message}");
    }
    let listed: serde_json::Value = app
        .anonymous
        .get(app.url("/api/v1/coupons"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
}
