//! Redis side of issuance: the atomic admission script, its undo, the per-coupon keys, and,
//! each a handle of its own, the policy copy kept in Redis ([`PolicyCopies`]) and the
//! cache-invalidation channel ([`InvalidationBroadcast`]). The rebuild lock is
//! [`crate::issue::recovery::RebuildLock`].
//!
//! Key layout (`P` is [`crate::config::RedisConfig::key_prefix`]):
//! - `P coupon:{id}:issued` — set of admitted user ids (the admission set);
//! - `P coupon:{id}:stock`  — the stock bound, `total_quantity` or `-1` for unlimited;
//! - `P coupon:{id}:pending` — hash of the admissions not yet durable: user id → the request id
//!   that admitted them (see [Pending admissions](#pending-admissions));
//! - `P coupon:{id}:policy` — the policy as JSON, the layer between the local cache and MySQL,
//!   kept [`POLICY_COPY_TTL_SECS`] at most, so a copy whose delete or refresh was lost (a Redis
//!   write that failed after MySQL changed, a broadcast nobody heard) is dropped and read again
//!   from MySQL within that bound;
//! - `P coupon:{id}:fence` — written just before each round's `WAIT` when admissions wait for
//!   replicas (`admission/replicas.rs`), expires after 60 s;
//! - `P coupon:invalidation` — pub/sub channel of [`Invalidation`] messages.
//!
//! A coupon whose policy splits its stock into `K > 1` shards has the first four keys (plus a
//! transfer count, `lent` and `borrowed`) once per shard, shard `N > 0` under the hash tag
//! `{id:sN}` ([`StockShards`]); every method below that takes a [`StockShards`] reads or writes
//! all of them, or the user's home shard. How units move between shards is in
//! `admission/transfer.rs`.
//!
//! # Pending admissions
//! An admission is pending from the script that makes it until it is durable: its issue
//! message acknowledged by the broker, or its code redeem committed. While it is pending it may
//! still be undone (the publish failed), so a second request of the same user hears
//! [`AdmitOutcome::InProgress`], not [`AdmitOutcome::AlreadyIssued`], which would be a promise
//! that might not hold. The undo removes an admission only under the request id that made it
//! ([`AdmissionStore::undo`]), so it can never remove another request's real admission, and an
//! admission whose answer was lost (a Redis timeout) can be undone safely: if it never ran, the
//! undo does nothing. Whoever makes an admission durable clears its mark
//! ([`AdmissionStore::settle`]): coupon-api after the broker's acknowledgement (in the
//! background), the code redeem after its commit, and coupon-consumer for every user it
//! persisted (a mark whose clearing failed, or one of a message re-published by
//! reconciliation). A mark left behind only makes a repeat request hear `InProgress`;
//! reconciliation clears the marks of users with a row.
//!
//! The `{id}` hash tag keeps each coupon's keys in one Redis Cluster slot, which a multi-key
//! script requires (<https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags>).

use std::future::Future;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncCommands, Script};
use uuid::Uuid;

use crate::domain::{CouponPolicy, UserId};
use crate::store::redis::RedisConnection;
use crate::telemetry::names;

mod broadcast;
mod copies;
mod keys;
mod reads;
mod replicas;
mod transfer;
pub use broadcast::InvalidationBroadcast;
pub use copies::{PolicyCopies, POLICY_COPY_TTL_SECS};
pub use keys::*;
pub use replicas::NotReplicated;
use replicas::ReplicaAcks;
use transfer::{TransferScripts, MAX_TRANSFERS_PER_ADMISSION};

/// The atomic admission script (`admission/admit.lua`): `KEYS[1]` the admission set, `KEYS[2]`
/// the stock bound, `KEYS[3]` the pending admissions, `ARGV[1]` the user id, `ARGV[2]` the
/// request id; returns 1 admitted, -1 already admitted, -2 sold out, -3 no stock key, -4
/// already admitted and still pending.
pub const ADMIT_SCRIPT: &str = include_str!("admission/admit.lua");

