//! The Redis backend: many stateless nodes sharing one Redis, Valkey or
//! Redis Cluster, with exactly the API and semantics of the embedded store.
//!
//! # What makes it exact across nodes
//!
//! * **The rules run inside Redis, with the node's times.** Lua scripts
//!   (sent as `EVALSHA`, loaded on `NOSCRIPT`) apply
//!   [`DedupRule`](impression_core::DedupRule) (`|t - L| < TTL`, then
//!   `L = max(L, t)`) and the window bookkeeping of
//!   [`WindowCounter`](impression_core::WindowCounter) atomically, with the
//!   timestamps the node passes in. Two nodes sending the same impression at
//!   the same moment are serialized by Redis: one is counted, one is a
//!   duplicate. Redis key expiry only reclaims memory: every expiry is the
//!   time until the node-time moment the engine would drop the entry, plus a
//!   slack ([`DEDUP_SLACK`], [`WINDOW_SLACK`]), so a fake clock in tests and
//!   real clocks in production give the same answers.
//! * **One script call per chunk** (up to 1,024 impressions) on a single
//!   node; never a round trip per impression. Increments are summed inside
//!   the script and written once per (key, field).
//! * **Stats are constant work**: second buckets of the last day, minute
//!   totals, hour totals and a total per campaign (and per ad), so a window
//!   is a handful of `HMGET`s in one read-only script, whatever the volume
//!   (see `lua/common.lua` for the layout).
//!
//! # Redis Cluster
//!
//! A script may only touch one slot. Dedup keys are tagged by one of 64
//! fingerprint buckets ([`keys`]), spread evenly over the slot space, so a
//! hot campaign's dedup load is spread over every master; a campaign's
//! counters share one tag. Counting is therefore two steps per chunk:
//!
//! 1. per bucket, `dedup.lua` decides and, in the same atomic step, writes the
//!    counted impressions to the bucket's journal under the chunk's id;
//! 2. per campaign, `count.lua` adds them to the counters and marks the
//!    (chunk, bucket) pairs it counted, so running it again is a no-op;
//! 3. the journal entries are deleted.
//!
//! If a node crashes, or loses Redis, between 1 and 3, the journal still
//! holds what step 1 decided: every node's housekeeping replays entries
//! older than [`REPLAY_MIN_AGE`] through the idempotent step 2 and deletes
//! them. So nothing is counted twice, and nothing decided is lost (the
//! client of a failed chunk got a 503, and its retry is a duplicate of the
//! impression the replay counts). The one gap: an entry that cannot be
//! replayed for [`REPLAY_MAX_AGE`] (its campaign's master unreachable that
//! long) is dropped with an error log, because its step-2 markers expire and
//! replaying could then count twice; those impressions stay uncounted.
//!
//! # Failover
//!
//! * **Replica acknowledgements.** With `REDIS_MIN_REPLICAS_ACK = n > 0`, a
//!   chunk (and a campaign creation) is acknowledged only once `WAIT n`
//!   says `n` replicas of every master it wrote to hold its writes; fewer
//!   within `REDIS_REPLICA_ACK_TIMEOUT` is a 503 (the writes stay on the
//!   master: the client's retry is a duplicate, or counted if a failover
//!   lost them). So a failover to an acknowledging replica loses nothing
//!   acknowledged. Redis replication stays asynchronous: an unacknowledged
//!   chunk may still be lost, or (on a cluster, one master's half of it)
//!   counted but its dedup entry lost, and then counted again if retried.
//! * **Stuck connections, new masters** (`link.rs`): a connection failing
//!   for seconds is replaced by a new one (a fresh cluster slot map), and
//!   under Sentinel the node connects to whichever master the sentinels
//!   name.
//!
//! # Campaigns
//!
//! One sorted set in id order, cached on the node (see `campaigns.rs`).

mod campaigns;
mod conn;
pub mod keys;
mod link;
mod track;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use impression_core::{
    AdBreakdown, AdId, Campaign, CampaignId, DedupScope, EngineConfig, Impression, MemoryUse,
    Metric, Resolution, Stats, Timestamp, TrackOutcome, UniqueStats,
};
use redis::{Script, Value};

