//! The durable backend: the embedded store, wrapped with an append-only log
//! and snapshots in a data directory (like Redis's AOF with rewrites, or a
//! database's write-ahead log with checkpoints).
//!
//! [`DiskStore`] wraps a [`MemoryStore`] and adds only what durability
//! needs: every read is the memory store's; a write is the memory store's
//! decision, appended to the log before it is acknowledged.
//!
//! * `log`: one writer at a time (a mutex) applies a batch to the memory
//!   store and appends the counted impressions as one checksummed frame,
//!   with a single `write`. Applying and appending under one lock makes the
//!   log order the apply order, so replaying the log rebuilds exactly the
//!   state that wrote it (the per-ad limit, for one, depends on which ad was
//!   counted first). A 202 means the impression is in the kernel's page
//!   cache: a crash of the process (kill -9) loses nothing acknowledged,
//!   whatever the fsync policy.
//! * `sync`: when the log reaches the disk. With `FSYNC=always` the
//!   answer also waits for the fsync (shared by every writer in flight:
//!   group commit), so power loss loses nothing acknowledged; with
//!   `everysec` it loses at most about a second.
//! * `compaction`: closed segments replaced by snapshots of the live state,
//!   taken in a background thread while writes go on, so disk use follows
//!   the live state.
//! * `recovery`: the directory's lock, the newest snapshot and the
//!   segments after it replayed at start.
//! * `frame`, `record`, `snapshot`, `layout`: the bytes on disk,
//!   each file documenting its layout.
//!
//! If an append or fsync fails, memory is ahead of the log: the store stops
//! taking writes (503, `/readyz` fails) rather than acknowledge anything it
//! cannot keep, and a restart rebuilds from what is on disk.

mod compaction;
pub(crate) mod frame;
mod layout;
mod log;
pub(crate) mod record;
mod recovery;
mod secret;
mod snapshot;
mod sync;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use impression_core::{
    AdBreakdown, Campaign, CampaignId, EngineConfig, Fingerprint, Impression, MemoryUse, Metric,
    Resolution, Stats, Timestamp, TrackOutcome, user_hash,
};

use parking_lot::Mutex;

use self::compaction::Compactor;
use self::frame::ReadError;
use self::log::{Closed, Log, LogError};
use super::memory::MemoryStore;
use super::{HashSecret, Store, StoreError, StoreGauges};
use crate::bulk::{self, Bulk};

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Another process holds the directory's lock.
    #[error(
        "{dir} is in use by another impression-counter process (lock file {dir}/LOCK); \
         stop it or choose another DATA_DIR"
    )]
    Locked {
        /// The data directory.
        dir: String,
    },
    /// A file is damaged; nothing was changed.
    #[error("{path}: corrupt data at byte offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<ReadError> for DiskError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Corrupt {
                path,
                offset,
                reason,
            } => DiskError::Corrupt {
                path,
                offset,
                reason,
            },
            ReadError::Io { path, source } => DiskError::Io {
                context: format!("reading {}", path.display()),
                source,
            },
        }
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let context = context.into();
    move |source| DiskError::Io { context, source }
}

/// When acknowledged writes reach the disk (`FSYNC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before acknowledging; concurrent writers share one fsync.
    Always,
    /// fsync once a second: power loss loses at most about a second.
    Everysec,
    /// Never fsync explicitly; the OS writes back when it likes.
    No,
}

/// Tuning of the log.
#[derive(Clone, Copy, Debug)]
pub struct DiskOptions {
    /// When acknowledged writes are fsynced.
    pub fsync: FsyncPolicy,
    /// Size at which a log segment is closed and a new one started.
    pub segment_bytes: u64,
}

/// What the store and its compactor share: the live state and its log.
struct Core {
    memory: MemoryStore,
    log: Log,
}

