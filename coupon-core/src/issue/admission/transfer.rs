//! Stock shards: one hot coupon's stock split over several hash slots, and the transfers that
//! move units between them (a policy's `stock_shards`, [`StockShards`]).
//!
//! All admissions of an unsharded coupon run on the one Redis core that serves its slot. With
//! `K` shards, each shard `s` has the keys of an unsharded coupon under a hash tag of its own
//! (`{id}` for shard 0, `{id:sN}` for the others), and starts with its allotment of the stock
//! ([`StockShards::allotment`]). A user only ever joins their home shard
//! ([`StockShards::home`]), so the duplicate check stays one atomic script in one slot.
//!
//! When a shard sold out, the admission takes units from another shard in two steps, each
//! atomic in its own slot (Redis has no transaction across slots):
//!
//! 1. `lend.lua` on the donor: takes half of its free units (rounded up) off its stock bound
//!    and raises its running count `lent[recipient]` by as many;
//! 2. `borrow.lua` on the recipient: raises its `borrowed[donor]` to that running count and its
//!    stock bound by the difference.
//!
//! Step 1 takes the units from the donor before step 2 gives them to the recipient, so a
//! transfer cut in between (a process killed, Redis unreachable) leaves them unused, never
//! counted twice: for every shard `stock + Σ lent − Σ borrowed` is its allotment, whatever ran,
//! and so `Σ stock ≤ total` and `Σ SCARD ≤ total` (docs/invariants.md 1). Step 2 takes a running
//! count, not an increment, so it can be re-run any time: a later transfer from the same donor
//! completes an earlier cut one, and reconciliation completes every one
//! ([`AdmissionStore::complete_transfers`]).
//!
//! With replica acknowledgements (`REDIS_WAIT_REPLICAS`), step 1 waits for the donor's
//! replicas before step 2: a loan a failover lost would otherwise be units back on the donor
//! and on the recipient at once.

use std::sync::Arc;

use redis::{AsyncCommands, Script};

use super::{AdmissionStore, AdmitError, RedisKeys, Shard, StockShards};
use crate::domain::{CouponPolicy, UserId};

/// Most transfers one admission makes before it gives up with an error (503, try again)
/// rather than an answer: each transfer brings units that other users of the shard may take
/// first, so a very unlucky request could otherwise loop while the drop lasts.
pub(super) const MAX_TRANSFERS_PER_ADMISSION: usize = 16;

/// The two transfer scripts.
#[derive(Debug, Clone)]
pub(super) struct TransferScripts {
    lend: Arc<Script>,
    borrow: Arc<Script>,
}

impl Default for TransferScripts {
    fn default() -> Self {
        Self {
            lend: Arc::new(Script::new(include_str!("lend.lua"))),
            borrow: Arc::new(Script::new(include_str!("borrow.lua"))),
        }
    }
}