use self::campaigns::{Cached, CampaignCache};
use self::conn::{Conn, bounded};
use self::keys::KeySpace;
use self::link::{Healer, Link, Target};
use super::{BackendGauges, HashSecret, Store, StoreError, StoreGauges};
use crate::telemetry::chain;

/// Where the Redis backend connects, and its key prefix.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// One node (`redis://[:password@]host:port[/db]`, `rediss://` for TLS).
    pub url: Option<String>,
    /// Redis Cluster seed nodes; when given, `url` is not used.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel addresses (`host:port` or URLs, with the sentinels'
    /// password if they need one); when given, the master is the one they
    /// name [`sentinel_master`](Self::sentinel_master), and `url` only
    /// gives the scheme, credentials and database to use with it.
    pub sentinels: Vec<String>,
    /// The master name the sentinels monitor.
    pub sentinel_master: Option<String>,
    /// Prefix of every key written (no `{` or `}`).
    pub prefix: String,
    /// Replicas that must hold a chunk's writes before it is acknowledged
    /// (Redis `WAIT`); 0 acknowledges once the master has them.
    pub min_replicas_ack: u32,
    /// How long to wait for those replicas before answering 503.
    pub replica_ack_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: None,
            cluster_nodes: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: None,
            prefix: String::new(),
            min_replicas_ack: 0,
            // Never 0: `WAIT n 0` would block for good.
            replica_ack_timeout: Duration::from_secs(1),
        }
    }
}

/// The longest [`RedisOptions::replica_ack_timeout`]: a `WAIT` must end well
/// within the reply timeout of the connection it blocks.
pub const MAX_REPLICA_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Extra life given to dedup entries beyond `L + TTL + max lateness`, for
/// clock differences between nodes and Redis.
pub const DEDUP_SLACK: Duration = Duration::from_secs(60);
/// Extra life given to window buckets beyond the day (seconds, minutes) or
/// the history (hours) the engine keeps them for.
pub const WINDOW_SLACK: Duration = Duration::from_secs(3600);
/// Journal entries younger than this are left to the node that wrote them.
pub const REPLAY_MIN_AGE: Duration = Duration::from_secs(5);
/// Journal entries older than this are no longer replayed (see the module
/// docs); must stay well below [`MARKER_TTL`].
pub const REPLAY_MAX_AGE: Duration = Duration::from_secs(8 * 60);
/// How long step-2 markers are kept.
pub const MARKER_TTL: Duration = Duration::from_secs(10 * 60);
/// How often housekeeping looks at the journals.
const REPLAY_EVERY: Duration = Duration::from_secs(2);
/// Most impressions in one script call (Lua's `unpack` limit is ~8,000).
const MAX_SCRIPT_ITEMS: usize = 1024;

/// The counting rules, as the scripts take them.
#[derive(Clone, Debug)]
struct Rules {
    scope: DedupScope,
    ttl_ms: u64,
    /// TTL plus the lateness an impression may have when applied.
    retention_ms: u64,
    history_hours: u64,
    max_ads: usize,
    /// Hours of quarter-hour counts kept behind the current one (the
    /// daily history and a day more, as `QuarterCounter`).
    keep_hours: u64,
}

impl Rules {
    fn new(engine: &EngineConfig) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Rules {
            scope: engine.scope,
            ttl_ms: ms(engine.ttl),
            retention_ms: ms(engine.ttl).saturating_add(ms(engine.max_lateness)),
            history_hours: engine
                .history_hours
                .max(impression_core::window::MIN_HISTORY_HOURS),
            max_ads: engine.max_ads_per_campaign,
            keep_hours: engine
                .daily_history_days
                .saturating_add(1)
                .saturating_mul(24),
        }
    }
}

/// The Lua scripts, each the shared library plus its own body.
struct Scripts {
    track: Script,
    dedup: Script,
    count: Script,
    stats: Script,
    series: Script,
    range: Script,
    create_campaign: Script,
}

impl Scripts {
    fn new() -> Self {
        macro_rules! with_common {
            ($file:literal) => {
                Script::new(concat!(
                    include_str!("lua/common.lua"),
                    include_str!(concat!("lua/", $file))
                ))
            };
        }
        Scripts {
            track: with_common!("track.lua"),
            dedup: with_common!("dedup.lua"),
            count: with_common!("count.lua"),
            stats: with_common!("stats.lua"),
            series: with_common!("series.lua"),
            range: with_common!("range.lua"),
            create_campaign: Script::new(include_str!("lua/create_campaign.lua")),
        }
    }
}

