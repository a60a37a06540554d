//! The durable backend: the embedded engine, made durable by an append-only
//! log and snapshots in a data directory (like Redis's AOF with rewrites, or
//! a database's write-ahead log with checkpoints).
//!
//! # Writing
//!
//! One writer at a time (a mutex) applies a batch to the in-memory engine and
//! appends the counted impressions to the log as one checksummed frame, with
//! a single `write`. Only then is the batch answered, so a 202 means the
//! impression is in the kernel's page cache: a crash of the process (kill -9)
//! loses nothing acknowledged, whatever the fsync policy. With
//! `FSYNC=always` the answer also waits for the fsync (shared by every
//! writer in flight: group commit), so power loss loses nothing
//! acknowledged; with `everysec` it loses at most about a second.
//!
//! Applying and appending under one lock makes the log order the apply
//! order, so replaying the log rebuilds exactly the state that wrote it (the
//! per-ad limit, for one, depends on which ad was counted first).
//!
//! If an append or fsync fails, memory is ahead of the log: the store stops
//! taking writes (503, `/readyz` fails) rather than acknowledge anything it
//! cannot keep, and a restart rebuilds from what is on disk.
//!
//! # Compaction
//!
//! The log is cut into segments of `LOG_SEGMENT_BYTES`. When the closed
//! segments since the last snapshot outgrow that snapshot (and at least one
//! segment), a background thread loads the last snapshot and those segments
//! into an engine of its own, writes a new snapshot, and deletes what it
//! folded in. The live engine is never locked for it, so ingestion does not
//! stall; the cost is the compactor's memory (about the size of the live
//! state) while it runs. Disk use stays proportional to the live state: a
//! snapshot holds only unexpired dedup keys and bounded window counters.
//!
//! # Starting
//!
//! Load the newest snapshot, replay the segments after it in order, start a
//! new segment. A torn last frame (a crash mid-write) is truncated with a
//! warning; damage anywhere else stops the start with the file and offset.
//! A second process on the same directory is refused by a lock file.

pub(crate) mod frame;
mod layout;
pub(crate) mod record;
mod secret;
mod snapshot;
mod sync;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use impression_core::{
    AdBreakdown, Campaign, CampaignId, Clock, Engine, EngineConfig, Fingerprint, Impression,
    Resolution, Stats, Timestamp, TrackOutcome,
};
use parking_lot::Mutex;

use self::frame::{Ending, FrameReader, ReadError};
use self::layout::{LOG_MAGIC, Listing, segment_path, snapshot_path};
use self::record::LogRecord;
use self::sync::Syncer;
use super::{HashSecret, Store, StoreError, StoreGauges};
use crate::bulk::{self, Bulk};
use crate::config::FsyncPolicy;

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
    #[error("{context}: {source}")]
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
                context: path.display().to_string(),
                source,
            },
        }
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let context = context.into();
    move |source| DiskError::Io { context, source }
}

/// Tuning of the log.
#[derive(Clone, Copy, Debug)]
pub struct DiskOptions {
    /// When acknowledged writes are fsynced.
    pub fsync: FsyncPolicy,
    /// Size at which a log segment is closed and a new one started.
    pub segment_bytes: u64,
}

/// The durable backend.
pub struct DiskStore {
    engine: Arc<Engine>,
    dir: PathBuf,
    options: DiskOptions,
    clock: Arc<dyn Clock>,
    writer: Mutex<Writer>,
    syncer: Syncer,
    /// Set once a write failed: memory is ahead of the log from then on.
    failed: Mutex<Option<String>>,
    compaction: Arc<Mutex<Compaction>>,
    /// The pixel id secret, once read or made (see `secret.rs`).
    id_secret: Mutex<Option<HashSecret>>,
    /// Held for the life of the store: the directory's lock.
    _lock: File,
}