impl AdmissionStore {
    /// Moves units from another shard of `shards` to `home` (sold out): asks the shards after
    /// it in turn, and stops at the first that lends some. Returns whether units came to
    /// `home`; false means no shard had a free unit when asked.
    ///
    /// A donor with no free unit may still have lent units to `home` that are in flight (lent
    /// by a concurrent admission whose second step has not run yet, or by one that stopped
    /// between the steps): its running count is added here too, so a caller that then finds
    /// `home` sold out knows that every unit lent to it before was there.
    ///
    /// # Errors
    /// [`AdmitError::NotRun`] when Redis failed, [`AdmitError::TransferNotReplicated`] when
    /// the donor's replicas did not acknowledge the loan in time (its units then wait for
    /// reconciliation, if the loan survived). Either way the admission that asked for units
    /// had answered sold out, so nothing of it is admitted.
    pub(super) async fn take_units(
        &self,
        shards: StockShards,
        home: Shard,
    ) -> Result<bool, AdmitError> {
        for offset in 1..shards.count() {
            let donor = shards.shard(home.index + offset);
            let (lent_now, lent) = self.lend(donor, home).await.map_err(AdmitError::NotRun)?;
            if lent <= 0 {
                continue;
            }
            if lent_now > 0 {
                if let Some(acks) = &self.replica_acks {
                    acks.wait(donor, None)
                        .await
                        .map_err(AdmitError::TransferNotReplicated)?;
                }
            }
            let added = self
                .borrow(home, donor, lent)
                .await
                .map_err(AdmitError::NotRun)?;
            if lent_now > 0 || added > 0 {
                tracing::debug!(coupon_id = %shards.coupon(), donor = donor.index,
                    recipient = home.index, lent_now, added, "stock units moved between shards");
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Step 1 on `donor`: `(units lent now, running count lent to recipient)`; `(-3, 0)` when
    /// the donor's state is missing.
    async fn lend(&self, donor: Shard, recipient: Shard) -> redis::RedisResult<(i64, i64)> {
        let mut invocation = self.transfers.lend.key(self.keys.admission_set(donor));
        invocation
            .key(self.keys.stock(donor))
            .key(self.keys.lent(donor))
            .arg(recipient.index);
        super::timed_script("lend", invocation.invoke_async(&mut self.conn.clone())).await
    }

    /// Step 2 on `recipient`: the units added now (0 when already added, -3 when the
    /// recipient's state is missing).
    async fn borrow(&self, recipient: Shard, donor: Shard, lent: i64) -> redis::RedisResult<i64> {
        let mut invocation = self.transfers.borrow.key(self.keys.stock(recipient));
        invocation
            .key(self.keys.borrowed(recipient))
            .arg(donor.index)
            .arg(lent);
        super::timed_script("borrow", invocation.invoke_async(&mut self.conn.clone())).await
    }

    /// Completes every transfer between `shards`' shards whose second step did not run (a
    /// process stopped between the two): runs `borrow.lua` with each donor's running counts.
    /// Returns the units that reached their recipient now (count; 0 when every transfer was
    /// complete). Safe beside live admissions and transfers: the step is idempotent.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn complete_transfers(&self, shards: StockShards) -> redis::RedisResult<i64> {
        let mut conn = self.conn.clone();
        let mut added = 0;
        for donor in shards.all() {
            let lent: Vec<(u16, i64)> = conn.hgetall(self.keys.lent(donor)).await?;
            for (recipient, count) in lent {
                added += self
                    .borrow(shards.shard(recipient), donor, count)
                    .await?
                    .max(0);
            }
        }
        Ok(added)
    }

    /// Restores the shards of `policy` whose stock key is missing, with the `members` (user
    /// ids) that hold or will hold a row ([`super::super::recovery`]). Returns whether any
    /// stock key was written.
    ///
    /// - Every shard lost (Redis restarted empty): each gets its members, no transfers, and a
    ///   stock of its member count plus its allotment of the units nobody holds.
    /// - Some shards lost (one master of a cluster came back empty): each lost shard gets its
    ///   members, a stock of exactly their count (its free units are not known, so they stay
    ///   unused: an under-issue, never an over-issue), and transfer counts copied from the
    ///   live shards, so no transfer is counted twice or lost from then on.
    ///
    /// The stock key is written last (`SET NX`), so the shard stays closed until the rest is
    /// in place.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub(super) async fn restore_shards(
        &self,
        policy: &CouponPolicy,
        members: &[UserId],
    ) -> redis::RedisResult<bool> {
        let shards = policy.stock_shards();
        let mut conn = self.conn.clone();
        let mut lost = Vec::new();
        for shard in shards.all() {
            if !conn.exists::<_, bool>(self.keys.stock(shard)).await? {
                lost.push(shard);
            }
        }
        let every_shard_lost = lost.len() == usize::from(shards.count());
        let unheld = (super::stock_value(policy.total_quantity()) - members.len() as i64).max(0);
        let mut homes: Vec<Vec<UserId>> = vec![Vec::new(); usize::from(shards.count())];
        for (shard, users) in shards.by_home(members) {
            homes[usize::from(shard.index)] = users;
        }
        let mut wrote = false;
        for &shard in &lost {
            let held = &homes[usize::from(shard.index)];
            self.add_shard_members(shard, held).await?;
            let stock = if every_shard_lost {
                let _: () = conn
                    .del(&[self.keys.lent(shard), self.keys.borrowed(shard)])
                    .await?;
                held.len() as i64 + shards.allotment(unheld, shard.index)
            } else {
                for other in shards.all().filter(|o| !lost.contains(o)) {
                    let lent: Option<i64> = conn.hget(self.keys.lent(other), shard.index).await?;
                    let borrowed: Option<i64> =
                        conn.hget(self.keys.borrowed(other), shard.index).await?;
                    let _: () = redis::pipe()
                        .atomic()
                        .hset(self.keys.borrowed(shard), other.index, lent.unwrap_or(0))
                        .hset(self.keys.lent(shard), other.index, borrowed.unwrap_or(0))
                        .query_async(&mut conn)
                        .await?;
                }
                held.len() as i64
            };
            let set: Option<String> = redis::cmd("SET")
                .arg(self.keys.stock(shard))
                .arg(stock)
                .arg("NX")
                .query_async(&mut conn)
                .await?;
            wrote |= set.is_some();
        }
        Ok(wrote)
    }
}

/// The `MULTI` that empties `shard` and sets its stock bound to `stock` (count, `-1`
/// unlimited).
pub(super) fn reset_shard(keys: &RedisKeys, shard: Shard, stock: i64) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .del(&[
            keys.admission_set(shard),
            keys.pending(shard),
            keys.lent(shard),
            keys.borrowed(shard),
        ])
        .ignore()
        .set(keys.stock(shard), stock)
        .ignore();
    pipe
}
