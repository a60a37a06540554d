//! The backend's link to Redis: the current connection, and replacing it
//! when it is stuck or when Redis Sentinel names a new master.
//!
//! # Why replace connections ourselves
//!
//! redis-rs's cluster client follows `MOVED`/`ASK`, refreshes its slot map
//! on `MOVED` and `READONLY`, and reconnects to nodes that drop. But when a
//! master dies, requests to it fail with timeouts and connection errors,
//! which it retries on the same (dead) route without refreshing the slot
//! map (a refresh starts on `MOVED`, `READONLY` or a missing connection,
//! and one started while the cluster is still failing over finds the old
//! map). Then a node may answer `503 Redis: timed out` until it is
//! restarted, although the cluster has long promoted a replica: issue 17
//! saw it in 4 runs of 6, and `redis_failover`'s test with the rebuild
//! below switched off stayed stuck in 2 runs of 3. Under Sentinel there is nothing in
//! redis-rs to follow at all: its `ConnectionManager` reconnects to the
//! address it was given, the dead or demoted master.
//!
//! So every reply is reported to the connection's [`Health`], and a task of
//! the link's own ([`Link::heal`], every [`HEAL_EVERY`], apart from the
//! requests and the store's housekeeping, which may be waiting on the stuck
//! connection) builds a new connection, from the seeds or from what the sentinels say, when
//!
//! * at least [`STUCK_FAILURES`] operations in a row have failed over at
//!   least [`STUCK_FOR`] (a brief blip does not rebuild anything), or a
//!   write met a replica (`READONLY`);
//! * or, under Sentinel, the sentinels name another master than ours.
//!
//! A new connection starts with a fresh slot map or the promoted master; it
//! replaces the old one only once it is connected, so a rebuild attempted
//! too early (the cluster still electing) changes nothing, and the next
//! one, [`REBUILD_EVERY`] later, tries again. Requests in flight on the old
//! connection finish or time out as before; it closes when its last clone
//! is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;

use super::conn::{CONNECT_TIMEOUT, Conn, Health, bounded, store_error};
use super::with_scheme;
use crate::storage::StoreError;
use crate::telemetry::chain;

/// Failed operations in a row before a connection may be called stuck.
pub const STUCK_FAILURES: u64 = 3;
/// How long failures must last before a connection is called stuck.
pub const STUCK_FOR: Duration = Duration::from_secs(1);
/// The least time between two rebuilds.
pub const REBUILD_EVERY: Duration = Duration::from_secs(1);
/// How often the link is checked.
pub const HEAL_EVERY: Duration = Duration::from_millis(500);
/// How long to wait for one sentinel's answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the Redis of a deployment is.
#[derive(Clone, Debug)]
pub enum Target {
    /// One node at a URL.
    Url(String),
    /// A Redis Cluster, through any of these seed URLs.
    Cluster(Vec<String>),
    /// The master the sentinels name `master`; the URL gives the scheme,
    /// credentials and database of the connection to it (its host and port
    /// are replaced by the master's).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        url: String,
    },
}

/// The current connection and the state of the link, for `/metrics`.
pub struct Link {
    target: Target,
    current: parking_lot::RwLock<Conn>,
    /// Under Sentinel: the master (`host:port`) the connection goes to.
    master: parking_lot::Mutex<Option<String>>,
    /// When the last rebuild was tried; locked while one runs.
    last_rebuild: tokio::sync::Mutex<Option<Instant>>,
    /// The slot owners last seen (cluster), to notice failovers and moves.
    owners: parking_lot::Mutex<Vec<(u16, String)>>,
    /// Masters that answered the last check.
    masters_up: AtomicU64,
    /// Connections replaced.
    reconnects: AtomicU64,
    /// Changes of master seen: a new master under Sentinel, or slots that
    /// changed owner in the cluster (a failover or a resharding).
    failovers: AtomicU64,
}

/// The link's counters, for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkState {
    /// Masters that answered the last check (a single node: 0 or 1).
    pub masters_up: u64,
    /// Connections replaced because they were stuck or the master moved.
    pub reconnects: u64,
    /// Changes of master seen (failovers, slots moved).
    pub failovers: u64,
}

impl Link {
    /// Connects to `target`.
    pub async fn open(target: Target) -> Result<Link, StoreError> {
        let (conn, master) = connect(&target).await?;
        Ok(Link {
            target,
            current: parking_lot::RwLock::new(conn),
            master: parking_lot::Mutex::new(master),
            last_rebuild: tokio::sync::Mutex::new(None),
            owners: parking_lot::Mutex::new(Vec::new()),
            masters_up: AtomicU64::new(1),
            reconnects: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        })
    }

