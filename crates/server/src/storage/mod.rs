//! The storage seam: where counted state lives.
//!
//! The HTTP layer and the ingest workers only see [`Store`]. It is shaped
//! for batches ([`Store::apply`] takes many impressions at once) because every
//! real backend is fastest that way: one log write and fsync per batch, one
//! Redis round trip per batch. Backends:
//!
//! * [`memory::MemoryStore`]: the embedded [`Engine`](impression_core::Engine),
//!   nothing on disk.
//! * [`disk::DiskStore`]: the same engine, made durable by a checksummed
//!   append-only log and snapshots in `DATA_DIR`.
//! * [`redis::RedisStore`]: Redis, Valkey or Redis Cluster, shared by many
//!   stateless nodes; the same rules, applied inside Redis by Lua scripts.
//!
//! A backend that must persist an impression before it may be acknowledged
//! says so with [`Store::acknowledges_after_apply`]; the HTTP layer then
//! answers 202 only once the worker has applied the batch holding it.
//!
//! Besides counts, a store keeps one secret: the [`HashSecret`] the pixel's
//! hashed user ids are derived from when `PIXEL_HASH_SECRET` is not set
//! ([`Store::pixel_id_secret`]). Every node of a deployment must derive the
//! same ids, before and after a restart, so it lives where the state lives.

pub mod disk;
pub mod memory;
pub mod redis;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use impression_core::{
    AdBreakdown, Campaign, CampaignId, Clock, EngineConfig, Impression, MemoryUse, Metric,
    Resolution, Stats, Timestamp, TrackOutcome,
};
use thiserror::Error;

/// The cause of a storage failure, kept typed so logs show the whole
/// chain; shared, because one failed batch answers several requests.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a storage operation failed.
#[derive(Clone, Debug, Error)]
pub enum StoreError {
    /// The backend cannot be reached or cannot accept writes right now;
    /// retrying later may succeed.
    #[error("storage is unavailable: {reason}")]
    Unavailable {
        /// What could not be done.
        reason: String,
        /// Why, if something below failed.
        #[source]
        cause: Option<Cause>,
    },
    /// A campaign with this id exists already.
    #[error("campaign {0} already exists")]
    CampaignExists(CampaignId),
    /// Anything else; the message is for logs, not clients.
    #[error("storage failure: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
        /// Why, if something below failed.
        #[source]
        cause: Option<Cause>,
    },
}

impl StoreError {
    /// Unavailable, for `reason` alone.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        StoreError::Unavailable {
            reason: reason.into(),
            cause: None,
        }
    }

    /// Unavailable: `reason`, because of `cause`.
    pub fn unavailable_by(
        reason: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Unavailable {
            reason: reason.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// A failure, for `reason` alone.
    pub fn internal(reason: impl Into<String>) -> Self {
        StoreError::Internal {
            reason: reason.into(),
            cause: None,
        }
    }

    /// A failure: `reason`, because of `cause`.
    pub fn internal_by(
        reason: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Internal {
            reason: reason.into(),
            cause: Some(Arc::new(cause)),
        }
    }
}

/// Point-in-time sizes reported by a backend, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Keys currently held for duplicate detection.
    pub live_dedup_keys: u64,
    /// Campaigns known.
    pub campaigns: u64,
    /// The state of a shared backend's connection (Redis), if any.
    pub backend: Option<BackendGauges>,
}

/// The connection to a shared backend (Redis), for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendGauges {
    /// Masters that answered the last check (a single node: 0 or 1).
    pub masters_up: u64,
    /// Connections replaced because they were stuck or the master moved.
    pub reconnects: u64,
    /// Changes of master seen: failovers, slots moved to another master.
    pub failovers: u64,
    /// Chunks answered 503 because too few replicas acknowledged them.
    pub replica_ack_refusals: u64,
}

