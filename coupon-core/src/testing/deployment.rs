//! The Redis a failure test stops, freezes and restarts: one `redis-server` of its own, or,
//! when the suite runs against a cluster (`REDIS_MODE=cluster`, the second run of
//! `make test`), a six-node cluster of its own, so the failure tests cover both engines.

use super::{OwnRedis, OwnRedisCluster};
use crate::store::redis::RedisMode;

/// A Redis deployment of a test's own, of the kind [`super::redis_mode`] names. Every
/// operation acts on the whole deployment (on a cluster: every node).
#[derive(Debug)]
pub enum OwnRedisDeployment {
    /// One node.
    Single(OwnRedis),
    /// Three masters and three replicas.
    Cluster(OwnRedisCluster),
}

impl OwnRedisDeployment {
    /// Starts a deployment of the suite's kind. With `persistent`, every node fsyncs every
    /// write to its AOF, so [`Self::restart`] loses nothing; without, a restart loses all.
    ///
    /// # Panics
    /// `redis-server` (or `redis-cli` for a cluster) is missing or does not come up.
    pub async fn start(persistent: bool) -> Self {
        match super::redis_mode() {
            RedisMode::Single => Self::Single(OwnRedis::start(persistent).await),
            RedisMode::Cluster => Self::Cluster(OwnRedisCluster::start_with(persistent).await),
        }
    }

    /// `REDIS_URL` for it: one URL, or every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Self::Single(redis) => redis.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }

    /// `REDIS_MODE` for it.
    pub fn mode(&self) -> RedisMode {
        match self {
            Self::Single(_) => RedisMode::Single,
            Self::Cluster(_) => RedisMode::Cluster,
        }
    }

    /// Kills every node (SIGKILL).
    pub fn stop(&mut self) {
        match self {
            Self::Single(redis) => redis.stop(),
            Self::Cluster(cluster) => cluster.stop_all(),
        }
    }

    /// Starts every node again and waits until it serves (on a cluster: every slot).
    ///
    /// # Panics
    /// It does not come back within its bound (10 s for a node, 30 s for a cluster).
    pub async fn restart(&mut self) {
        match self {
            Self::Single(redis) => redis.restart().await,
            Self::Cluster(cluster) => cluster.restart_all().await,
        }
    }

    /// Freezes every node (SIGSTOP).
    pub fn pause(&self) {
        match self {
            Self::Single(redis) => redis.pause(),
            Self::Cluster(cluster) => cluster.pause_all(),
        }
    }

    /// Thaws every node (SIGCONT).
    pub fn resume(&self) {
        match self {
            Self::Single(redis) => redis.resume(),
            Self::Cluster(cluster) => cluster.resume_all(),
        }
    }
}