    /// Starts the task that heals `link` every [`HEAL_EVERY`]; it ends when
    /// the returned guard is dropped.
    pub fn spawn_healer(link: &Arc<Link>) -> Healer {
        let link = Arc::downgrade(link);
        Healer(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEAL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(link) = link.upgrade() else { return };
                link.heal().await;
            }
        }))
    }

    /// The current connection (a cheap clone).
    pub fn conn(&self) -> Conn {
        self.current.read().clone()
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The counters, for `/metrics`.
    pub fn state(&self) -> LinkState {
        LinkState {
            masters_up: self.masters_up.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
        }
    }

    /// Housekeeping: replaces the connection if it is stuck or Sentinel
    /// names a new master (see the module docs), and checks the masters.
    /// At most one runs at a time; others return at once.
    pub async fn heal(&self) {
        let Ok(mut last) = self.last_rebuild.try_lock() else {
            return;
        };
        let health: Arc<Health> = Arc::clone(self.conn().health());
        let stuck = health.is_stuck(STUCK_FAILURES, STUCK_FOR);
        let moved = match &self.target {
            Target::Sentinel {
                sentinels, master, ..
            } => match ask_sentinels(sentinels, master).await {
                Ok(named) => self.master.lock().as_deref() != Some(named.as_str()),
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "no sentinel answered");
                    false
                }
            },
            _ => false,
        };
        let due = last.is_none_or(|at| at.elapsed() >= REBUILD_EVERY);
        if (stuck || moved) && due {
            *last = Some(Instant::now());
            self.rebuild(stuck, moved).await;
        }
        drop(last);
        self.check_masters().await;
    }

    async fn rebuild(&self, stuck: bool, moved: bool) {
        tracing::warn!(
            stuck,
            master_moved = moved,
            "replacing the Redis connection"
        );
        match connect(&self.target).await {
            Ok((conn, master)) => {
                *self.current.write() = conn;
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                let mut known = self.master.lock();
                if master.is_some() && *known != master {
                    if known.is_some() {
                        self.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(master = ?master, previous = ?*known, "following the new Redis master");
                    *known = master;
                }
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot reconnect to Redis yet; will retry");
            }
        }
    }

    /// Counts the masters that answer, and (cluster) notices slots that
    /// changed owner.
    async fn check_masters(&self) {
        match self.conn().masters().await {
            Ok((owners, up)) => {
                self.masters_up
                    .store(u64::try_from(up).unwrap_or(u64::MAX), Ordering::Relaxed);
                if owners.is_empty() {
                    return;
                }
                let mut known = self.owners.lock();
                if !known.is_empty() && *known != owners {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(slots = ?owners, "the Redis Cluster's slots changed owner");
                }
                *known = owners;
            }
            Err(_) => self.masters_up.store(0, Ordering::Relaxed),
        }
    }
}

/// Owns the healing task: dropping it stops the task.
pub struct Healer(tokio::task::JoinHandle<()>);

impl Drop for Healer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A new connection to `target`, and under Sentinel the master's address.
async fn connect(target: &Target) -> Result<(Conn, Option<String>), StoreError> {
    let health = Arc::new(Health::default());
    match target {
        Target::Url(url) => Ok((Conn::single(url, health).await?, None)),
        Target::Cluster(nodes) => Ok((Conn::cluster(nodes, health).await?, None)),
        Target::Sentinel {
            sentinels,
            master,
            url,
        } => {
            let address = ask_sentinels(sentinels, master).await?;
            let conn = Conn::single(&with_address(url, &address), health).await?;
            // Sentinel may still name a master it is demoting: write only
            // to one that says it is a master.
            let role: Vec<redis::Value> =
                bounded(redis::cmd("ROLE").query_async(&mut conn.clone())).await?;
            match role.first() {
                Some(redis::Value::BulkString(r)) if r == b"master" => Ok((conn, Some(address))),
                _ => Err(StoreError::unavailable(format!(
                    "Sentinel names {address} as master {master}, but it is not a master (yet)"
                ))),
            }
        }
    }
}

/// The address (`host:port`) of `master` as the first sentinel that
/// answers names it.
async fn ask_sentinels(sentinels: &[String], master: &str) -> Result<String, StoreError> {
    let mut failure = StoreError::unavailable("REDIS_SENTINELS is empty");
    for sentinel in sentinels {
        let ask = async {
            let client = redis::Client::open(with_scheme(sentinel)).map_err(store_error)?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(SENTINEL_TIMEOUT));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(store_error)?;
            let named: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(master)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            named
                .map(|(host, port)| format!("{host}:{port}"))
                .ok_or_else(|| {
                    StoreError::unavailable(format!(
                        "sentinel {sentinel} does not know master {master:?}"
                    ))
                })
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + SENTINEL_TIMEOUT, ask).await {
            Ok(Ok(address)) => return Ok(address),
            Ok(Err(e)) => failure = e,
            Err(_) => failure = StoreError::unavailable(format!("sentinel {sentinel} timed out")),
        }
    }
    Err(failure)
}

/// `url` with its host and port replaced by `address` (`host:port`):
/// `rediss://:pw@old:1/2` and `10.0.0.9:6380` give `rediss://:pw@10.0.0.9:6380/2`.
fn with_address(url: &str, address: &str) -> String {
    let url = with_scheme(url);
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", &url));
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let credentials = authority.rfind('@').map_or("", |at| &authority[..=at]);
    let address = match address.rsplit_once(':') {
        Some((host, port)) if host.contains(':') && !host.starts_with('[') => {
            format!("[{host}]:{port}")
        }
        _ => address.to_owned(),
    };
    format!("{scheme}://{credentials}{address}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_address_replaces_the_urls() {
        assert_eq!(
            with_address("rediss://:pw@old:1/2", "10.0.0.9:6380"),
            "rediss://:pw@10.0.0.9:6380/2"
        );
        assert_eq!(with_address("", "h:1"), "redis://h:1");
        assert_eq!(
            with_address("redis://u:p@x", "::1:7"),
            "redis://u:p@[::1]:7"
        );
        assert_eq!(
            with_address("a:1?protocol=resp3", "b:2"),
            "redis://b:2?protocol=resp3"
        );
    }
}
