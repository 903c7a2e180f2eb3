//! The admission scripts against a real Redis.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use coupon_core::domain::{CouponId, CouponPolicy, UserId};
use coupon_core::issue::admission::{
    AdmissionStore, AdmitError, AdmitOutcome, PolicyCopies, RedisKeys, StockShards,
};
use coupon_core::testing;
use uuid::Uuid;

async fn store() -> AdmissionStore {
    let stores = testing::isolated_stores();
    let conn = stores
        .connect_redis(Duration::from_secs(2))
        .await
        .expect("Redis must run on REDIS_URL (make up)");
    AdmissionStore::new(conn, RedisKeys::new(stores.redis.key_prefix))
}

fn policy(id: i64, total: Option<i64>) -> CouponPolicy {
    testing::policy_row(id, total)
}

/// Members of `coupon`'s admission set (count).
async fn set_size(store: &AdmissionStore, coupon: CouponId) -> i64 {
    store
        .admitted_count(StockShards::single(coupon))
        .await
        .unwrap()
}

fn user(id: i64) -> UserId {
    UserId::parse(id).unwrap()
}

/// Admits `user` under a fresh request id and, when admitted, settles it at once (as the
/// consumer does once the row is persisted), so a repeat hears `AlreadyIssued`.
async fn admit(store: &AdmissionStore, coupon: CouponId, user: UserId) -> AdmitOutcome {
    let outcome = store
        .admit(StockShards::single(coupon), user, Uuid::now_v7())
        .await
        .unwrap();
    if outcome == AdmitOutcome::Admitted {
        store
            .settle(StockShards::single(coupon), &[user])
            .await
            .unwrap();
    }
    outcome
}

#[tokio::test]
async fn a_user_is_admitted_once_and_then_told_already_issued() {
    let store = store().await;
    let p = policy(1, Some(10));
    store.prepare(&p).await.unwrap();

    assert_eq!(admit(&store, p.id, user(7)).await, AdmitOutcome::Admitted);
    assert_eq!(
        admit(&store, p.id, user(7)).await,
        AdmitOutcome::AlreadyIssued
    );
    assert_eq!(set_size(&store, p.id).await, 1);
}

#[tokio::test]
async fn the_last_unit_goes_to_exactly_one_user_and_then_it_is_sold_out() {
    let store = store().await;
    let p = policy(2, Some(2));
    store.prepare(&p).await.unwrap();

    assert_eq!(admit(&store, p.id, user(1)).await, AdmitOutcome::Admitted);
    assert_eq!(
        admit(&store, p.id, user(2)).await,
        AdmitOutcome::Admitted,
        "last unit"
    );
    assert_eq!(admit(&store, p.id, user(3)).await, AdmitOutcome::SoldOut);
    // A holder asking again hears "already issued", not "sold out": duplicates are checked first.
    assert_eq!(
        admit(&store, p.id, user(1)).await,
        AdmitOutcome::AlreadyIssued
    );
    assert_eq!(set_size(&store, p.id).await, 2);
}

#[tokio::test]
async fn concurrent_admissions_never_exceed_the_stock() {
    let store = store().await;
    let p = policy(3, Some(25));
    store.prepare(&p).await.unwrap();

    let attempts = (1..=400).map(|u| {
        let store = store.clone();
        // Users 1..=200 each try twice.
        async move { admit(&store, p.id, user((u - 1) % 200 + 1)).await }
    });
    let outcomes = futures::future::join_all(attempts).await;

    let admitted = outcomes
        .iter()
        .filter(|o| **o == AdmitOutcome::Admitted)
        .count();
    assert_eq!(admitted, 25);
    assert_eq!(set_size(&store, p.id).await, 25);
}

#[tokio::test]
async fn unlimited_coupons_admit_everyone_once() {
    let store = store().await;
    let p = policy(4, None);
    store.prepare(&p).await.unwrap();

    for u in 1..=300 {
        assert_eq!(admit(&store, p.id, user(u)).await, AdmitOutcome::Admitted);
    }
    assert_eq!(
        admit(&store, p.id, user(300)).await,
        AdmitOutcome::AlreadyIssued
    );
    assert_eq!(set_size(&store, p.id).await, 300);
}

