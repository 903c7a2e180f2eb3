//! Replica acknowledgements of admissions (`REDIS_WAIT_REPLICAS`), waited for in rounds on a
//! connection of their own.
//!
//! Redis replication is asynchronous: a master answers the admission script before its
//! replicas hold the admission, so a failover can lose admissions a 202 already promised.
//! `WAIT n timeout` blocks until `n` replicas acknowledged the last write of its connection
//! (<https://redis.io/docs/latest/commands/wait/>). Sent after each admission on the shared,
//! multiplexed connection, it held up every command behind it (Redis processes nothing more of
//! a blocked client): once a master was lost, every admission's `WAIT` took its whole timeout,
//! and the undos and admissions queued behind them timed out too (docs/scale.md). So:
//!
//! - the waits go over a connection of their own (no admission or undo queues behind them);
//! - one round covers every admission that asked since the last round began (group commit):
//!   per stock shard (one slot), `admission/fence.lua` checks that each admission is still
//!   pending under its request id on the node that serves the slot now, and writes the shard's
//!   fence key; then one `WAIT` on the same connection covers the fence, and so every admission
//!   (and every loan of units, `admission/transfer.rs`) before it on that node;
//! - an admission the fence did not find was lost in a failover between the script and the
//!   round; it is reported as a failure, like one the replicas did not acknowledge in time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{RedisKeys, Shard};
use crate::domain::UserId;
use crate::store::redis::RedisConnection;
use crate::telemetry::names;

/// The handle the admission path holds: it queues admissions for the next round.
#[derive(Debug, Clone)]
pub(super) struct ReplicaAcks {
    sender: mpsc::UnboundedSender<Waiting>,
    replicas: u32,
    timeout: Duration,
}

/// One admission (or a shard's last write: a loan of units) waiting for its round.
#[derive(Debug)]
struct Waiting {
    shard: Shard,
    admission: Option<(UserId, Uuid)>,
    answer: oneshot::Sender<Result<(), String>>,
}

impl ReplicaAcks {
    /// Starts the rounds on `conn` (which nothing else should use: a `WAIT` blocks it) as a
    /// background task, which ends when every clone of the handle is dropped. Must be called
    /// within a Tokio runtime.
    pub(super) fn start(
        conn: RedisConnection,
        keys: RedisKeys,
        replicas: u32,
        timeout: Duration,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(rounds(receiver, conn, keys, replicas, timeout));
        Self {
            sender,
            replicas,
            timeout,
        }
    }

    /// Waits until `replicas` replicas hold `admission` (`user`, `request`) on `shard`, or
    /// with `None` every write `shard`'s node made before the round, for one round: the `WAIT`
    /// timeout plus the wait for the round in flight.
    ///
    /// # Errors
    /// [`NotReplicated`] when too few replicas acknowledged in time, the admission was not
    /// found (lost in a failover), or Redis failed the round.
    pub(super) async fn wait(
        &self,
        shard: Shard,
        admission: Option<(UserId, Uuid)>,
    ) -> Result<(), NotReplicated> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            shard,
            admission,
            answer,
        };
        let outcome = match self.sender.send(waiting) {
            Ok(()) => answered
                .await
                .unwrap_or_else(|_| Err("the replica acknowledgement task stopped".into())),
            Err(_) => Err("the replica acknowledgement task stopped".into()),
        };
        outcome.map_err(|why| NotReplicated {
            replicas: self.replicas,
            timeout: self.timeout,
            why,
        })
    }
}

/// A write not known to be on enough replicas in time: too few acknowledged within the `WAIT`
/// timeout, the admission was not found on the slot's master (lost in a failover), or Redis
/// failed the round.
#[derive(Debug, thiserror::Error)]
#[error(
    "the admission is not known to be on {replicas} replica(s) within {} ms: {why}",
    timeout.as_millis()
)]
pub struct NotReplicated {
    replicas: u32,
    timeout: Duration,
    why: String,
}

/// Takes every admission queued since the last round and fences and waits for each shard of
/// them at once, until the queue closes.
async fn rounds(
    mut receiver: mpsc::UnboundedReceiver<Waiting>,
    conn: RedisConnection,
    keys: RedisKeys,
    replicas: u32,
    timeout: Duration,
) {
    let fence = Arc::new(Script::new(include_str!("fence.lua")));
    while let Some(first) = receiver.recv().await {
        let mut round: HashMap<Shard, Vec<Waiting>> = HashMap::new();
        round.entry(first.shard).or_default().push(first);
        while let Ok(next) = receiver.try_recv() {
            round.entry(next.shard).or_default().push(next);
        }
        let started = Instant::now();
        let mut fenced = tokio::task::JoinSet::new();
        for (shard, waiting) in round {
            fenced.spawn(fence_and_wait(
                conn.clone(),
                keys.clone(),
                Arc::clone(&fence),
                shard,
                waiting,
                replicas,
                timeout,
            ));
        }
        while fenced.join_next().await.is_some() {}
        metrics::histogram!(names::REDIS_SCRIPT_DURATION, "script" => "wait")
            .record(started.elapsed());
    }
}

/// One shard's part of a round: `SCRIPT LOAD` (a promoted replica has no script cache), the
/// fence, `WAIT`, in one pipeline to the node of the shard's slot; then each admission's answer.
async fn fence_and_wait(
    mut conn: RedisConnection,
    keys: RedisKeys,
    fence: Arc<Script>,
    shard: Shard,
    waiting: Vec<Waiting>,
    replicas: u32,
    timeout: Duration,
) {
    let mut invocation = fence.key(keys.pending(shard));
    invocation.key(keys.fence(shard));
    for (user, request) in waiting.iter().filter_map(|w| w.admission) {
        invocation
            .arg(user.get())
            .arg(request.as_hyphenated().to_string());
    }
    let reply: redis::RedisResult<(Vec<i64>, u32)> = redis::pipe()
        .load_script(&fence)
        .ignore()
        .invoke_script(&invocation)
        .cmd("WAIT")
        .arg(replicas)
        .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
        .query_async(&mut conn)
        .await;
    match reply {
        Ok((held, acked)) => {
            let mut held = held.into_iter();
            for w in waiting {
                // A wait without an admission checks nothing: the fence covers its write.
                let held = if w.admission.is_some() {
                    held.next().unwrap_or(0)
                } else {
                    1
                };
                let answer = if held != 1 {
                    Err("not found on the slot's master (lost in a failover)".to_owned())
                } else if acked < replicas {
                    Err(format!("{acked} replica(s) acknowledged"))
                } else {
                    Ok(())
                };
                let _ = w.answer.send(answer);
            }
        }
        Err(err) => {
            let why = err.to_string();
            for w in waiting {
                let _ = w.answer.send(Err(why.clone()));
            }
        }
    }
}
