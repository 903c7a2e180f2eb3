//! One coupon's stock split into shards, against a real Redis (a single node, or the cluster
//! in `make test`'s second run): the race, transfers cut in half, undos and the rebuild.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::domain::{CouponPolicy, UserId};
use coupon_core::issue::admission::{AdmissionStore, AdmitOutcome, RedisKeys, Shard, StockShards};
use coupon_core::store::redis::RedisConnection;
use coupon_core::testing;
use futures::StreamExt;
use redis::AsyncCommands;
use uuid::Uuid;

async fn store() -> (AdmissionStore, RedisConnection) {
    let stores = testing::isolated_stores();
    let conn = stores
        .connect_redis(Duration::from_secs(5))
        .await
        .expect("Redis must run on REDIS_URL (make up)");
    let keys = RedisKeys::new(stores.redis.key_prefix);
    (AdmissionStore::new(conn.clone(), keys), conn)
}

/// A second handle on `store`'s keys over a connection of its own (another API instance).
async fn second_handle(store: &AdmissionStore) -> AdmissionStore {
    let conn = testing::isolated_stores()
        .connect_redis(Duration::from_secs(5))
        .await
        .unwrap();
    AdmissionStore::new(conn, store.keys().clone())
}

fn sharded(id: i64, total: i64, shards: u16) -> CouponPolicy {
    CouponPolicy {
        stock: coupon_core::domain::Stock::Limited {
            total,
            shards: coupon_core::domain::ShardCount::parse(shards).unwrap(),
        },
        ..testing::policy_row(id, Some(total))
    }
}

/// Each shard's stock bound and admission set size, by index.
async fn shard_state(
    store: &AdmissionStore,
    conn: &RedisConnection,
    shards: StockShards,
) -> Vec<(i64, i64)> {
    let mut conn = conn.clone();
    let mut state = Vec::new();
    for shard in shards.all() {
        let stock: i64 = conn.get(store.keys().stock(shard)).await.unwrap();
        let admitted: i64 = conn.scard(store.keys().admission_set(shard)).await.unwrap();
        state.push((stock, admitted));
    }
    state
}