/// The durable backend: a [`MemoryStore`] and its log.
pub struct DiskStore {
    core: Arc<Core>,
    compactor: Compactor,
    /// The data directory.
    dir: PathBuf,
    /// The pixel id secret, once read or made (see `secret.rs`).
    id_secret: Mutex<Option<HashSecret>>,
    /// Held for the life of the store: the directory's lock.
    _lock: File,
}

impl DiskStore {
    /// Opens (or creates) the data directory and rebuilds the state from it
    /// as of `now`. Blocking: it reads every file.
    pub fn open(
        dir: &Path,
        options: DiskOptions,
        config: EngineConfig,
        now: Timestamp,
    ) -> Result<Self, DiskError> {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let lock = recovery::lock_dir(dir)?;
        let started = std::time::Instant::now();
        let memory = MemoryStore::new(config);
        let loaded = recovery::load(dir, memory.engine(), now)?;
        let log = Log::start(dir, options, loaded.next_segment)?;
        tracing::info!(
            dir = %dir.display(),
            campaigns = memory.engine().campaign_count(),
            live_keys = memory.engine().live_dedup_keys(),
            segments_replayed = loaded.segments,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "durable state loaded"
        );
        Ok(DiskStore {
            compactor: Compactor::new(
                dir,
                options.segment_bytes,
                loaded.snapshot_bytes,
                loaded.replayed_bytes,
            ),
            core: Arc::new(Core { memory, log }),
            dir: dir.to_owned(),
            id_secret: Mutex::new(None),
            _lock: lock,
        })
    }

    /// The store inside, for tests and benchmarks that look beneath the API.
    pub fn memory(&self) -> &MemoryStore {
        &self.core.memory
    }

    fn log(&self) -> &Log {
        &self.core.log
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.log().check_writable().map_err(unwritable)
    }

    /// A segment was closed by an append: compaction may be due.
    fn closed(&self, closed: Option<Closed>) {
        if let Some(closed) = closed {
            self.compactor.segment_closed(&self.core, closed.bytes);
        }
    }

    /// The CPU part of applying a batch: the memory store decides, and the
    /// counted impressions are appended to the log (written, not yet
    /// synced). Returns the outcomes and the log offset that must be durable
    /// before they may be acknowledged.
    fn count_and_log(
        &self,
        batch: &[Impression],
        now: Timestamp,
    ) -> Result<(Vec<TrackOutcome>, u64), StoreError> {
        let mut w = self.log().lock();
        let outcomes = self.memory().apply_now(batch, now);
        w.payload.clear();
        record::begin_counted(&mut w.payload);
        let scope = self.memory().engine().config().scope;
        let mut counted = 0;
        for (imp, outcome) in batch.iter().zip(&outcomes) {
            if *outcome == TrackOutcome::Counted {
                let fp = Fingerprint::of(&imp.campaign_id, &imp.ad_id, &imp.user_id, scope);
                record::push_counted(
                    &mut w.payload,
                    &imp.campaign_id,
                    &imp.ad_id,
                    fp,
                    user_hash(imp),
                    imp.timestamp,
                );
                counted += 1;
            }
        }
        // Even a batch of duplicates waits for what it was judged
        // against: the earlier counted impressions must be durable too.
        if counted == 0 {
            return Ok((outcomes, w.offset()));
        }
        let (offset, closed) = self.log().append(&mut w).map_err(unwritable)?;
        drop(w);
        self.closed(closed);
        Ok((outcomes, offset))
    }
}

/// The 503 for a log that can no longer be written.
fn unwritable(cause: Arc<LogError>) -> StoreError {
    StoreError::Unavailable {
        reason: "the log cannot be written; restart the service to recover from DATA_DIR".into(),
        cause: Some(cause),
    }
}