/// What the admission script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// The user was added to the admission set; an issue message must follow.
    Admitted,
    /// The user was already in the set, by an admission that is durable.
    AlreadyIssued,
    /// The user was already in the set by another request whose admission is still pending
    /// (it may yet be undone).
    InProgress,
    /// The set already holds `total_quantity` members.
    SoldOut,
    /// The coupon has no stock key in Redis: its state was never prepared or was lost.
    NotPrepared,
}

/// Why [`AdmissionStore::admit`] failed, and so whether the request's admission may be in
/// Redis. A caller decides its compensation (an undo under the same request id) from
/// [`AdmitError::may_have_admitted`], which the store answers where it knows what it sent.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Nothing of this request was admitted: Redis answered the script with an error, refused
    /// the connection or was not reached, or a transfer between stock shards before the
    /// admission failed.
    #[error("the admission did not run: {0}")]
    NotRun(#[source] redis::RedisError),
    /// The script was sent but its answer was lost (the call timed out, or the connection
    /// dropped after sending): it may have admitted the user.
    #[error("the admission's answer was lost: {0}")]
    AnswerLost(#[source] redis::RedisError),
    /// The script admitted the user, but too few replicas acknowledged it in time
    /// ([`AdmissionStore::with_replica_acks`]); it was undone here once, best effort, so it
    /// may still be there.
    #[error(transparent)]
    ReplicasLagging(NotReplicated),
    /// Units lent to the user's home shard by another were not acknowledged by the donor's
    /// replicas in time: nothing of this request was admitted (the units wait for
    /// reconciliation, if the loan survived).
    #[error("a transfer between stock shards: {0}")]
    TransferNotReplicated(#[source] NotReplicated),
    /// Every unit moved to the user's home shard was taken by others first,
    /// [`MAX_TRANSFERS_PER_ADMISSION`] times: nothing was admitted; asking again may succeed.
    #[error("every unit moved to this shard was taken by others first; try again")]
    Contended,
    /// The script answered a code it never returns (after it ran).
    #[error("the admission script returned an unknown code: {0}")]
    UnknownAnswer(i64),
}

impl AdmitError {
    /// Whether the request's admission may be in Redis, so that an undo under its request id
    /// must follow (the undo removes it if it is there and nothing otherwise).
    pub fn may_have_admitted(&self) -> bool {
        match self {
            Self::AnswerLost(_) | Self::ReplicasLagging(_) | Self::UnknownAnswer(_) => true,
            Self::NotRun(_) | Self::TransferNotReplicated(_) | Self::Contended => false,
        }
    }

    /// Classifies a failed script call: a timeout or a connection dropped after sending lost
    /// the answer; any other error means the script did not run.
    fn of_script(err: redis::RedisError) -> Self {
        if err.is_timeout() || err.is_connection_dropped() {
            Self::AnswerLost(err)
        } else {
            Self::NotRun(err)
        }
    }
}

/// Handle on the Redis admission state; cheap to clone (one multiplexed connection).
///
/// Methods that take a [`StockShards`] work on every shard of the coupon, or on the user's home
/// shard; build it from the policy ([`CouponPolicy::stock_shards`]), or from the coupon id and
/// the count an issue message carries. A wrong count reads and writes the wrong keys.
#[derive(Clone)]
pub struct AdmissionStore {
    conn: RedisConnection,
    keys: RedisKeys,
    // Behind `Arc`: a `Script` owns its source and hash, which a clone would copy.
    admit: Arc<Script>,
    undo: Arc<Script>,
    claim: Arc<Script>,
    transfers: TransferScripts,
    replica_acks: Option<ReplicaAcks>,
}

impl AdmissionStore {
    /// Wraps a connection; `keys` names this deployment's keys.
    pub fn new(conn: RedisConnection, keys: RedisKeys) -> Self {
        Self {
            conn,
            keys,
            admit: Arc::new(Script::new(ADMIT_SCRIPT)),
            undo: Arc::new(Script::new(include_str!("admission/undo.lua"))),
            claim: Arc::new(Script::new(include_str!("admission/claim.lua"))),
            transfers: TransferScripts::default(),
            replica_acks: None,
        }
    }

    /// Makes [`Self::admit`] wait until `replicas` replicas hold each admission, for
    /// `timeout` at most (`WAIT`, in rounds on `waits`, a connection of its own that nothing
    /// else uses: a `WAIT` blocks its connection; see `admission/replicas.rs`); 0 replicas
    /// (the default) does not wait and leaves `waits` unused. An admission not acknowledged in
    /// time is undone and reported as a timeout, so no caller promises a unit that a failover
    /// could lose. Must be called within a Tokio runtime (the rounds run as a task).
    #[must_use]
    pub fn with_replica_acks(
        mut self,
        waits: RedisConnection,
        replicas: u32,
        timeout: Duration,
    ) -> Self {
        self.replica_acks =
            (replicas > 0).then(|| ReplicaAcks::start(waits, self.keys.clone(), replicas, timeout));
        self
    }

    /// The key names in use.
    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// Runs the atomic admission script (`admission/admit.lua`) for the request `request` on
    /// `user`'s home shard: duplicate check, stock check, then `SADD` and the pending mark, all
    /// in one script execution. The script is sent by `EVALSHA` and re-sent by `EVAL` when
    /// Redis answers `NOSCRIPT`. When the home shard sold out and the coupon has others, units
    /// are moved from a shard that has some (`admission/transfer.rs`) and the script runs
    /// again; [`AdmitOutcome::SoldOut`] means no shard had a free unit when asked.
    ///
    /// With [`Self::with_replica_acks`], an admission is answered only once enough replicas
    /// acknowledged it.
    ///
    /// # Errors
    /// An [`AdmitError`], which says whether the admission may be in Redis
    /// ([`AdmitError::may_have_admitted`]): after a lost answer the script may still have run,
    /// and [`Self::undo`] with the same `request` removes the admission if it did and nothing
    /// if it did not.
    pub async fn admit(
        &self,
        shards: StockShards,
        user: UserId,
        request: Uuid,
    ) -> Result<AdmitOutcome, AdmitError> {
        let home = shards.home(user);
        for _ in 0..MAX_TRANSFERS_PER_ADMISSION {
            let outcome = self.admit_in(home, user, request).await?;
            if outcome != AdmitOutcome::SoldOut || shards.count() == 1 {
                return Ok(outcome);
            }
            if !self.take_units(shards, home).await? {
                // No free unit anywhere, and every unit lent to `home` is in its stock now: a
                // concurrent transfer's second step may have landed since the first run.
                return self.admit_in(home, user, request).await;
            }
        }
        Err(AdmitError::Contended)
    }

    /// One run of the admission script on `home`.
    async fn admit_in(
        &self,
        home: Shard,
        user: UserId,
        request: Uuid,
    ) -> Result<AdmitOutcome, AdmitError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.admit.key(self.keys.admission_set(home));
        invocation
            .key(self.keys.stock(home))
            .key(self.keys.pending(home))
            .arg(user.get())
            .arg(request.as_hyphenated().to_string());
        let code: i64 = timed_script("admit", invocation.invoke_async(&mut conn))
            .await
            .map_err(AdmitError::of_script)?;
        match code {
            1 => {
                if let Some(acks) = &self.replica_acks {
                    if let Err(why) = acks.wait(home, Some((user, request))).await {
                        count_error("wait");
                        // Best effort: the caller undoes again under the same request id
                        // (`AdmitError::may_have_admitted`).
                        let _ = self.undo_in(home, user, request).await;
                        return Err(AdmitError::ReplicasLagging(why));
                    }
                }
                Ok(AdmitOutcome::Admitted)
            }
            -1 => Ok(AdmitOutcome::AlreadyIssued),
            -2 => Ok(AdmitOutcome::SoldOut),
            -3 => Ok(AdmitOutcome::NotPrepared),
            -4 => Ok(AdmitOutcome::InProgress),
            other => Err(AdmitError::UnknownAnswer(other)),
        }
    }

    /// Undoes the admission `request` made of `user` (`admission/undo.lua`), if it is still
    /// pending under that request id; returns whether one was removed. Used when the issue
    /// message could not be published, a code redeem rolled back, or the admission's answer was
    /// lost. Never removes another request's admission or a durable one.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn undo(
        &self,
        shards: StockShards,
        user: UserId,
        request: Uuid,
    ) -> redis::RedisResult<bool> {
        self.undo_in(shards.home(user), user, request).await
    }

    async fn undo_in(&self, home: Shard, user: UserId, request: Uuid) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let mut invocation = self.undo.key(self.keys.admission_set(home));
        invocation
            .key(self.keys.pending(home))
            .arg(user.get())
            .arg(request.as_hyphenated().to_string());
        let removed: i64 = timed_script("undo", invocation.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    /// Claims the admissions of issue messages for the consumer, before it writes their rows
    /// (`admission/claim.lua`, one script per home shard, atomic with [`Self::undo`]): for
    /// each `(user, request id)` pair, in order, whether the message may become a row. Yes
    /// when the user's admission is pending under the message's request id (the mark is
    /// cleared: from then on the admission is durable, and an undo of that request removes
    /// nothing and returns `false`), or when the user is a member without a pending mark (a
    /// durable admission, a redelivery). No when the user is no member (the admission was
    /// undone: its client heard 503) or is pending under another request (this message's
    /// admission was undone and the user admitted again since). Safe to retry after a lost
    /// answer: a claim that ran leaves a member without a mark, which claims again. An empty
    /// slice asks nothing.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn claim(
        &self,
        shards: StockShards,
        messages: &[(UserId, Uuid)],
    ) -> redis::RedisResult<Vec<bool>> {
        let mut by_home: std::collections::BTreeMap<u16, (Shard, Vec<usize>)> =
            std::collections::BTreeMap::new();
        for (i, &(user, _)) in messages.iter().enumerate() {
            let home = shards.home(user);
            by_home
                .entry(home.index)
                .or_insert((home, Vec::new()))
                .1
                .push(i);
        }
        let mut claimed = vec![false; messages.len()];
        let mut conn = self.conn.clone();
        for (home, indexes) in by_home.into_values() {
            let mut invocation = self.claim.key(self.keys.admission_set(home));
            invocation.key(self.keys.pending(home));
            for &i in &indexes {
                let (user, request) = messages[i];
                invocation
                    .arg(user)
                    .arg(request.as_hyphenated().to_string());
            }
            let answers: Vec<i64> =
                timed_script("claim", invocation.invoke_async(&mut conn)).await?;
            if answers.len() != indexes.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "claim script returned the wrong number of answers",
                    format!("{} for {}", answers.len(), indexes.len()),
                )));
            }
            for (i, answer) in indexes.into_iter().zip(answers) {
                claimed[i] = answer != 0;
            }
        }
        Ok(claimed)
    }

    /// Marks the admissions of `users` durable (each holds a row): clears their pending marks,
    /// 10,000 per `HDEL` and home shard, whichever request made them. Returns how many marks
    /// were cleared. An empty slice asks nothing.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn settle(&self, shards: StockShards, users: &[UserId]) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let mut cleared = 0;
        for (shard, users) in shards.by_home(users) {
            for chunk in users.chunks(10_000) {
                cleared += conn
                    .hdel::<_, _, usize>(self.keys.pending(shard), chunk)
                    .await?;
            }
        }
        Ok(cleared)
    }

    /// Initialises a NEW coupon's Redis state: per shard, an empty admission set and its stock
    /// bound (its allotment of the stock), in one `MULTI`, and with shard 0 the policy copy.
    /// Called before the policy's MySQL row commits, so nobody can have been admitted yet;
    /// anything found under these keys is stale (left by an earlier database that reused the
    /// id) and is cleared.
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or the policy does not serialise.
    pub async fn prepare(&self, policy: &CouponPolicy) -> redis::RedisResult<()> {
        let json = serde_json::to_string(policy).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "policy JSON", e.to_string()))
        })?;
        let shards = policy.stock_shards();
        for shard in shards.all() {
            let stock = stock_value(
                policy
                    .total_quantity()
                    .map(|total| shards.allotment(total, shard.index)),
            );
            let mut pipe = transfer::reset_shard(&self.keys, shard, stock);
            if shard.index == 0 {
                pipe.set_ex(self.keys.policy(policy.id), &json, POLICY_COPY_TTL_SECS)
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.conn.clone()).await?;
        }
        Ok(())
    }

    /// Restores a lost admission state: adds `members` to the set (10,000 per `SADD`), then
    /// writes the stock bound only if no stock key exists (`SET NX`) and the policy copy.
    /// Never deletes: while the stock key is absent nobody can be admitted, so adding members
    /// first is safe, and a set another rebuild already reopened only gains users who hold
    /// (or will hold) a row. Returns whether this call wrote a stock key. A sharded coupon's
    /// shards are restored as `admission/transfer.rs` says (`restore_shards`).
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or the policy does not serialise.
    pub async fn restore(
        &self,
        policy: &CouponPolicy,
        members: &[UserId],
    ) -> redis::RedisResult<bool> {
        PolicyCopies::new(self.conn.clone(), self.keys.clone())
            .store(policy)
            .await?;
        if policy.stock_shards().count() > 1 {
            return self.restore_shards(policy, members).await;
        }
        let shard = Shard::from(policy.id);
        self.add_shard_members(shard, members).await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.stock(shard))
            .arg(stock_value(policy.total_quantity()))
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Adds `members` to their home shards' admission sets, 10,000 per `SADD` (reconciliation
    /// and rebuild only: the issue path admits through the script).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn add_members(
        &self,
        shards: StockShards,
        members: &[UserId],
    ) -> redis::RedisResult<()> {
        for (shard, users) in shards.by_home(members) {
            self.add_shard_members(shard, &users).await?;
        }
        Ok(())
    }

    async fn add_shard_members(&self, shard: Shard, members: &[UserId]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        for chunk in members.chunks(10_000) {
            conn.sadd::<_, _, ()>(self.keys.admission_set(shard), chunk)
                .await?;
        }
        Ok(())
    }

    /// `PING`, for readiness checks.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map(drop)
    }
}