/// The compactor thread's nice value: below the bulk threads that apply
/// (nice 5), so compaction takes what ingest leaves first, yet at a normal
/// policy, so it keeps a share of a machine that is never idle.
const COMPACTOR_NICE: i32 = 10;

/// The open segment and the encoding buffers.
struct Writer {
    segment: u64,
    file: Arc<File>,
    segment_len: u64,
    /// Bytes appended to the log since start-up, across segments.
    offset: u64,
    payload: Vec<u8>,
    framed: Vec<u8>,
}

#[derive(Default)]
struct Compaction {
    running: Option<std::thread::JoinHandle<()>>,
    /// Size of the newest snapshot.
    snapshot_bytes: u64,
    /// Bytes of closed segments not yet folded into a snapshot.
    closed_bytes: u64,
}

impl DiskStore {
    /// Opens (or creates) the data directory and rebuilds the state from it.
    pub fn open(
        dir: &Path,
        options: DiskOptions,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DiskError> {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(format!("opening {}", lock_path.display())))?;
        lock_exclusively(&lock, dir, &lock_path)?;

        let started = std::time::Instant::now();
        let now = clock.now();
        let engine = Engine::new(config);
        let listing = Listing::read(dir).map_err(io_error(format!("listing {}", dir.display())))?;
        let base = listing.snapshots.last().copied();
        let mut compaction = Compaction::default();
        if let Some(n) = base {
            let path = snapshot_path(dir, n);
            snapshot::load(&path, &engine, now)?;
            compaction.snapshot_bytes = file_len(&path);
        }
        let base = base.unwrap_or(0);
        let segments: Vec<u64> = listing
            .segments
            .iter()
            .copied()
            .filter(|&n| n >= base)
            .collect();
        for (i, &n) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            compaction.closed_bytes += replay_segment(&segment_path(dir, n), &engine, now, last)?;
        }
        // Leftovers of an interrupted compaction: folded into the snapshot.
        for path in listing
            .segments
            .iter()
            .filter(|&&n| n < base)
            .map(|&n| segment_path(dir, n))
            .chain(
                listing
                    .snapshots
                    .iter()
                    .filter(|&&n| n < base)
                    .map(|&n| snapshot_path(dir, n)),
            )
            .chain(listing.temporary.iter().cloned())
        {
            std::fs::remove_file(&path)
                .map_err(io_error(format!("removing {}", path.display())))?;
        }