/// A random 256-bit secret, generated once and kept by the store: the
/// root of the pixel's hashed user ids when `PIXEL_HASH_SECRET` is not set.
/// Its `Debug` never shows it, so it cannot leak into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct HashSecret([u8; 32]);

impl HashSecret {
    /// A new secret from the operating system's random source.
    pub fn generate() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| StoreError::unavailable_by("no randomness for the pixel id secret", e))?;
        Ok(HashSecret(bytes))
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The secret as 64 lowercase hex digits, as stores keep it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`HashSecret::to_hex`]'s form (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(HashSecret(bytes))
    }

    /// The secret kept in `cell`, generated on first use.
    pub fn kept_in(cell: &OnceLock<HashSecret>) -> Result<Self, StoreError> {
        if let Some(secret) = cell.get() {
            return Ok(secret.clone());
        }
        let fresh = Self::generate()?;
        Ok(cell.get_or_init(|| fresh).clone())
    }
}

impl std::fmt::Debug for HashSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashSecret(***)")
    }
}

/// A place to keep campaigns and counts. Implementations are shared by all
/// handlers and workers, so every method takes `&self`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new campaign.
    async fn create_campaign(&self, campaign: Campaign) -> Result<Arc<Campaign>, StoreError>;

    /// The campaign with this id, if any.
    async fn campaign(&self, id: CampaignId) -> Result<Option<Arc<Campaign>>, StoreError>;

    /// Up to `limit` campaigns in id order, after `after`.
    async fn list_campaigns(
        &self,
        after: Option<CampaignId>,
        limit: usize,
    ) -> Result<Vec<Arc<Campaign>>, StoreError>;

    /// Applies the dedup rule to a batch and counts what is not a duplicate.
    /// Returns one outcome per impression, in order. On error nothing of the
    /// batch may be reported as counted.
    async fn apply(
        &self,
        batch: &[Impression],
        now: Timestamp,
    ) -> Result<Vec<TrackOutcome>, StoreError>;

    /// The campaign's stats at `now`, or `None` if it does not exist.
    async fn stats(&self, id: CampaignId, now: Timestamp) -> Result<Option<Stats>, StoreError>;

    /// The campaign's stats per ad at `now`, or `None` if it does not exist.
    async fn ad_stats(
        &self,
        id: CampaignId,
        now: Timestamp,
    ) -> Result<Option<AdBreakdown>, StoreError>;

    /// `metric` (counted impressions, or their distinct users) in `count`
    /// buckets of `resolution`, the first being bucket number `first` (Unix
    /// seconds / bucket width); `None` if the campaign does not exist.
    /// Distinct users are kept per minute and hour: per second, zeros.
    async fn timeseries(
        &self,
        id: CampaignId,
        resolution: Resolution,
        metric: Metric,
        first: u64,
        count: usize,
    ) -> Result<Option<Vec<u64>>, StoreError>;

    /// `metric` over each UTC range `[from, to)` (Unix seconds), or `None`
    /// if the campaign does not exist: impressions stamped in the range
    /// (ranges of whole quarter hours, within the daily history: a local
    /// day or hour in any time zone), or the distinct users of the hours
    /// that start in it (within the hourly history), each at most those
    /// hours' impressions.
    async fn range_counts(
        &self,
        id: CampaignId,
        metric: Metric,
        ranges: &[(u64, u64)],
        now: Timestamp,
    ) -> Result<Option<Vec<u64>>, StoreError>;

    /// Whether the backend can serve requests now (for `/readyz`).
    async fn check_ready(&self) -> Result<(), StoreError>;

    /// Housekeeping at `now` (expiry of idle state); called about once a second.
    async fn maintain(&self, now: Timestamp);

    /// Whether an impression may be acknowledged only after [`Store::apply`]
    /// returned for its batch (durable backends), rather than once queued.
    fn acknowledges_after_apply(&self) -> bool;

    /// Sizes for the metrics endpoint.
    fn gauges(&self) -> StoreGauges;

    /// Live dedup keys, if this backend keeps them and can tell cheaply
    /// (read on every request when `MAX_DEDUP_KEYS` is set).
    fn live_keys_estimate(&self) -> Option<u64> {
        None
    }

    /// Heap bytes this node's share of the state holds, by kind: the
    /// store's own estimate, kept up to date as the state changes (cheap
    /// enough to read on every request). Zero for what lives elsewhere.
    fn memory_use(&self) -> MemoryUse {
        MemoryUse::default()
    }

    /// Whether tracking `impression` at `now` would count it (and so add
    /// state), rather than find it a duplicate. A backend that cannot tell
    /// cheaply answers `true`.
    fn would_count(&self, impression: &Impression, now: Timestamp) -> bool {
        let _ = (impression, now);
        true
    }

    /// Whether tracking `impression` at `now` would find its key live (and
    /// so add no key).
    fn is_live_key(&self, impression: &Impression, now: Timestamp) -> bool {
        let _ = (impression, now);
        false
    }

    /// The deployment's pixel id secret: generated by the first caller, then
    /// the same for every later call, from any node sharing this store, and
    /// (for a durable store) after a restart. The default keeps it for the
    /// life of the process only, which suits stores that keep nothing else
    /// either.
    async fn pixel_id_secret(&self) -> Result<HashSecret, StoreError> {
        static PROCESS: OnceLock<HashSecret> = OnceLock::new();
        HashSecret::kept_in(&PROCESS)
    }

    /// Flushes and releases everything; called once, after the last batch was
    /// applied at shutdown.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Which backend holds the state, with its own options.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The embedded engine only: everything is lost on exit.
    Memory,
    /// The embedded engine, made durable in `dir`.
    Disk {
        /// The data directory.
        dir: PathBuf,
        /// How the log is written.
        options: disk::DiskOptions,
    },
    /// Redis or Redis Cluster, shared by many nodes.
    Redis(redis::RedisOptions),
}

