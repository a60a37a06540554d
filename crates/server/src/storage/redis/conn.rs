//! The connection to Redis or Redis Cluster, with bounded waits, and the
//! mapping of Redis errors to [`StoreError`].
//!
//! * A single node is reached through redis-rs's `ConnectionManager`: one
//!   multiplexed connection (concurrent requests are pipelined on it) that
//!   reconnects by itself, in the background, after the connection drops.
//! * A cluster is reached through redis-rs's async cluster connection, which
//!   keeps one multiplexed connection per node, routes each command by its
//!   key's slot, follows `MOVED`/`ASK`, and reconnects to nodes that return.
//!
//! Every operation is also bounded by [`OP_TIMEOUT`] here, on top of the
//! clients' own connect and response timeouts, so a dead or hung Redis
//! turns into a quick `503` (with `Retry-After`) instead of requests that
//! hang, and the node itself never waits on Redis without a deadline.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, ServerErrorKind, Value};

use crate::storage::StoreError;

/// How long to wait for a TCP (and TLS) connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long to wait for one reply. A chunk's script takes milliseconds;
/// this only bounds how long a hung server can hold a request.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// The bound on any one store operation, retries and reconnects included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(4);

/// A connection to a single node or to a cluster. Cheap to clone: clones
/// share the underlying connections.
#[derive(Clone)]
pub enum Conn {
    /// One Redis (or Valkey) node.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to one node at `url` (`redis://`, `rediss://`).
    pub async fn single(url: &str) -> Result<Conn, StoreError> {
        let client = redis::Client::open(url).map_err(|e| config_error("REDIS_URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // A reconnect makes at most 3 attempts, 50-400 ms apart; a
            // request waiting on it fails after that and the next request
            // starts a new one, so recovery needs no restart.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(400));
        let manager = bounded(ConnectionManager::new_with_config(client, config)).await?;
        Ok(Conn::Single(manager))
    }

    /// Connects to a cluster through any of the seed `nodes`.
    pub async fn cluster(nodes: &[String]) -> Result<Conn, StoreError> {
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(2)
            .min_retry_wait(20)
            .max_retry_wait(400)
            .build()
            .map_err(|e| config_error("REDIS_CLUSTER_NODES", e))?;
        let connection = bounded(client.get_async_connection()).await?;
        Ok(Conn::Cluster(connection))
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs a Redis operation with the [`OP_TIMEOUT`] bound, mapping its error.
pub async fn bounded<T>(op: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(StoreError::unavailable(format!(
            "Redis did not answer within {} s",
            OP_TIMEOUT.as_secs()
        ))),
    }
}

/// Maps a Redis error: anything that retrying later may fix (connection,
/// timeout, failover, loading, out of memory, a busy script) is
/// `Unavailable` (the client gets 503 and `Retry-After`); anything else
/// (a wrong type under our prefix, a script error) is `Internal`.
pub fn store_error(e: RedisError) -> StoreError {
    let retryable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                )
        )
        || matches!(
            e.code(),
            Some("OOM" | "BUSY" | "LOADING" | "MISCONF" | "NOREPLICAS" | "NOAUTH" | "WRONGPASS")
        );
    if retryable {
        StoreError::unavailable_by("Redis", e)
    } else {
        StoreError::internal_by("Redis", e)
    }
}

fn config_error(setting: &str, e: RedisError) -> StoreError {
    StoreError::internal_by(format!("{setting} is not usable"), e)
}
