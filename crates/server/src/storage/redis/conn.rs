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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};

use crate::storage::StoreError;

/// How long to wait for a TCP (and TLS) connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long to wait for one reply. A chunk's script takes milliseconds;
/// this only bounds how long a hung server can hold a request.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// The bound on any one store operation, retries and reconnects included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(4);

/// A connection to a single node or to a cluster, and the [`Health`] it
/// reports every reply to. Cheap to clone: clones share the underlying
/// connections.
#[derive(Clone)]
pub struct Conn {
    inner: Inner,
    health: Arc<Health>,
}

#[derive(Clone)]
enum Inner {
    /// One Redis (or Valkey) node.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to one node at `url` (`redis://`, `rediss://`).
    pub async fn single(url: &str, health: Arc<Health>) -> Result<Conn, StoreError> {
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
        Ok(Conn {
            inner: Inner::Single(manager),
            health,
        })
    }

    /// Connects to a cluster through any of the seed `nodes`.
    pub async fn cluster(nodes: &[String], health: Arc<Health>) -> Result<Conn, StoreError> {
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(2)
            .min_retry_wait(20)
            .max_retry_wait(400)
            .build()
            .map_err(|e| config_error("REDIS_CLUSTER_NODES", e))?;
        let connection = bounded(client.get_async_connection()).await?;
        Ok(Conn {
            inner: Inner::Cluster(connection),
            health,
        })
    }