impl Backend {
    /// Its name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Disk { .. } => "disk",
            Backend::Redis(_) => "redis",
        }
    }
}

/// Where state lives and the rules it is counted by.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// The backend.
    pub backend: Backend,
    /// The counting rules (TTL, scope, retention, limits).
    pub engine: EngineConfig,
}

/// Opens the backend the settings name.
pub async fn open(
    settings: &StorageSettings,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Store>, StoreError> {
    let engine = settings.engine.clone();
    match &settings.backend {
        Backend::Memory => Ok(Arc::new(memory::MemoryStore::new(engine))),
        Backend::Disk { dir, options } => {
            let (dir, options) = (dir.clone(), *options);
            // Loading replays files: keep it off the async threads.
            let store = tokio::task::spawn_blocking(move || {
                disk::DiskStore::open(&dir, options, engine, clock.now())
            })
            .await
            .map_err(|e| StoreError::internal_by("the loading thread failed", e))?
            .map_err(|e| StoreError::unavailable_by("cannot load the data directory", e))?;
            Ok(Arc::new(store))
        }
        Backend::Redis(options) => Ok(Arc::new(redis::RedisStore::open(options, &engine).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_through_hex_and_never_show() {
        let secret = HashSecret::generate().unwrap();
        let hex = secret.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(
            HashSecret::from_hex(&format!("{hex}\n")),
            Some(secret.clone())
        );
        assert_ne!(HashSecret::generate().unwrap(), secret, "random");
        assert_eq!(format!("{secret:?}"), "HashSecret(***)");
        for bad in ["", "zz", &hex[..62], &format!("{hex}00"), &"g".repeat(64)] {
            assert_eq!(HashSecret::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_kept_secret_is_generated_once() {
        let cell = OnceLock::new();
        let first = HashSecret::kept_in(&cell).unwrap();
        assert_eq!(HashSecret::kept_in(&cell).unwrap(), first);
    }
}