#[tokio::test]
async fn a_coupon_without_redis_state_is_not_admitted() {
    let store = store().await;
    let id = CouponId::parse(5).unwrap();

    assert_eq!(admit(&store, id, user(1)).await, AdmitOutcome::NotPrepared);
    assert_eq!(set_size(&store, id).await, 0);
}

#[tokio::test]
async fn undo_removes_exactly_that_admission_and_frees_its_unit() {
    let store = store().await;
    let p = policy(6, Some(2));
    store.prepare(&p).await.unwrap();
    admit(&store, p.id, user(1)).await;
    let request = Uuid::now_v7();
    store
        .admit(StockShards::single(p.id), user(2), request)
        .await
        .unwrap();

    assert!(
        !store
            .undo(StockShards::single(p.id), user(2), Uuid::now_v7())
            .await
            .unwrap(),
        "another request's undo removes nothing"
    );
    assert!(store
        .undo(StockShards::single(p.id), user(2), request)
        .await
        .unwrap());
    assert!(
        !store
            .undo(StockShards::single(p.id), user(2), request)
            .await
            .unwrap(),
        "a second undo finds nothing"
    );

    assert!(store
        .is_admitted(StockShards::single(p.id), user(1))
        .await
        .unwrap());
    assert!(!store
        .is_admitted(StockShards::single(p.id), user(2))
        .await
        .unwrap());
    assert_eq!(admit(&store, p.id, user(3)).await, AdmitOutcome::Admitted);
}

