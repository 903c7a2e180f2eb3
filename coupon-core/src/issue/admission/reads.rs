//! Reads of the admission state, by shard: membership, counts, members, pending marks.

use redis::AsyncCommands;

use super::{count_error, AdmissionStore, StockShards};
use crate::domain::UserId;

impl AdmissionStore {
    /// Whether `user` is in their home shard's admission set.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn is_admitted(&self, shards: StockShards, user: UserId) -> redis::RedisResult<bool> {
        self.conn
            .clone()
            .sismember(self.keys.admission_set(shards.home(user)), user.get())
            .await
            .inspect_err(|_| count_error("is_admitted"))
    }

    /// Which of `users` are in their home shard's admission set, in order (`SMISMEMBER`, Redis
    /// 6.2+; one round trip per shard concerned). An empty slice asks nothing.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn admitted_among(
        &self,
        shards: StockShards,
        users: &[UserId],
    ) -> redis::RedisResult<Vec<bool>> {
        let mut admitted = std::collections::HashMap::with_capacity(users.len());
        for (shard, group) in shards.by_home(users) {
            let answers: Vec<bool> = redis::cmd("SMISMEMBER")
                .arg(self.keys.admission_set(shard))
                .arg(&group)
                .query_async(&mut self.conn.clone())
                .await
                .inspect_err(|_| count_error("admitted_among"))?;
            admitted.extend(group.into_iter().zip(answers));
        }
        Ok(users
            .iter()
            .map(|user| admitted.get(user).copied().unwrap_or(false))
            .collect())
    }

    /// Size of the coupon's admission sets, summed over its shards (`SCARD`, count).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn admitted_count(&self, shards: StockShards) -> redis::RedisResult<i64> {
        let mut conn = self.conn.clone();
        let mut count = 0;
        for shard in shards.all() {
            count += conn.scard::<_, i64>(self.keys.admission_set(shard)).await?;
        }
        Ok(count)
    }

    /// Every member of the coupon's admission sets (user ids), read with `SSCAN … COUNT 1000`
    /// so a large set never blocks Redis the way one `SMEMBERS` would
    /// (<https://redis.io/docs/latest/commands/scan/>: a full iteration returns every member
    /// present from start to end at least once; members may repeat, the caller de-duplicates).
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or a member is not an integer.
    pub async fn members(&self, shards: StockShards) -> redis::RedisResult<Vec<UserId>> {
        let mut conn = self.conn.clone();
        let mut members = Vec::new();
        for shard in shards.all() {
            let mut scan = redis::cmd("SSCAN");
            scan.arg(self.keys.admission_set(shard))
                .cursor_arg(0)
                .arg("COUNT")
                .arg(1000);
            let mut iter = scan.iter_async::<UserId>(&mut conn).await?;
            while let Some(member) = iter.next_item().await {
                members.push(member?);
            }
        }
        Ok(members)
    }

    /// The users whose admission is still pending, over all shards (`HKEYS`; reconciliation
    /// only: the hashes hold the admissions in flight, a few thousand at most in a drop).
    ///
    /// # Errors
    /// Redis is unreachable, timed out, or a field is not an integer.
    pub async fn pending_users(&self, shards: StockShards) -> redis::RedisResult<Vec<UserId>> {
        let mut conn = self.conn.clone();
        let mut users = Vec::new();
        for shard in shards.all() {
            users.extend(
                conn.hkeys::<_, Vec<UserId>>(self.keys.pending(shard))
                    .await?,
            );
        }
        Ok(users)
    }

    /// The request ids `users`' admissions are pending under, in order (`None`: no pending
    /// mark, or one that is not a request id). One `HMGET` per home shard concerned; an empty
    /// slice asks nothing. Reconciliation re-publishes a lost admission under its own request
    /// id, so the consumer's claim ([`AdmissionStore::claim`]) recognises it.
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn pending_requests(
        &self,
        shards: StockShards,
        users: &[UserId],
    ) -> redis::RedisResult<Vec<Option<uuid::Uuid>>> {
        let mut marks = std::collections::HashMap::with_capacity(users.len());
        for (shard, group) in shards.by_home(users) {
            let answers: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.pending(shard))
                .arg(&group)
                .query_async(&mut self.conn.clone())
                .await
                .inspect_err(|_| count_error("pending_requests"))?;
            marks.extend(group.into_iter().zip(answers));
        }
        Ok(users
            .iter()
            .map(|user| {
                marks
                    .get(user)
                    .and_then(Option::as_deref)
                    .and_then(|mark| uuid::Uuid::parse_str(mark).ok())
            })
            .collect())
    }

    /// Whether every shard's stock key exists (false: some shard's state was never prepared
    /// or was lost).
    ///
    /// # Errors
    /// Redis is unreachable or timed out.
    pub async fn is_prepared(&self, shards: StockShards) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        for shard in shards.all() {
            if !conn.exists::<_, bool>(self.keys.stock(shard)).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