/// A fault to inject between the cluster steps, for tests of the journal
/// (feature `test-hooks`: not in the normal build).
#[cfg(feature = "test-hooks")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Behave normally.
    None = 0,
    /// Fail each chunk right after step 1 (as a crash there would).
    AfterDedup = 1,
    /// Fail each chunk after step 2, before the journal is cleared.
    AfterCount = 2,
}

/// State shared by every handler and worker of a node; nothing in it is
/// needed for correctness across nodes except what is in Redis.
pub struct RedisStore {
    link: Arc<Link>,
    /// Replaces a stuck connection, follows a new master (see `link.rs`).
    _healer: Healer,
    /// Replicas every chunk must reach, and how long to wait for them.
    min_replicas_ack: u32,
    replica_ack_timeout: Duration,
    /// Chunks answered 503 because too few replicas acknowledged them.
    ack_refusals: AtomicU64,
    keys: KeySpace,
    rules: Rules,
    scripts: Scripts,
    campaigns: CampaignCache,
    campaign_count: AtomicU64,
    /// Unique per store instance: chunk ids are `<node>.<seq>`.
    node: String,
    seq: AtomicU64,
    last_replay: tokio::sync::Mutex<Option<Instant>>,
    #[cfg(feature = "test-hooks")]
    fault: std::sync::atomic::AtomicU8,
}

impl RedisStore {
    /// Connects as the options say (cluster nodes, else the URL), counting
    /// by `engine`'s rules, and checks that Redis answers.
    pub async fn open(options: &RedisOptions, engine: &EngineConfig) -> Result<Self, StoreError> {
        let keys = KeySpace::new(&options.prefix).map_err(StoreError::internal)?;
        let nodes: Vec<String> = options
            .cluster_nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(with_scheme)
            .collect();
        let url = options.url.as_deref().map(str::trim).map(with_scheme);
        if nodes.iter().chain(&url).any(|u| u.starts_with("rediss://")) {
            // rustls needs a process-wide crypto provider; ring builds with
            // a C compiler alone (aws-lc-rs would need cmake). An error only
            // means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let sentinels: Vec<String> = options
            .sentinels
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        let target = match (nodes.is_empty(), sentinels.is_empty(), url) {
            (false, _, _) => Target::Cluster(nodes),
            (true, false, url) => Target::Sentinel {
                sentinels,
                master: options
                    .sentinel_master
                    .clone()
                    .filter(|m| !m.trim().is_empty())
                    .ok_or_else(|| {
                        StoreError::internal("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER")
                    })?,
                url: url.unwrap_or_else(|| "redis://".into()),
            },
            (true, true, Some(url)) => Target::Url(url),
            (true, true, None) => {
                return Err(StoreError::internal(
                    "STORAGE=redis needs REDIS_URL or REDIS_CLUSTER_NODES (or REDIS_SENTINELS)",
                ));
            }
        };
        if options.replica_ack_timeout.is_zero()
            || options.replica_ack_timeout > MAX_REPLICA_ACK_TIMEOUT
        {
            return Err(StoreError::internal(format!(
                "REDIS_REPLICA_ACK_TIMEOUT must be more than 0 and at most {} s",
                MAX_REPLICA_ACK_TIMEOUT.as_secs()
            )));
        }
        let link = Arc::new(Link::open(target).await?);
        let store = RedisStore {
            _healer: Link::spawn_healer(&link),
            link,
            min_replicas_ack: options.min_replicas_ack,
            replica_ack_timeout: options.replica_ack_timeout,
            ack_refusals: AtomicU64::new(0),
            keys,
            rules: Rules::new(engine),
            scripts: Scripts::new(),
            campaigns: CampaignCache::default(),
            campaign_count: AtomicU64::new(0),
            node: uuid::Uuid::now_v7().simple().to_string(),
            seq: AtomicU64::new(0),
            last_replay: tokio::sync::Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            fault: std::sync::atomic::AtomicU8::new(Fault::None as u8),
        };
        store.check_ready().await?;
        store.refresh_campaign_count().await;
        Ok(store)
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.link.is_cluster()
    }

    /// The current connection.
    fn conn(&self) -> Conn {
        self.link.conn()
    }

    /// Waits until [`RedisOptions::min_replicas_ack`] replicas of each master
    /// of `slots` (a single node: of the master) hold what this node wrote
    /// there; `503` if they do not in time.
    async fn wait_for_replicas(&self, slots: &[u16]) -> Result<(), StoreError> {
        if self.min_replicas_ack == 0 {
            return Ok(());
        }
        let acks = self
            .conn()
            .wait_replicas(slots, self.min_replicas_ack, self.replica_ack_timeout)
            .await?;
        if acks < u64::from(self.min_replicas_ack) {
            self.ack_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::unavailable(format!(
                "only {acks} of the {} Redis replicas required acknowledged the writes within {} ms",
                self.min_replicas_ack,
                self.replica_ack_timeout.as_millis()
            )));
        }
        Ok(())
    }