    /// What its replies said so far.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// `WAIT replicas timeout` after this node's writes: on a single node
    /// through the connection that carried them; on a cluster on the
    /// master of each of `slots` (where the writes went: the cluster client
    /// keeps one connection per node, so that is the connection that
    /// carried them too). Returns the fewest replicas any of them reached.
    ///
    /// `WAIT` counts the replicas that acknowledged everything this
    /// connection wrote before it, so writes of other requests sharing the
    /// connection are waited for too: never fewer, sometimes a little more.
    pub async fn wait_replicas(
        &self,
        slots: &[u16],
        replicas: u32,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let wait = || redis::cmd("WAIT").arg(replicas).arg(timeout_ms).to_owned();
        match &self.inner {
            Inner::Single(_) => bounded(wait().query_async::<u64>(&mut self.clone())).await,
            Inner::Cluster(cluster) => {
                let calls = slots.iter().map(|&slot| {
                    let mut cluster = cluster.clone();
                    let health = Arc::clone(&self.health);
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::new(slot, SlotAddr::Master),
                    ));
                    let cmd = wait();
                    async move {
                        let reply =
                            bounded(observe(health, cluster.route_command(cmd, route))).await?;
                        redis::from_redis_value::<u64>(reply).map_err(|e| store_error(e.into()))
                    }
                });
                let mut fewest = u64::MAX;
                for acks in join_all(calls).await {
                    fewest = fewest.min(acks?);
                }
                Ok(if slots.is_empty() {
                    u64::from(replicas)
                } else {
                    fewest
                })
            }
        }
    }

    /// The masters of a cluster as its `CLUSTER SLOTS` names them (`host:port`,
    /// first slot of each range), and how many of them answer a `PING` over
    /// this connection; a single node is one master.
    pub async fn masters(&self) -> Result<(Vec<(u16, String)>, usize), StoreError> {
        let Inner::Cluster(cluster) = &self.inner else {
            let pong = bounded(redis::cmd("PING").query_async::<Value>(&mut self.clone())).await;
            return Ok((Vec::new(), usize::from(pong.is_ok())));
        };
        let ranges: Vec<Value> = bounded(
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut self.clone()),
        )
        .await?;
        let mut owners = Vec::new();
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Some(first), Some(Value::Array(master))) = (parts.first(), parts.get(2)) else {
                continue;
            };
            let first: u16 =
                redis::from_redis_value_ref(first).map_err(|e| store_error(e.into()))?;
            let host: String = master
                .first()
                .map(redis::from_redis_value_ref)
                .transpose()
                .map_err(|e| store_error(e.into()))?
                .unwrap_or_default();
            let port: u16 = master
                .get(1)
                .map(redis::from_redis_value_ref)
                .transpose()
                .map_err(|e| store_error(e.into()))?
                .unwrap_or_default();
            owners.push((first, format!("{host}:{port}")));
        }
        owners.sort_unstable();
        let mut addresses: Vec<&String> = owners.iter().map(|(_, a)| a).collect();
        addresses.sort_unstable();
        addresses.dedup();
        let pings = addresses.iter().map(|address| {
            let mut cluster = cluster.clone();
            let (host, port) = address.rsplit_once(':').unwrap_or((address.as_str(), "0"));
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port: port.parse().unwrap_or(0),
            });
            async move {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    cluster.route_command(redis::cmd("PING"), route),
                )
                .await
                .is_ok_and(|r| r.is_ok())
            }
        });
        let answering = join_all(pings).await.into_iter().filter(|ok| *ok).count();
        Ok((owners, answering))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let health = Arc::clone(&self.health);
        match &mut self.inner {
            Inner::Single(c) => Box::pin(observe(health, c.req_packed_command(cmd))),
            Inner::Cluster(c) => Box::pin(observe(health, c.req_packed_command(cmd))),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let health = Arc::clone(&self.health);
        match &mut self.inner {
            Inner::Single(c) => Box::pin(observe(
                health,
                c.req_packed_commands(pipeline, offset, count),
            )),
            Inner::Cluster(c) => Box::pin(observe(
                health,
                c.req_packed_commands(pipeline, offset, count),
            )),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

/// What the replies of one connection say about it: how many operations in
/// a row failed in a way a healthy, correctly routed connection would not,
/// and since when. Every clone of a [`Conn`] reports here; the
/// [`Link`](super::link::Link) reads it to decide when to replace the
/// connection.
#[derive(Debug, Default)]
pub struct Health {
    /// Operations failed in a row (connection errors, timeouts, a cluster
    /// that is down or redirects, a read-only replica).
    streak: AtomicU64,
    /// Wall-clock ms of the streak's first failure (0: no streak).
    since_ms: AtomicU64,
    /// A write was refused as `READONLY`: we are talking to a replica.
    readonly: AtomicBool,
}

impl Health {
    /// Records the outcome of one operation.
    fn record<T>(&self, outcome: Option<&RedisResult<T>>) {
        let failed = match outcome {
            // Dropped before the reply: `bounded` gave up on it.
            None => true,
            Some(Ok(_)) => false,
            Some(Err(e)) => {
                if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) {
                    self.readonly.store(true, Ordering::Relaxed);
                }
                // A script error or a wrong type is an answer from a healthy
                // server: only what retrying might fix counts against it.
                matches!(store_error(e.clone()), StoreError::Unavailable { .. })
            }
        };
        if failed {
            if self.streak.fetch_add(1, Ordering::Relaxed) == 0 {
                self.since_ms.store(super::wall_ms(), Ordering::Relaxed);
            }
        } else if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
            self.since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the connection looks stuck: at least `failures` operations
    /// in a row failed, over at least `for_at_least`, or a write met a
    /// replica.
    pub fn is_stuck(&self, failures: u64, for_at_least: Duration) -> bool {
        if self.readonly.load(Ordering::Relaxed) {
            return true;
        }
        let since = self.since_ms.load(Ordering::Relaxed);
        self.streak.load(Ordering::Relaxed) >= failures
            && since != 0
            && u128::from(super::wall_ms().saturating_sub(since)) >= for_at_least.as_millis()
    }
}

/// Awaits `op`, reporting its outcome (or its being dropped unfinished) to
/// `health`.
async fn observe<T>(
    health: Arc<Health>,
    op: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    struct Unfinished(Option<Arc<Health>>);
    impl Drop for Unfinished {
        fn drop(&mut self) {
            if let Some(health) = self.0.take() {
                health.record::<()>(None);
            }
        }
    }
    let mut pending = Unfinished(Some(health));
    let result = op.await;
    if let Some(health) = pending.0.take() {
        health.record(Some(&result));
    }
    result
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
        )
        // A script meeting a key of a slot being migrated (which the
        // campaign scripts' absent key keeps from happening half-way).
        || e.to_string().contains("non local key");
    if retryable {
        StoreError::unavailable_by("Redis", e)
    } else {
        StoreError::internal_by("Redis", e)
    }
}

fn config_error(setting: &str, e: RedisError) -> StoreError {
    StoreError::internal_by(format!("{setting} is not usable"), e)
}