#[tokio::test]
async fn a_repeat_while_pending_hears_in_progress_and_a_settled_admission_cannot_be_undone() {
    let store = store().await;
    let p = policy(8, Some(5));
    store.prepare(&p).await.unwrap();
    let first = Uuid::now_v7();
    assert_eq!(
        store
            .admit(StockShards::single(p.id), user(1), first)
            .await
            .unwrap(),
        AdmitOutcome::Admitted
    );

    // Pending: the first request may yet be undone, so "already issued" would be a guess.
    assert_eq!(
        store
            .admit(StockShards::single(p.id), user(1), Uuid::now_v7())
            .await
            .unwrap(),
        AdmitOutcome::InProgress
    );
    assert_eq!(
        store
            .pending_users(StockShards::single(p.id))
            .await
            .unwrap(),
        [user(1)]
    );

    // Settled (the row is persisted): a repeat hears AlreadyIssued, and the first request's
    // undo, arriving late, removes nothing.
    assert_eq!(
        store
            .settle(StockShards::single(p.id), &[user(1)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .admit(StockShards::single(p.id), user(1), Uuid::now_v7())
            .await
            .unwrap(),
        AdmitOutcome::AlreadyIssued
    );
    assert!(!store
        .undo(StockShards::single(p.id), user(1), first)
        .await
        .unwrap());
    assert!(store
        .is_admitted(StockShards::single(p.id), user(1))
        .await
        .unwrap());

    // An admission whose call never ran is undone as a no-op: nothing else is touched.
    assert!(!store
        .undo(StockShards::single(p.id), user(2), Uuid::now_v7())
        .await
        .unwrap());
    assert_eq!(set_size(&store, p.id).await, 1);
}

#[tokio::test]
async fn preparing_a_new_coupon_clears_state_left_under_its_id() {
    let stores = testing::isolated_stores();
    let conn = stores.connect_redis(Duration::from_secs(2)).await.unwrap();
    let keys = RedisKeys::new(stores.redis.key_prefix);
    let store = AdmissionStore::new(conn.clone(), keys.clone());
    let copies = PolicyCopies::new(conn, keys);
    let mut p = policy(7, Some(1));
    store.prepare(&p).await.unwrap();
    admit(&store, p.id, user(1)).await;
    p.stock = coupon_core::domain::Stock::Limited {
        total: 2,
        shards: coupon_core::domain::ShardCount::ONE,
    };

    store.prepare(&p).await.unwrap();

    assert_eq!(set_size(&store, p.id).await, 0);
    assert_eq!(admit(&store, p.id, user(1)).await, AdmitOutcome::Admitted);
    assert_eq!(admit(&store, p.id, user(2)).await, AdmitOutcome::Admitted);
    assert_eq!(admit(&store, p.id, user(3)).await, AdmitOutcome::SoldOut);
    assert_eq!(
        copies.get(p.id).await.unwrap().unwrap().total_quantity(),
        Some(2)
    );
}

#[tokio::test]
async fn the_same_request_sent_again_hears_admitted_and_holds_one_unit() {
    // A script re-sent after its connection dropped (the cluster client does so) must answer
    // what its first run did; another request of the same user still hears IN_PROGRESS.
    let store = store().await;
    let p = policy(8_001, Some(2));
    store.prepare(&p).await.unwrap();
    let request = Uuid::now_v7();
    for _ in 0..2 {
        assert_eq!(
            store
                .admit(StockShards::single(p.id), user(1), request)
                .await
                .unwrap(),
            AdmitOutcome::Admitted
        );
    }
    assert_eq!(
        store
            .admit(StockShards::single(p.id), user(1), Uuid::now_v7())
            .await
            .unwrap(),
        AdmitOutcome::InProgress
    );
    assert_eq!(set_size(&store, p.id).await, 1);
    assert!(store
        .undo(StockShards::single(p.id), user(1), request)
        .await
        .unwrap());
    assert_eq!(set_size(&store, p.id).await, 0);
}

#[tokio::test]
async fn admissions_no_replica_acknowledged_are_undone_and_reported_as_timeouts() {
    // The test's own redis-server has no replica, so WAIT 1 can only time out. 64 admissions
    // wait at once: their WAITs block only the connection of the acknowledgements, so every
    // undo gets through within the main connection's 1 s bound. (One WAIT per admission on
    // the main connection held up every command behind it: undos timed out and admissions
    // stayed in the set.)
    let redis = testing::OwnRedis::start(false).await;
    let url = redis.url();
    let connect = |timeout| {
        coupon_core::store::redis::connect(
            coupon_core::store::redis::RedisMode::Single,
            &url,
            timeout,
        )
    };
    let conn = connect(Duration::from_secs(1)).await.unwrap();
    let waits = connect(Duration::from_secs(2)).await.unwrap();
    let store = AdmissionStore::new(conn, RedisKeys::new("")).with_replica_acks(
        waits,
        1,
        Duration::from_millis(200),
    );
    let p = policy(8_002, Some(100));
    store.prepare(&p).await.unwrap();

    let mut admissions = tokio::task::JoinSet::new();
    for u in 1..=64 {
        let store = store.clone();
        admissions.spawn(async move {
            store
                .admit(StockShards::single(p.id), user(u), Uuid::now_v7())
                .await
        });
    }
    let outcomes = admissions.join_all().await;

    assert!(
        outcomes.iter().all(|o| o.as_ref().is_err_and(timed_out)),
        "{outcomes:?}"
    );
    assert_eq!(set_size(&store, p.id).await, 0, "every one undone");
}

#[tokio::test]
async fn on_a_cluster_an_admission_waits_for_its_masters_replica() {
    // Only meaningful where the run has replicas: the cluster of `REDIS_MODE=cluster make up`
    // has one per master. On a single node this checks that waiting for 0 replicas is a no-op.
    let cluster = testing::redis_mode() == coupon_core::store::redis::RedisMode::Cluster;
    let stores = testing::isolated_stores();
    let conn = stores.connect_redis(Duration::from_secs(2)).await.unwrap();
    let waits = stores.connect_redis(Duration::from_secs(3)).await.unwrap();
    let store = AdmissionStore::new(conn, RedisKeys::new(stores.redis.key_prefix))
        .with_replica_acks(waits, u32::from(cluster), Duration::from_secs(1));
    for id in 8_010..8_016 {
        // Six coupons: their keys fall on the slots of different masters.
        let p = policy(id, Some(1));
        store.prepare(&p).await.unwrap();
        assert_eq!(
            store
                .admit(StockShards::single(p.id), user(1), Uuid::now_v7())
                .await
                .unwrap(),
            AdmitOutcome::Admitted
        );
    }
}

#[tokio::test]
async fn admissions_acknowledged_by_a_replica_survive_the_loss_of_their_master() {
    // A cluster of the test's own: its master is killed, the replica that acknowledged every
    // admission (WAIT 1) is promoted, and the same connection follows it.
    let mut cluster = testing::OwnRedisCluster::start().await;
    let conn = coupon_core::store::redis::connect(
        coupon_core::store::redis::RedisMode::Cluster,
        &cluster.url(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let waits = coupon_core::store::redis::connect(
        coupon_core::store::redis::RedisMode::Cluster,
        &cluster.url(),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    let store = AdmissionStore::new(conn, RedisKeys::new("")).with_replica_acks(
        waits,
        1,
        Duration::from_secs(1),
    );
    let p = policy(8_100, Some(300));
    store.prepare(&p).await.unwrap();
    for u in 1..=200 {
        assert_eq!(
            store
                .admit(StockShards::single(p.id), user(u), Uuid::now_v7())
                .await
                .unwrap(),
            AdmitOutcome::Admitted
        );
    }
    let master = cluster
        .master_of(&store.keys().admission_set(p.id))
        .expect("the slot's master");

    cluster.kill(master);
    cluster.wait_until_served(Duration::from_secs(20)).await;

    let promoted = cluster
        .master_of(&store.keys().admission_set(p.id))
        .unwrap();
    assert_ne!(promoted, master, "the replica took the slot over");
    let admitted = testing::eventually(
        "the connection follows the failover",
        Duration::from_secs(10),
        || async { store.admitted_count(StockShards::single(p.id)).await.ok() },
    )
    .await;
    assert_eq!(admitted, 200, "every acknowledged admission survived");
    assert_eq!(
        store
            .admit(StockShards::single(p.id), user(1), Uuid::now_v7())
            .await
            .unwrap(),
        AdmitOutcome::InProgress,
        "the pending mark survived too"
    );
    // The promoted master has no replica yet: WAIT 1 cannot be met, so admissions fail closed
    // (undone, reported as lagging replicas) until the old master rejoins as its replica.
    let err = store
        .admit(StockShards::single(p.id), user(201), Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(timed_out(&err), "{err}");
    assert_eq!(set_size(&store, p.id).await, 200);

    cluster.restart(master).await;
    assert_eq!(
        store
            .admit(StockShards::single(p.id), user(201), Uuid::now_v7())
            .await
            .unwrap(),
        AdmitOutcome::Admitted
    );
}

/// The consumer's claim and the API's undo of one admission are atomic with each other: the
/// first one wins and the other learns it. A claimed admission cannot be undone (the API then
/// answers 202, the message being durable); an undone one cannot be claimed (the message is
/// dead-lettered); and a message whose admission was undone cannot claim the user's later
/// admission by another request.
#[tokio::test]
async fn a_claim_and_an_undo_of_one_admission_never_both_win() {
    let store = store().await;
    let p = policy(1, Some(10));
    store.prepare(&p).await.unwrap();
    let shards = StockShards::single(p.id);
    let (claimed_first, undone_first, readmitted) =
        (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (u, request) in [(1, claimed_first), (2, undone_first)] {
        assert_eq!(
            store.admit(shards, user(u), request).await.unwrap(),
            AdmitOutcome::Admitted
        );
    }

    // User 1: the consumer claims first; the undo then finds nothing, and a redelivery of the
    // message claims again (a durable admission).
    assert_eq!(
        store
            .claim(shards, &[(user(1), claimed_first)])
            .await
            .unwrap(),
        [true]
    );
    assert!(!store.undo(shards, user(1), claimed_first).await.unwrap());
    assert_eq!(
        store
            .claim(shards, &[(user(1), claimed_first)])
            .await
            .unwrap(),
        [true]
    );

    // User 2: the undo comes first; the message can no longer claim. Admitted again by a later
    // request, the old message still cannot claim that admission, which stays undoable.
    assert!(store.undo(shards, user(2), undone_first).await.unwrap());
    assert_eq!(
        store
            .claim(shards, &[(user(2), undone_first)])
            .await
            .unwrap(),
        [false]
    );
    assert_eq!(
        store.admit(shards, user(2), readmitted).await.unwrap(),
        AdmitOutcome::Admitted
    );
    assert_eq!(
        store
            .claim(
                shards,
                &[(user(2), undone_first), (user(3), Uuid::now_v7())]
            )
            .await
            .unwrap(),
        [false, false],
        "an undone admission's message, and a user never admitted"
    );
    assert!(store.undo(shards, user(2), readmitted).await.unwrap());
    assert_eq!(set_size(&store, p.id).await, 1);
}

/// Whether an admission failed for want of time: too few replica acknowledgements, or the
/// script's own call timed out.
fn timed_out(err: &AdmitError) -> bool {
    match err {
        AdmitError::ReplicasLagging(_) => true,
        AdmitError::AnswerLost(err) => err.is_timeout(),
        _ => false,
    }
}