    /// Makes every following chunk fail at a point between the cluster
    /// steps (tests of the journal; no effect on a single node).
    #[cfg(feature = "test-hooks")]
    pub fn inject_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Fails as a crash `at` this point would, if a test asked for it.
    #[cfg(feature = "test-hooks")]
    fn injected(&self, at: Fault) -> Result<(), StoreError> {
        if self.fault.load(Ordering::SeqCst) == at as u8 {
            return Err(StoreError::unavailable(format!("injected fault {at:?}")));
        }
        Ok(())
    }

    /// The campaign, from the cache or from Redis.
    async fn lookup(&self, id: CampaignId) -> Result<Option<Arc<Campaign>>, StoreError> {
        match self.campaigns.get(id) {
            Cached::Found(c) => return Ok(Some(c)),
            Cached::Missing => return Ok(None),
            Cached::Unknown => {}
        }
        let (lo, hi) = campaigns::id_range(id);
        let found: Vec<Vec<u8>> = bounded(
            redis::cmd("ZRANGEBYLEX")
                .arg(self.keys.campaigns())
                .arg(lo)
                .arg(hi)
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query_async(&mut self.conn()),
        )
        .await?;
        match found.first() {
            Some(member) => {
                let campaign = Arc::new(campaigns::decode(member).map_err(StoreError::internal)?);
                self.campaigns.found(Arc::clone(&campaign));
                Ok(Some(campaign))
            }
            None => {
                self.campaigns.missing(id);
                Ok(None)
            }
        }
    }

    async fn refresh_campaign_count(&self) {
        let count = bounded(
            redis::cmd("ZCARD")
                .arg(self.keys.campaigns())
                .query_async::<u64>(&mut self.conn()),
        )
        .await;
        match count {
            Ok(n) => self.campaign_count.store(n, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %chain(&e), "cannot count campaigns"),
        }
    }

    /// Runs the stats script in `mode` for an existing campaign.
    async fn read_stats(
        &self,
        id: CampaignId,
        now: Timestamp,
        mode: &str,
    ) -> Result<Value, StoreError> {
        bounded(
            self.scripts
                .stats
                .key(self.keys.campaign_totals(id))
                .key(self.keys.campaign_absent(id))
                .arg(now.as_secs())
                .arg(mode)
                .invoke_async(&mut self.conn()),
        )
        .await
    }
}

/// `host:port` as `redis://host:port`.
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("redis://{url}")
    }
}

/// Wall-clock milliseconds: only for journal ages and marker grouping,
/// which are about real elapsed time, never for counting.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A metric as the reading scripts take it.
fn metric_arg(metric: Metric) -> &'static str {
    match metric {
        Metric::Impressions => "i",
        Metric::UniqueUsers => "u",
    }
}

fn unexpected(what: &str, value: &Value) -> StoreError {
    StoreError::internal(format!("unexpected reply from Redis for {what}: {value:?}"))
}