        let segment = segments.last().map_or(base, |n| n + 1);
        let file = create_segment(dir, segment)?;
        tracing::info!(
            dir = %dir.display(),
            campaigns = engine.campaign_count(),
            live_keys = engine.live_dedup_keys(),
            segments_replayed = segments.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "durable state loaded"
        );
        let file = Arc::new(file);
        Ok(DiskStore {
            engine: Arc::new(engine),
            dir: dir.to_owned(),
            options,
            clock,
            syncer: Syncer::start(options.fsync, Arc::clone(&file), 0),
            writer: Mutex::new(Writer {
                segment,
                file,
                segment_len: LOG_MAGIC.len() as u64,
                offset: 0,
                payload: Vec::new(),
                framed: Vec::new(),
            }),
            failed: Mutex::new(None),
            compaction: Arc::new(Mutex::new(compaction)),
            id_secret: Mutex::new(None),
            _lock: lock,
        })
    }

    /// The engine inside, for tests and benchmarks that look beneath the API.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        match self.failed.lock().as_deref() {
            None => Ok(()),
            Some(reason) => Err(StoreError::Unavailable(format!(
                "the log cannot be written ({reason}); restart the service to recover from DATA_DIR"
            ))),
        }
    }

    fn fail(&self, reason: String) -> StoreError {
        tracing::error!(%reason, "the durable log failed; refusing writes until restart");
        let mut failed = self.failed.lock();
        failed.get_or_insert(reason);
        drop(failed);
        match self.check_writable() {
            Err(e) => e,
            Ok(()) => StoreError::Internal("the log failed".into()),
        }
    }

    /// Appends the record in `w.payload` as one frame; rotates the segment
    /// when it is full. Returns the log offset after the record.
    fn append(&self, w: &mut Writer) -> Result<u64, String> {
        w.framed.clear();
        frame::encode_frame(&mut w.framed, &w.payload);
        (&*w.file).write_all(&w.framed).map_err(|e| {
            format!(
                "writing {}: {e}",
                segment_path(&self.dir, w.segment).display()
            )
        })?;
        w.segment_len += w.framed.len() as u64;
        w.offset += w.framed.len() as u64;
        self.syncer.written(w.offset);
        if w.segment_len >= self.options.segment_bytes {
            self.rotate(w)?;
        }
        Ok(w.offset)
    }

    /// Closes the full segment (fsynced: closed segments are always complete)
    /// and starts the next one.
    fn rotate(&self, w: &mut Writer) -> Result<(), String> {
        w.file.sync_data().map_err(|e| {
            format!(
                "fsync of {}: {e}",
                segment_path(&self.dir, w.segment).display()
            )
        })?;
        let next = w.segment + 1;
        let file = Arc::new(create_segment(&self.dir, next).map_err(|e| e.to_string())?);
        self.syncer.switch_file(Arc::clone(&file), w.offset);
        let closed = w.segment_len;
        w.file = file;
        w.segment = next;
        w.segment_len = LOG_MAGIC.len() as u64;
        let mut compaction = self.compaction.lock();
        compaction.closed_bytes += closed;
        let due =
            compaction.closed_bytes >= compaction.snapshot_bytes.max(self.options.segment_bytes);
        let idle = compaction.running.as_ref().is_none_or(|t| t.is_finished());
        if due && idle {
            compaction.running = self.start_compaction(next);
        }
        Ok(())
    }

    /// Folds every segment before `upto` into a new snapshot, in a thread.
    /// `None` if no thread could be started: the next rotation tries again.
    fn start_compaction(&self, upto: u64) -> Option<std::thread::JoinHandle<()>> {
        let dir = self.dir.clone();
        let config = self.engine.config().clone();
        let now = self.clock.now();
        let state = Arc::clone(&self.compaction);
        let spawned = std::thread::Builder::new()
            .name("log-compactor".into())
            .spawn(move || {
                // Background upkeep: below the threads that apply and answer
                // (a spawned thread would inherit its spawner's priority, here a
                // bulk-apply thread's), but not idle, so it keeps up on a busy
                // machine.
                bulk::lower_priority(bulk::Priority::Nice(COMPACTOR_NICE));
                let started = std::time::Instant::now();
                match compact(&dir, &config, upto, now) {
                    Ok((snapshot_bytes, folded_bytes)) => {
                        let mut s = state.lock();
                        s.snapshot_bytes = snapshot_bytes;
                        s.closed_bytes = s.closed_bytes.saturating_sub(folded_bytes);
                        tracing::info!(
                            upto,
                            snapshot_bytes,
                            folded_bytes,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "log compacted"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, upto, "log compaction failed; will retry")
                    }
                }
            });
        spawned
            .inspect_err(
                |e| tracing::error!(error = %e, upto, "could not start log compaction; will retry"),
            )
            .ok()
    }

    /// Waits for the log to be durable up to `offset` if the policy says
    /// acknowledgements wait for it.
    async fn durable(&self, offset: u64) -> Result<(), StoreError> {
        if self.options.fsync == FsyncPolicy::Always {
            self.syncer
                .wait_durable(offset)
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

/// Replays one segment into `engine`. Returns its length after any
/// truncation of a torn tail (allowed only in the last segment).
fn replay_segment(
    path: &Path,
    engine: &Engine,
    now: Timestamp,
    last: bool,
) -> Result<u64, DiskError> {
    let mut reader = FrameReader::open(path, LOG_MAGIC)?;
    let corrupt = |offset: u64, reason: String| DiskError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    while let Some((offset, payload)) = reader.next_frame()? {
        match record::decode_log(&payload).map_err(|e| corrupt(offset, e))? {
            LogRecord::Campaign(c) => {
                // Ids are fresh UUIDs: a repeat can only be this record again.
                let _ = engine.create_campaign(c);
            }
            LogRecord::Counted(items) => {
                for i in items {
                    if !engine.replay_counted(
                        i.campaign_id,
                        &i.ad_id,
                        i.fingerprint,
                        i.timestamp,
                        now,
                    ) {
                        return Err(corrupt(
                            offset,
                            format!("a counted impression of unknown campaign {}", i.campaign_id),
                        ));
                    }
                }
            }
        }
    }
    match reader.ending() {
        Some(Ending::Torn { offset, reason }) if last => {
            tracing::warn!(
                file = %path.display(),
                offset,
                %reason,
                "truncating a torn write at the end of the log (it was never acknowledged)"
            );
            frame::truncate(path, *offset)
                .map_err(io_error(format!("truncating {}", path.display())))?;
            Ok(*offset)
        }
        Some(Ending::Torn { offset, reason }) => Err(corrupt(
            *offset,
            format!("{reason}, in a segment that was closed complete"),
        )),
        _ => Ok(file_len(path)),
    }
}

/// Builds the state up to segment `upto` from files alone, writes it as a
/// snapshot, and deletes what it replaces. Returns the snapshot's size and
/// the bytes of segments folded in.
fn compact(
    dir: &Path,
    config: &EngineConfig,
    upto: u64,
    now: Timestamp,
) -> Result<(u64, u64), DiskError> {
    let listing = Listing::read(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let engine = Engine::new(config.clone());
    let base = listing.snapshot_before(upto);
    if let Some(n) = base {
        snapshot::load(&snapshot_path(dir, n), &engine, now)?;
    }
    let base = base.unwrap_or(0);
    let folded: Vec<u64> = listing
        .segments
        .iter()
        .copied()
        .filter(|&n| n >= base && n < upto)
        .collect();
    let mut folded_bytes = 0;
    for &n in &folded {
        folded_bytes += replay_segment(&segment_path(dir, n), &engine, now, false)?;
    }
    let path = snapshot_path(dir, upto);
    let size =
        snapshot::write(&path, &engine).map_err(io_error(format!("writing {}", path.display())))?;
    for n in listing.segments.iter().filter(|&&n| n < upto) {
        let _ = std::fs::remove_file(segment_path(dir, *n));
    }
    for n in listing.snapshots.iter().filter(|&&n| n < upto) {
        let _ = std::fs::remove_file(snapshot_path(dir, *n));
    }
    let _ = frame::sync_dir(dir);
    Ok((size, folded_bytes))
}

/// Takes the directory's lock, retrying for a moment: a process that is
/// exiting (a restart), or a child that was forked while our descriptor
/// was open and has not yet exec'd, can hold it briefly. A live second
/// server holds it for good, and is reported.
fn lock_exclusively(lock: &File, dir: &Path, lock_path: &Path) -> Result<(), DiskError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DiskError::Locked {
                    dir: dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(DiskError::Io {
                    context: format!("locking {}", lock_path.display()),
                    source,
                });
            }
        }
    }
}

