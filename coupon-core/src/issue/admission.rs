//! Redis side of issuance: the atomic admission script, its undo, the per-coupon keys, the policy
//! copy kept in Redis and the cache-invalidation channel.
//!
//! Key layout (`P` is [`crate::config::StoreConfig::redis_key_prefix`]):
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

/// Longest life (s) of a coupon's Redis policy copy. A deleted or suspended policy is
/// unissuable on every instance within this bound plus the local cache's `POLICY_CACHE_TTL_MS`
/// even when its announcement was lost; while it lives, each instance's local cache misses
/// read the copy instead of MySQL (one MySQL read per coupon and instance per bound).
pub const POLICY_COPY_TTL_SECS: u64 = 60;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncCommands, Script};
use uuid::Uuid;

use crate::domain::{CouponId, CouponPolicy, UserId};
use crate::store::redis::RedisConnection;
use crate::telemetry::names;

mod keys;
mod replicas;
pub use keys::*;
use replicas::ReplicaAcks;

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

/// Handle on the Redis admission state; cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct AdmissionStore {
    conn: RedisConnection,
    keys: RedisKeys,
    // Behind `Arc`: a `Script` owns its source and hash, which a clone would copy.
    admit: Arc<Script>,
    undo: Arc<Script>,
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

    /// Runs the atomic admission script (`admission/admit.lua`) for the request `request`:
    /// duplicate check, stock check, then `SADD` and the pending mark, all in one script
    /// execution. The script is sent by `EVALSHA` and re-sent by `EVAL` when Redis answers
    /// `NOSCRIPT`.
    ///
    /// With [`Self::with_replica_acks`], an admission is answered only once enough replicas
    /// acknowledged it.
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or answered something the script never returns. After
    /// a timeout the script may still have run: [`Self::undo`] with the same `request` removes
    /// the admission if it did, and nothing if it did not. Too few replica acknowledgements
    /// count as a timeout (an [`std::io::ErrorKind::TimedOut`] error), after one undo here.
    pub async fn admit(
        &self,
        coupon: CouponId,
        user: UserId,
        request: Uuid,
    ) -> redis::RedisResult<AdmitOutcome> {
        let mut conn = self.conn.clone();
        let mut invocation = self.admit.key(self.keys.admission_set(coupon));
        invocation
            .key(self.keys.stock(coupon))
            .key(self.keys.pending(coupon))
            .arg(user.get())
            .arg(request.as_hyphenated().to_string());
        let code: i64 = timed_script("admit", invocation.invoke_async(&mut conn)).await?;
        match code {
            1 => {
                if let Some(acks) = &self.replica_acks {
                    if let Err(err) = acks.wait(coupon, user, request).await {
                        count_error("wait");
                        // Best effort: the caller undoes again under the same request id on a
                        // timeout.
                        let _ = self.undo(coupon, user, request).await;
                        return Err(err);
                    }
                }
                Ok(AdmitOutcome::Admitted)
            }
            -1 => Ok(AdmitOutcome::AlreadyIssued),
            -2 => Ok(AdmitOutcome::SoldOut),
            -3 => Ok(AdmitOutcome::NotPrepared),
            -4 => Ok(AdmitOutcome::InProgress),
            other => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "admission script returned an unknown code",
                other.to_string(),
            ))),
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
        coupon: CouponId,
        user: UserId,
        request: Uuid,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let mut invocation = self.undo.key(self.keys.admission_set(coupon));
        invocation
            .key(self.keys.pending(coupon))
            .arg(user.get())
            .arg(request.as_hyphenated().to_string());
        let removed: i64 = timed_script("undo", invocation.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    /// Marks the admissions of `users` durable (each holds a row): clears their pending marks,
    /// 10,000 per `HDEL`, whichever request made them. Returns how many marks were cleared.
    /// An empty slice asks nothing.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn settle(&self, coupon: CouponId, users: &[i64]) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let mut cleared = 0;
        for chunk in users.chunks(10_000) {
            cleared += conn
                .hdel::<_, _, usize>(self.keys.pending(coupon), chunk)
                .await?;
        }
        Ok(cleared)
    }

    /// The users whose admission to `coupon` is still pending (`HKEYS`; reconciliation only:
    /// the hash holds the admissions in flight, a few thousand at most in a drop).
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or a field is not an integer.
    pub async fn pending_users(&self, coupon: CouponId) -> redis::RedisResult<Vec<i64>> {
        self.conn.clone().hkeys(self.keys.pending(coupon)).await
    }

    /// Initialises a NEW coupon's Redis state: an empty admission set, its stock bound and its
    /// policy copy, in one `MULTI`. Called before the policy's MySQL row commits, so nobody can
    /// have been admitted yet; anything found under these keys is stale (left by an earlier
    /// database that reused the id) and is cleared.
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or the policy does not serialise.
    pub async fn prepare(&self, policy: &CouponPolicy) -> redis::RedisResult<()> {
        let json = serde_json::to_string(policy).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "policy JSON", e.to_string()))
        })?;
        redis::pipe()
            .atomic()
            .del(self.keys.admission_set(policy.id))
            .ignore()
            .del(self.keys.pending(policy.id))
            .ignore()
            .set(self.keys.stock(policy.id), policy.stock_bound())
            .ignore()
            .set_ex(self.keys.policy(policy.id), json, POLICY_COPY_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// The policy copy kept in Redis, if any (a copy that no longer parses counts as absent).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn policy(&self, coupon: CouponId) -> redis::RedisResult<Option<CouponPolicy>> {
        let json: Option<String> = self
            .conn
            .clone()
            .get(self.keys.policy(coupon))
            .await
            .inspect_err(|_| count_error("policy"))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Stores the policy copy (after a MySQL read filled the gap, or a change), for
    /// [`POLICY_COPY_TTL_SECS`].
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or the policy does not serialise.
    pub async fn store_policy(&self, policy: &CouponPolicy) -> redis::RedisResult<()> {
        let json = serde_json::to_string(policy).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "policy JSON", e.to_string()))
        })?;
        self.conn
            .clone()
            .set_ex(self.keys.policy(policy.id), json, POLICY_COPY_TTL_SECS)
            .await
    }

    /// Drops the policy copy (after a soft delete), so loaders fall through to MySQL.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn remove_policy(&self, coupon: CouponId) -> redis::RedisResult<()> {
        self.conn.clone().del(self.keys.policy(coupon)).await
    }

    /// Whether `user` is in `coupon`'s admission set.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn is_admitted(&self, coupon: CouponId, user: UserId) -> redis::RedisResult<bool> {
        self.conn
            .clone()
            .sismember(self.keys.admission_set(coupon), user.get())
            .await
            .inspect_err(|_| count_error("is_admitted"))
    }

    /// Which of `users` are in `coupon`'s admission set, in order (`SMISMEMBER`, Redis 6.2+;
    /// one round trip). An empty slice asks nothing.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn admitted_among(
        &self,
        coupon: CouponId,
        users: &[i64],
    ) -> redis::RedisResult<Vec<bool>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("SMISMEMBER")
            .arg(self.keys.admission_set(coupon))
            .arg(users)
            .query_async(&mut self.conn.clone())
            .await
            .inspect_err(|_| count_error("admitted_among"))
    }

    /// Size of `coupon`'s admission set (`SCARD`, count).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn admitted_count(&self, coupon: CouponId) -> redis::RedisResult<i64> {
        self.conn
            .clone()
            .scard(self.keys.admission_set(coupon))
            .await
    }

    /// Every member of `coupon`'s admission set (user ids), read with `SSCAN … COUNT 1000` so
    /// a large set never blocks Redis the way one `SMEMBERS` would
    /// (<https://redis.io/docs/latest/commands/scan/>: a full iteration returns every member
    /// present from start to end at least once; members may repeat, the caller de-duplicates).
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or a member is not an integer.
    pub async fn members(&self, coupon: CouponId) -> redis::RedisResult<Vec<i64>> {
        let mut conn = self.conn.clone();
        let mut scan = redis::cmd("SSCAN");
        scan.arg(self.keys.admission_set(coupon))
            .cursor_arg(0)
            .arg("COUNT")
            .arg(1000);
        let mut iter = scan.iter_async::<i64>(&mut conn).await?;
        let mut members = Vec::new();
        while let Some(member) = iter.next_item().await {
            members.push(member?);
        }
        Ok(members)
    }

    /// Broadcasts `invalidation` to every subscribed API instance (classic `PUBLISH`); returns
    /// how many subscribers the receiving node delivered it to. On a Redis Cluster the message
    /// reaches the subscribers of every node through the cluster bus, but the count is only
    /// that of the node the command went to, so 0 there does not mean nobody heard it
    /// (<https://redis.io/docs/latest/commands/publish/>).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn publish_invalidation(
        &self,
        invalidation: Invalidation,
    ) -> redis::RedisResult<i64> {
        let json = serde_json::to_string(&invalidation).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "invalidation JSON", e.to_string()))
        })?;
        self.conn
            .clone()
            .publish(self.keys.invalidation_channel(), json)
            .await
    }

    /// Takes `coupon`'s rebuild lock for `lease` (`SET NX PX`); false when another instance
    /// holds it.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn lock_rebuild(
        &self,
        coupon: CouponId,
        lease: Duration,
    ) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.rebuild_lock(coupon))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Releases `coupon`'s rebuild lock.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn unlock_rebuild(&self, coupon: CouponId) -> redis::RedisResult<()> {
        self.conn.clone().del(self.keys.rebuild_lock(coupon)).await
    }

    /// Whether `coupon`'s stock key exists (false: its state was never prepared or was lost).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn is_prepared(&self, coupon: CouponId) -> redis::RedisResult<bool> {
        self.conn.clone().exists(self.keys.stock(coupon)).await
    }

    /// Restores a lost admission state: adds `members` to the set (10,000 per `SADD`), then
    /// writes the stock bound only if no stock key exists (`SET NX`) and the policy copy.
    /// Never deletes: while the stock key is absent nobody can be admitted, so adding members
    /// first is safe, and a set another rebuild already reopened only gains users who hold
    /// (or will hold) a row. Returns whether this call wrote the stock key.
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or the policy does not serialise.
    pub async fn restore(
        &self,
        policy: &CouponPolicy,
        members: &[i64],
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        self.add_members(policy.id, members).await?;
        self.store_policy(policy).await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.stock(policy.id))
            .arg(policy.stock_bound())
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Adds `members` to `coupon`'s admission set, 10,000 per `SADD` (reconciliation and
    /// rebuild only: the issue path admits through the script).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn add_members(&self, coupon: CouponId, members: &[i64]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        for chunk in members.chunks(10_000) {
            conn.sadd::<_, _, ()>(self.keys.admission_set(coupon), chunk)
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
/// acknowledgements); `op`: those plus
/// `is_admitted`, `policy`), so they are exported before the first call.
pub fn register_metrics() {
    for script in ["admit", "undo", "wait"] {
        let _ = metrics::histogram!(names::REDIS_SCRIPT_DURATION, "script" => script);
    }
    for op in ["admit", "undo", "wait", "is_admitted", "policy"] {
        metrics::counter!(names::REDIS_ERRORS, "op" => op).increment(0);
    }
}