fn int_of(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// How many values the stats script answers per counter.
const STATS_VALUES: usize = 6;

/// Reads `(last_hour, last_day, total)` and the unique users of the same
/// windows from `values` at `at`.
fn stats_at(values: &[Value], at: usize) -> Option<Stats> {
    let n = |i: usize| values.get(at + i).and_then(int_of);
    Some(Stats {
        last_hour: n(0)?,
        last_day: n(1)?,
        total: n(2)?,
        unique_users: UniqueStats {
            last_hour: n(3)?,
            last_day: n(4)?,
            total: n(5)?,
        },
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn create_campaign(&self, campaign: Campaign) -> Result<Arc<Campaign>, StoreError> {
        let added: u8 = bounded(
            self.scripts
                .create_campaign
                .key(self.keys.campaigns())
                .arg(campaign.id.to_string())
                .arg(campaigns::encode(&campaign))
                .invoke_async(&mut self.conn()),
        )
        .await?;
        if added == 0 {
            return Err(StoreError::CampaignExists(campaign.id));
        }
        self.wait_for_replicas(&[keys::slot(self.keys.campaigns().as_bytes())])
            .await?;
        let campaign = Arc::new(campaign);
        self.campaigns.found(Arc::clone(&campaign));
        self.campaign_count.fetch_add(1, Ordering::Relaxed);
        Ok(campaign)
    }

    async fn campaign(&self, id: CampaignId) -> Result<Option<Arc<Campaign>>, StoreError> {
        self.lookup(id).await
    }

    async fn list_campaigns(
        &self,
        after: Option<CampaignId>,
        limit: usize,
    ) -> Result<Vec<Arc<Campaign>>, StoreError> {
        let members: Vec<Vec<u8>> = bounded(
            redis::cmd("ZRANGEBYLEX")
                .arg(self.keys.campaigns())
                .arg(campaigns::page_start(after))
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut self.conn()),
        )
        .await?;
        members
            .iter()
            .map(|m| {
                let campaign = Arc::new(campaigns::decode(m).map_err(StoreError::internal)?);
                self.campaigns.found(Arc::clone(&campaign));
                Ok(campaign)
            })
            .collect()
    }

    async fn apply(
        &self,
        batch: &[Impression],
        now: Timestamp,
    ) -> Result<Vec<TrackOutcome>, StoreError> {
        self.apply_batch(batch, now).await
    }

    async fn stats(&self, id: CampaignId, now: Timestamp) -> Result<Option<Stats>, StoreError> {
        if self.lookup(id).await?.is_none() {
            return Ok(None);
        }
        let reply = self.read_stats(id, now, "a").await?;
        match &reply {
            Value::Array(values) => stats_at(values, 0)
                .map(Some)
                .ok_or_else(|| unexpected("stats", &reply)),
            _ => Err(unexpected("stats", &reply)),
        }
    }

    async fn ad_stats(
        &self,
        id: CampaignId,
        now: Timestamp,
    ) -> Result<Option<AdBreakdown>, StoreError> {
        if self.lookup(id).await?.is_none() {
            return Ok(None);
        }
        let reply = self.read_stats(id, now, "ads").await?;
        let parse = |values: &[Value]| -> Option<AdBreakdown> {
            let exceeded = int_of(values.first()?)? != 0;
            let ads = usize::try_from(int_of(values.get(1)?)?).ok()?;
            let campaign = stats_at(values, 2)?;
            let other = stats_at(values, 2 + STATS_VALUES)?;
            let mut per_ad = Vec::with_capacity(ads);
            for i in 0..ads {
                let at = 2 + 2 * STATS_VALUES + (1 + STATS_VALUES) * i;
                let name = match values.get(at)? {
                    Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                    _ => return None,
                };
                per_ad.push((AdId::parse(name).ok()?, stats_at(values, at + 1)?));
            }
            per_ad.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Some(AdBreakdown {
                campaign,
                ads: per_ad,
                other,
                limit: self.rules.max_ads,
                limit_exceeded: exceeded,
            })
        };
        match &reply {
            Value::Array(values) => parse(values)
                .map(Some)
                .ok_or_else(|| unexpected("ad stats", &reply)),
            _ => Err(unexpected("ad stats", &reply)),
        }
    }

    async fn timeseries(
        &self,
        id: CampaignId,
        resolution: Resolution,
        metric: Metric,
        first: u64,
        count: usize,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        if self.lookup(id).await?.is_none() {
            return Ok(None);
        }
        let kind = match resolution {
            Resolution::Second => "s",
            Resolution::Minute => "m",
            Resolution::Hour => "h",
        };
        let series: Vec<u64> = bounded(
            self.scripts
                .series
                .key(self.keys.campaign_totals(id))
                .key(self.keys.campaign_absent(id))
                .arg(kind)
                .arg(first)
                .arg(count)
                .arg(metric_arg(metric))
                .invoke_async(&mut self.conn()),
        )
        .await?;
        if series.len() != count {
            return Err(StoreError::internal(format!(
                "Redis answered {} buckets for {count}",
                series.len()
            )));
        }
        Ok(Some(series))
    }

    async fn range_counts(
        &self,
        id: CampaignId,
        metric: Metric,
        ranges: &[(u64, u64)],
        now: Timestamp,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        if self.lookup(id).await?.is_none() {
            return Ok(None);
        }
        let mut call = self.scripts.range.prepare_invoke();
        call.key(self.keys.campaign_totals(id))
            .key(self.keys.campaign_absent(id))
            .arg(metric_arg(metric))
            .arg(now.as_secs())
            .arg(self.rules.keep_hours)
            .arg(self.rules.history_hours)
            .arg(ranges.len());
        for &(from, to) in ranges {
            call.arg(from).arg(to);
        }
        let counts: Vec<u64> = bounded(call.invoke_async(&mut self.conn())).await?;
        if counts.len() != ranges.len() {
            return Err(StoreError::internal(format!(
                "Redis answered {} counts for {} ranges",
                counts.len(),
                ranges.len()
            )));
        }
        Ok(Some(counts))
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        // On a cluster, PING goes to every master and must succeed on all.
        bounded(redis::cmd("PING").query_async::<Value>(&mut self.conn())).await?;
        Ok(())
    }

    async fn maintain(&self, _now: Timestamp) {
        self.refresh_campaign_count().await;
        if !self.is_cluster() {
            return;
        }
        // One replay at a time per node, every REPLAY_EVERY at most.
        let Ok(mut last) = self.last_replay.try_lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < REPLAY_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.replay_journal(REPLAY_MIN_AGE).await {
            tracing::warn!(error = %chain(&e), "replaying the Redis journal failed; will retry");
        }
    }

    fn acknowledges_after_apply(&self) -> bool {
        // A 202 only once the chunk is in Redis: never one that is lost.
        true
    }

    /// `SET NX` a fresh secret, then `GET` whichever won: every node that
    /// races to make one ends up with the first. The caller keeps it, so
    /// this runs once per node. Replies never carry it into an error.
    async fn pixel_id_secret(&self) -> Result<HashSecret, StoreError> {
        let key = self.keys.pixel_id_secret();
        let fresh = HashSecret::generate()?;
        bounded(
            redis::cmd("SET")
                .arg(&key)
                .arg(fresh.to_hex())
                .arg("NX")
                .query_async::<Value>(&mut self.conn()),
        )
        .await?;
        let kept: Option<String> =
            bounded(redis::cmd("GET").arg(&key).query_async(&mut self.conn())).await?;
        kept.as_deref()
            .and_then(HashSecret::from_hex)
            .ok_or_else(|| {
                StoreError::internal(format!(
                    "Redis key {key} does not hold a pixel id secret (64 hex digits)"
                ))
            })
    }

    /// This node's own state: the campaigns it caches. (The dedup keys and
    /// counters are Redis's: `maxmemory`, docs/redis.md.)
    fn memory_use(&self) -> MemoryUse {
        MemoryUse {
            campaigns: self.campaigns.heap_bytes(),
            ..MemoryUse::default()
        }
    }

    fn gauges(&self) -> StoreGauges {
        let state = self.link.state();
        StoreGauges {
            // Dedup entries are Redis keys with their own expiry; counting
            // them would mean scanning. Redis's INFO keyspace has them.
            live_dedup_keys: 0,
            campaigns: self.campaign_count.load(Ordering::Relaxed),
            backend: Some(BackendGauges {
                masters_up: state.masters_up,
                reconnects: state.reconnects,
                failovers: state.failovers,
                replica_ack_refusals: self.ack_refusals.load(Ordering::Relaxed),
            }),
        }
    }
}

/// Groups `items` by a key, keeping their order within each group and the
/// order in which groups first appear.
fn group_by<T, K: std::hash::Hash + Eq + Copy>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<(K, Vec<T>)> {
    let mut index: HashMap<K, usize> = HashMap::new();
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        let at = *index.entry(k).or_insert_with(|| {
            groups.push((k, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(item);
    }
    groups
}