/// Races `users` (each asking twice, on two store handles) for `policy`; returns the users
/// answered `Admitted`, once per answer.
async fn race(stores: &[AdmissionStore], policy: &CouponPolicy, users: &[i64]) -> Vec<i64> {
    let shards = policy.stock_shards();
    let asks = users.iter().flat_map(|&u| [(u, 0), (u, 1)]);
    let answers: Vec<(i64, AdmitOutcome)> = futures::stream::iter(asks)
        .map(|(user, handle)| {
            let store = &stores[handle % stores.len()];
            async move {
                let outcome = store
                    .admit(shards, UserId::parse(user).unwrap(), Uuid::now_v7())
                    .await
                    .unwrap();
                (user, outcome)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    answers
        .into_iter()
        .filter(|(_, outcome)| *outcome == AdmitOutcome::Admitted)
        .map(|(user, _)| user)
        .collect()
}

#[tokio::test]
async fn four_shards_1000_units_10000_users_admit_exactly_1000_once_each_using_every_shard() {
    let (store, conn) = store().await;
    let second = second_handle(&store).await;
    let policy = sharded(1, 1_000, 4);
    let shards = policy.stock_shards();
    store.prepare(&policy).await.unwrap();
    assert_eq!(
        shard_state(&store, &conn, shards).await,
        [(250, 0); 4],
        "each shard starts with its allotment"
    );

    let users: Vec<i64> = (1..=10_000).collect();
    let admitted = race(&[store.clone(), second], &policy, &users).await;

    let distinct: BTreeSet<i64> = admitted.iter().copied().collect();
    assert_eq!(admitted.len(), 1_000, "answers Admitted");
    assert_eq!(distinct.len(), 1_000, "nobody admitted twice");
    let members: BTreeSet<i64> = store
        .members(shards)
        .await
        .unwrap()
        .into_iter()
        .map(UserId::get)
        .collect();
    assert_eq!(
        members, distinct,
        "the sets hold exactly the users told Admitted"
    );
    assert_eq!(store.admitted_count(shards).await.unwrap(), 1_000);
    let state = shard_state(&store, &conn, shards).await;
    for (index, &(stock, count)) in state.iter().enumerate() {
        assert_eq!(stock, count, "shard {index} has units left: {state:?}");
        assert!(count > 0, "shard {index} admitted nobody: {state:?}");
    }
    for user in &distinct {
        let home = shards.home(UserId::parse(*user).unwrap());
        assert!(
            conn.clone()
                .sismember::<_, _, bool>(store.keys().admission_set(home), user)
                .await
                .unwrap(),
            "user {user} is not in their home shard"
        );
    }
    // Sold out everywhere: a newcomer hears SoldOut, a holder AlreadyIssued or InProgress.
    let newcomer = UserId::parse(20_000).unwrap();
    assert_eq!(
        store.admit(shards, newcomer, Uuid::now_v7()).await.unwrap(),
        AdmitOutcome::SoldOut
    );
    let holder = UserId::parse(admitted[0]).unwrap();
    assert_eq!(
        store.admit(shards, holder, Uuid::now_v7()).await.unwrap(),
        AdmitOutcome::InProgress
    );
}

#[tokio::test]
async fn a_sold_out_shard_takes_units_from_the_others_until_none_is_left() {
    let (store, conn) = store().await;
    let policy = sharded(2, 9, 3);
    let shards = policy.stock_shards();
    store.prepare(&policy).await.unwrap();
    // Every user of one home shard: that shard alone must draw the other shards' units.
    let users = users_of(shards, 1, 1, 12);
    let mut answers = Vec::new();
    for &user in &users {
        let user = UserId::parse(user).unwrap();
        answers.push(store.admit(shards, user, Uuid::now_v7()).await.unwrap());
    }
    let admitted = answers
        .iter()
        .filter(|a| **a == AdmitOutcome::Admitted)
        .count();
    assert_eq!(admitted, 9, "{answers:?}");
    assert_eq!(answers[9..], [AdmitOutcome::SoldOut; 3]);
    assert_eq!(
        shard_state(&store, &conn, shards).await,
        [(0, 0), (9, 9), (0, 0)]
    );
}

#[tokio::test]
async fn an_undone_admission_returns_its_unit_to_the_home_shard() {
    let (store, conn) = store().await;
    let policy = sharded(3, 4, 2);
    let shards = policy.stock_shards();
    store.prepare(&policy).await.unwrap();
    let user = UserId::parse(5).unwrap();
    let request = Uuid::now_v7();
    assert_eq!(
        store.admit(shards, user, request).await.unwrap(),
        AdmitOutcome::Admitted
    );
    assert!(store.is_admitted(shards, user).await.unwrap());
    assert_eq!(store.pending_users(shards).await.unwrap(), [user]);
    assert!(store.undo(shards, user, request).await.unwrap());
    assert!(!store.is_admitted(shards, user).await.unwrap());
    assert_eq!(store.admitted_count(shards).await.unwrap(), 0);
    let state = shard_state(&store, &conn, shards).await;
    assert_eq!(state.iter().map(|(stock, _)| stock).sum::<i64>(), 4);
}

/// Deletes every key of `shard`, as a Redis that lost its data would.
async fn lose(store: &AdmissionStore, conn: &RedisConnection, shard: Shard) {
    let keys = store.keys();
    let _: () = conn
        .clone()
        .del(&[
            keys.stock(shard),
            keys.admission_set(shard),
            keys.pending(shard),
            keys.lent(shard),
            keys.borrowed(shard),
        ])
        .await
        .unwrap();
}

/// Runs the first step of a transfer (the donor's loan) without the second, as a process
/// killed between the two would leave it.
async fn lend_only(
    store: &AdmissionStore,
    conn: &RedisConnection,
    shards: StockShards,
    donor: u16,
    recipient: u16,
) -> (i64, i64) {
    let donor = shards.shard(donor);
    redis::Script::new(include_str!("../src/issue/admission/lend.lua"))
        .key(store.keys().admission_set(donor))
        .key(store.keys().stock(donor))
        .key(store.keys().lent(donor))
        .arg(recipient)
        .invoke_async(&mut conn.clone())
        .await
        .unwrap()
}

/// `count` users whose home is shard `index`, from user id `from` on.
fn users_of(shards: StockShards, index: u16, from: i64, count: usize) -> Vec<i64> {
    (from..)
        .filter(|&u| shards.home(UserId::parse(u).unwrap()).index == index)
        .take(count)
        .collect()
}

#[tokio::test]
async fn a_transfer_cut_in_half_only_under_issues_until_reconciliation_completes_it() {
    let (store, conn) = store().await;
    let policy = sharded(4, 20, 2);
    let shards = policy.stock_shards();
    store.prepare(&policy).await.unwrap();
    let (lent_now, lent) = lend_only(&store, &conn, shards, 0, 1).await;
    assert_eq!((lent_now, lent), (5, 5), "half of shard 0's 10 free units");
    // The 5 units are nowhere. Users of shard 0 (the donor: no admission of shard 1 comes to
    // finish the transfer) get 15, not 20.
    let users = users_of(shards, 0, 1, 40);
    let admitted = race(std::slice::from_ref(&store), &policy, &users).await;
    assert_eq!(admitted.len(), 15);
    // Completing the transfer (twice: it is idempotent) gives the 5 units to shard 1.
    assert_eq!(store.complete_transfers(shards).await.unwrap(), 5);
    assert_eq!(store.complete_transfers(shards).await.unwrap(), 0);
    let more = users_of(shards, 0, 1_000, 40);
    let admitted_later = race(std::slice::from_ref(&store), &policy, &more).await;
    assert_eq!(admitted_later.len(), 5);
    assert_eq!(store.admitted_count(shards).await.unwrap(), 20);
}

#[tokio::test]
async fn a_later_transfer_from_the_same_donor_completes_an_earlier_cut_one() {
    let (store, conn) = store().await;
    let policy = sharded(5, 8, 2);
    let shards = policy.stock_shards();
    store.prepare(&policy).await.unwrap();
    // Shard 0 lends 2 of its 4 units to shard 1, and the borrow never runs.
    assert_eq!(lend_only(&store, &conn, shards, 0, 1).await, (2, 2));
    // Users of shard 1 take its 4 units; the next transfer brings the 2 cut ones with its own.
    let users = users_of(shards, 1, 1, 10);
    let admitted = race(std::slice::from_ref(&store), &policy, &users).await;
    assert_eq!(admitted.len(), 8, "every unit reached a user of shard 1");
    assert_eq!(shard_state(&store, &conn, shards).await, [(0, 0), (8, 8)]);
}

#[tokio::test]
async fn a_rebuild_of_every_shard_keeps_the_holders_and_shares_the_units_left() {
    let (store, conn) = store().await;
    let policy = sharded(6, 100, 4);
    let shards = policy.stock_shards();
    store.prepare(&policy).await.unwrap();
    let first: Vec<i64> = (1..=60).collect();
    let admitted = race(std::slice::from_ref(&store), &policy, &first).await;
    assert_eq!(admitted.len(), 60);
    // Redis loses everything (a restart without persistence).
    for shard in shards.all() {
        lose(&store, &conn, shard).await;
    }
    assert!(!store.is_prepared(shards).await.unwrap());
    let rebuilt = Arc::new(admitted);
    assert!(store.restore(&policy, &ids(&rebuilt)).await.unwrap());
    assert!(store.is_prepared(shards).await.unwrap());
    let state = shard_state(&store, &conn, shards).await;
    assert_eq!(
        state.iter().map(|(stock, _)| stock).sum::<i64>(),
        100,
        "{state:?}"
    );
    // Nobody twice, and exactly the 40 units left go.
    let again: Vec<i64> = (1..=200).collect();
    let admitted_after = race(std::slice::from_ref(&store), &policy, &again).await;
    assert_eq!(admitted_after.len(), 40);
    assert!(admitted_after.iter().all(|u| !rebuilt.contains(u)));
    assert_eq!(store.admitted_count(shards).await.unwrap(), 100);
}

#[tokio::test]
async fn a_rebuild_of_one_lost_shard_never_over_issues() {
    let (store, conn) = store().await;
    let policy = sharded(7, 40, 2);
    let shards = policy.stock_shards();
    store.prepare(&policy).await.unwrap();
    // Users of shard 0 only, so shard 0 borrows from shard 1 on the way.
    let users = users_of(shards, 0, 1, 25);
    let admitted = race(std::slice::from_ref(&store), &policy, &users).await;
    assert_eq!(admitted.len(), 25);
    // Shard 0 comes back empty (its master restarted without data and without a replica).
    lose(&store, &conn, shards.shard(0)).await;
    assert!(store.restore(&policy, &ids(&admitted)).await.unwrap());
    assert_eq!(store.admitted_count(shards).await.unwrap(), 25);
    // Everybody races again: the holders are refused, and at most the 15 units nobody held go.
    let everyone: Vec<i64> = (1..=400).collect();
    let more = race(std::slice::from_ref(&store), &policy, &everyone).await;
    assert!(more.iter().all(|u| !admitted.contains(u)));
    assert!(
        more.len() <= 15,
        "{} admitted after the rebuild",
        more.len()
    );
    assert!(store.admitted_count(shards).await.unwrap() <= 40);
    // Reconciliation's transfer pass finds nothing to add that would go over the stock.
    store.complete_transfers(shards).await.unwrap();
    let last = race(std::slice::from_ref(&store), &policy, &everyone).await;
    assert!(more.len() + last.len() <= 15);
}

/// User ids from integers (test data).
fn ids(raw: &[i64]) -> Vec<UserId> {
    raw.iter().map(|&id| UserId::parse(id).unwrap()).collect()
}