fn create_segment(dir: &Path, n: u64) -> Result<File, DiskError> {
    let path = segment_path(dir, n);
    let mut file = File::options()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    file.write_all(LOG_MAGIC)
        .and_then(|()| file.sync_data())
        .and_then(|()| frame::sync_dir(dir))
        .map_err(io_error(format!("initialising {}", path.display())))?;
    Ok(file)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl DiskStore {
    /// The CPU part of applying a batch: the engine decides, and the counted
    /// impressions are appended to the log (written, not yet synced).
    /// Returns the outcomes and the log offset that must be durable before
    /// they may be acknowledged.
    fn count_and_log(
        &self,
        batch: &[Impression],
        now: Timestamp,
    ) -> Result<(Vec<TrackOutcome>, u64), StoreError> {
        let mut w = self.writer.lock();
        let outcomes = self.engine.track_batch(batch, now);
        w.payload.clear();
        record::begin_counted(&mut w.payload);
        let scope = self.engine.config().scope;
        let mut counted = 0;
        for (imp, outcome) in batch.iter().zip(&outcomes) {
            if *outcome == TrackOutcome::Counted {
                let fp = Fingerprint::of(&imp.campaign_id, &imp.ad_id, &imp.user_id, scope);
                record::push_counted(
                    &mut w.payload,
                    &imp.campaign_id,
                    &imp.ad_id,
                    fp,
                    imp.timestamp,
                );
                counted += 1;
            }
        }
        // Even a batch of duplicates waits for what it was judged
        // against: the earlier counted impressions must be durable too.
        let offset = if counted > 0 {
            self.append(&mut w).map_err(|e| self.fail(e))?
        } else {
            w.offset
        };
        Ok((outcomes, offset))
    }
}

#[async_trait]
impl Store for DiskStore {
    async fn create_campaign(&self, campaign: Campaign) -> Result<Arc<Campaign>, StoreError> {
        self.check_writable()?;
        let (created, offset) = {
            let mut w = self.writer.lock();
            let created = self
                .engine
                .create_campaign(campaign)
                .map_err(|e| StoreError::CampaignExists(e.0))?;
            w.payload.clear();
            record::encode_campaign(&mut w.payload, &created);
            let offset = self.append(&mut w).map_err(|e| self.fail(e))?;
            (created, offset)
        };
        self.durable(offset).await?;
        Ok(created)
    }

    async fn campaign(&self, id: CampaignId) -> Result<Option<Arc<Campaign>>, StoreError> {
        Ok(self.engine.campaign(id))
    }

    async fn list_campaigns(
        &self,
        after: Option<CampaignId>,
        limit: usize,
    ) -> Result<Vec<Arc<Campaign>>, StoreError> {
        Ok(self.engine.campaigns_after(after, limit))
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
        self.durable(offset).await?;
        Ok(outcomes)
    }

    async fn stats(&self, id: CampaignId, now: Timestamp) -> Result<Option<Stats>, StoreError> {
        Ok(self.engine.stats(id, now))
    }

    async fn ad_stats(
        &self,
        id: CampaignId,
        now: Timestamp,
    ) -> Result<Option<AdBreakdown>, StoreError> {
        Ok(self.engine.ad_stats(id, now))
    }

    async fn timeseries(
        &self,
        id: CampaignId,
        resolution: Resolution,
        first: u64,
        count: usize,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        Ok(self.engine.timeseries(id, resolution, first, count))
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.check_writable()
    }

    async fn maintain(&self, now: Timestamp) {
        self.engine.expire(now);
    }

    fn acknowledges_after_apply(&self) -> bool {
        true
    }

    fn live_keys_estimate(&self) -> Option<u64> {
        Some(self.engine.live_dedup_keys_estimate() as u64)
    }

    fn is_live_key(&self, impression: &Impression, now: Timestamp) -> bool {
        self.engine.is_live_key(impression, now)
    }

    fn gauges(&self) -> StoreGauges {
        StoreGauges {
            live_dedup_keys: self.engine.live_dedup_keys() as u64,
            campaigns: self.engine.campaign_count() as u64,
        }
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
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        *kept = Some(secret.clone());
        Ok(secret)
    }

    async fn close(&self) -> Result<(), StoreError> {
        let running = self.compaction.lock().running.take();
        if let Some(thread) = running {
            let _ = thread.join();
        }
        self.syncer
            .stop()
            .map_err(|e| StoreError::Internal(format!("final fsync of the log failed: {e}")))
    }
}