/// The stock key's value for a stock of `units` (count), `None` meaning unlimited: the admission
/// script reads `-1` as no bound (`admission/admit.lua`). The only place the encoding lives.
pub(crate) fn stock_value(units: Option<i64>) -> i64 {
    units.unwrap_or(-1)
}

/// Runs one script call, recording its round trip in `coupon_redis_script_duration_seconds`
/// and a failure in `coupon_redis_errors_total`, both labelled `script`/`op`.
async fn timed_script<T>(
    script: &'static str,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!(names::REDIS_SCRIPT_DURATION, "script" => script).record(started.elapsed());
    if result.is_err() {
        count_error(script);
    }
    result
}

fn count_error(op: &'static str) {
    metrics::counter!(names::REDIS_ERRORS, "op" => op).increment(1);
}

/// Registers the issue path's Redis series (`script`: `admit`, `undo`, `wait` (the replica
/// acknowledgements), `lend` and `borrow` (transfers between stock shards); `op`: those plus
/// `is_admitted`, `policy`), so they are exported before the first call.
pub fn register_metrics() {
    for script in ["admit", "undo", "wait", "lend", "borrow"] {
        let _ = metrics::histogram!(names::REDIS_SCRIPT_DURATION, "script" => script);
    }
    for op in [
        "admit",
        "undo",
        "wait",
        "lend",
        "borrow",
        "is_admitted",
        "policy",
    ] {
        metrics::counter!(names::REDIS_ERRORS, "op" => op).increment(0);
    }
}