#[async_trait]
impl Store for DiskStore {
    async fn create_campaign(&self, campaign: Campaign) -> Result<Arc<Campaign>, StoreError> {
        self.check_writable()?;
        let (created, offset, closed) = {
            let mut w = self.log().lock();
            let created = self.memory().create_now(campaign)?;
            w.payload.clear();
            record::encode_campaign(&mut w.payload, &created);
            let (offset, closed) = self.log().append(&mut w).map_err(unwritable)?;
            (created, offset, closed)
        };
        self.closed(closed);
        self.log().durable(offset).await.map_err(unwritable)?;
        Ok(created)
    }

    async fn campaign(&self, id: CampaignId) -> Result<Option<Arc<Campaign>>, StoreError> {
        self.memory().campaign(id).await
    }

    async fn list_campaigns(
        &self,
        after: Option<CampaignId>,
        limit: usize,
    ) -> Result<Vec<Arc<Campaign>>, StoreError> {
        self.memory().list_campaigns(after, limit).await
    }

    async fn apply(
        &self,
        batch: &[Impression],
        now: Timestamp,
    ) -> Result<Vec<TrackOutcome>, StoreError> {
        self.check_writable()?;
        let large = bulk::is_large_batch(batch.len());
        let (outcomes, offset) = bulk::run(Bulk::Apply, large, || self.count_and_log(batch, now))?;
        // Waiting for the disk is not bulk work: it happens here.
        self.log().durable(offset).await.map_err(unwritable)?;
        Ok(outcomes)
    }

    async fn stats(&self, id: CampaignId, now: Timestamp) -> Result<Option<Stats>, StoreError> {
        self.memory().stats(id, now).await
    }

    async fn ad_stats(
        &self,
        id: CampaignId,
        now: Timestamp,
    ) -> Result<Option<AdBreakdown>, StoreError> {
        self.memory().ad_stats(id, now).await
    }

    async fn timeseries(
        &self,
        id: CampaignId,
        resolution: Resolution,
        metric: Metric,
        first: u64,
        count: usize,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        self.memory()
            .timeseries(id, resolution, metric, first, count)
            .await
    }

    async fn range_counts(
        &self,
        id: CampaignId,
        metric: Metric,
        ranges: &[(u64, u64)],
        now: Timestamp,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        self.memory().range_counts(id, metric, ranges, now).await
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.check_writable()
    }

    async fn maintain(&self, now: Timestamp) {
        self.memory().maintain(now).await;
        self.compactor.catch_up(&self.core);
    }

    fn acknowledges_after_apply(&self) -> bool {
        true
    }

    fn live_keys_estimate(&self) -> Option<u64> {
        self.memory().live_keys_estimate()
    }

    fn is_live_key(&self, impression: &Impression, now: Timestamp) -> bool {
        self.memory().is_live_key(impression, now)
    }

    /// The live state. (A running compaction copies one campaign or one
    /// dedup shard at a time: transient, like a request's body.)
    fn memory_use(&self) -> MemoryUse {
        self.memory().memory_use()
    }

    fn would_count(&self, impression: &Impression, now: Timestamp) -> bool {
        self.memory().would_count(impression, now)
    }

    fn gauges(&self) -> StoreGauges {
        self.memory().gauges()
    }

    /// Read from (or made once into) `DATA_DIR/pixel-id.secret`. The file
    /// is a few bytes and touched once per process, so it is read inline,
    /// under the mutex that keeps two first callers from making two.
    async fn pixel_id_secret(&self) -> Result<HashSecret, StoreError> {
        let mut kept = self.id_secret.lock();
        if let Some(secret) = kept.as_ref() {
            return Ok(secret.clone());
        }
        let secret = secret::load_or_create(&self.dir)
            .map_err(|e| StoreError::unavailable_by("cannot keep the pixel id secret", e))?;
        *kept = Some(secret.clone());
        Ok(secret)
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Joins the compactor and the fsync thread: blocking work.
        bulk::blocking(|| {
            self.compactor.finish();
            self.log().close()
        })
        .map_err(|e| StoreError::internal_by("the final fsync of the log failed", e))
    }
}
