//! Compaction: folding closed log segments into a snapshot, off the write
//! path.
//!
//! When the closed segments since the last snapshot outgrow that snapshot
//! (and at least one segment), a background thread loads the last snapshot
//! and those segments into an engine of its own, writes a new snapshot, and
//! deletes what it folded in. The live engine is never locked for it, so
//! ingestion does not stall; the cost is the compactor's memory (about the
//! size of the live state) while it runs. Disk use stays proportional to
//! the live state: a snapshot holds only unexpired dedup keys and bounded
//! window counters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use impression_core::{Engine, EngineConfig, MemoryUse, Timestamp};
use parking_lot::Mutex;

use super::layout::{Listing, segment_path, snapshot_path};
use super::recovery::replay_segment;
use super::{DiskError, frame, io_error, snapshot};
use crate::bulk;

/// The compactor thread's nice value: below the bulk threads that apply
/// (nice 5), so compaction takes what ingest leaves first, yet at a normal
/// policy, so it keeps a share of a machine that is never idle.
const COMPACTOR_NICE: i32 = 10;

/// When to compact, and the thread doing it.
pub struct Compactor {
    dir: PathBuf,
    config: EngineConfig,
    segment_bytes: u64,
    state: Arc<Mutex<State>>,
    building: Arc<Building>,
}

/// Heap bytes of the engine a running compaction is building, by kind
/// (zero when none runs): published by the compaction thread after each
/// file it loads, read on every request without a lock.
#[derive(Default)]
struct Building {
    dedup: AtomicUsize,
    counters: AtomicUsize,
    campaigns: AtomicUsize,
    sketches: AtomicUsize,
}

impl Building {
    fn publish(&self, m: MemoryUse) {
        self.dedup.store(m.dedup, Ordering::Relaxed);
        self.counters.store(m.counters, Ordering::Relaxed);
        self.campaigns.store(m.campaigns, Ordering::Relaxed);
        self.sketches.store(m.sketches, Ordering::Relaxed);
    }

    fn read(&self) -> MemoryUse {
        MemoryUse {
            dedup: self.dedup.load(Ordering::Relaxed),
            counters: self.counters.load(Ordering::Relaxed),
            campaigns: self.campaigns.load(Ordering::Relaxed),
            sketches: self.sketches.load(Ordering::Relaxed),
        }
    }
}

struct State {
    running: Option<JoinHandle<()>>,
    /// Size of the newest snapshot.
    snapshot_bytes: u64,
    /// Bytes of closed segments not yet folded into a snapshot.
    closed_bytes: u64,
}

impl Compactor {
    /// The compactor of `dir`, whose newest snapshot has `snapshot_bytes`
    /// and `closed_bytes` of segments after it.
    pub fn new(
        dir: &Path,
        config: EngineConfig,
        segment_bytes: u64,
        snapshot_bytes: u64,
        closed_bytes: u64,
    ) -> Self {
        Compactor {
            dir: dir.to_owned(),
            config,
            segment_bytes,
            building: Arc::new(Building::default()),
            state: Arc::new(Mutex::new(State {
                running: None,
                snapshot_bytes,
                closed_bytes,
            })),
        }
    }

    /// A segment of `bytes` was closed, and `next` is being written: starts
    /// a compaction of everything before `next` if one is due and none runs.
    pub fn segment_closed(&self, bytes: u64, next: u64, now: Timestamp) {
        self.state.lock().closed_bytes += bytes;
        self.catch_up(next, now);
    }

    /// Starts a compaction of everything before segment `next` if one is due
    /// and none runs. Called at every rotation, and by the periodic upkeep,
    /// so a compaction skipped because another was still running is not
    /// left for the next rotation.
    pub fn catch_up(&self, next: u64, now: Timestamp) {
        let mut state = self.state.lock();
        let due = state.closed_bytes >= state.snapshot_bytes.max(self.segment_bytes);
        let idle = state.running.as_ref().is_none_or(JoinHandle::is_finished);
        if due && idle {
            state.running = self.start(next, now);
        }
    }

    /// Folds every segment before `upto` into a new snapshot, in a thread.
    /// `None` if no thread could be started: the next rotation tries again.
    fn start(&self, upto: u64, now: Timestamp) -> Option<JoinHandle<()>> {
        let dir = self.dir.clone();
        let config = self.config.clone();
        let state = Arc::clone(&self.state);
        let building = Arc::clone(&self.building);
        let spawned = std::thread::Builder::new()
            .name("log-compactor".into())
            .spawn(move || {
                // Background upkeep: below the threads that apply and answer
                // (a spawned thread would inherit its spawner's priority, here a
                // bulk-apply thread's), but not idle, so it keeps up on a busy
                // machine.
                bulk::lower_priority(bulk::Priority::Nice(COMPACTOR_NICE));
                let started = std::time::Instant::now();
                let engine = Engine::new(config);
                let compacted = compact(&dir, &engine, upto, now, |e| building.publish(e.memory()));
                drop(engine);
                building.publish(MemoryUse::default());
                match compacted {
                    Ok((snapshot_bytes, folded_bytes)) => {
                        let mut s = state.lock();
                        s.snapshot_bytes = snapshot_bytes;
                        s.closed_bytes = s.closed_bytes.saturating_sub(folded_bytes);
                        tracing::info!(
                            upto,
                            snapshot_bytes,
                            folded_bytes,
                            elapsed_ms =
                                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                            "log compacted"
                        );
                    }
                    Err(e) => tracing::error!(
                        error = %crate::telemetry::chain(&e),
                        upto,
                        "log compaction failed; will retry"
                    ),
                }
            });
        spawned
            .inspect_err(
                |e| tracing::error!(error = %e, upto, "could not start log compaction; will retry"),
            )
            .ok()
    }

    /// Heap bytes of the engine a running compaction is building (as of
    /// the last file it loaded).
    pub fn memory_use(&self) -> MemoryUse {
        self.building.read()
    }

    /// Waits for a running compaction to finish (blocking: joins it).
    pub fn finish(&self) {
        let running = self.state.lock().running.take();
        if let Some(thread) = running {
            let _ = thread.join();
        }
    }
}

/// Builds the state up to segment `upto` from files alone, writes it as a
/// snapshot, and deletes what it replaces. Returns the snapshot's size and
/// the bytes of segments folded in.
/// `loaded(engine)` is called after each file is loaded into it.
fn compact(
    dir: &Path,
    engine: &Engine,
    upto: u64,
    now: Timestamp,
    loaded: impl Fn(&Engine),
) -> Result<(u64, u64), DiskError> {
    let listing = Listing::read(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let base = listing.snapshot_before(upto);
    if let Some(n) = base {
        snapshot::load(&snapshot_path(dir, n), engine, now)?;
        loaded(engine);
    }
    let base = base.unwrap_or(0);
    let mut folded_bytes = 0;
    for &n in listing.segments.iter().filter(|&&n| n >= base && n < upto) {
        folded_bytes += replay_segment(&segment_path(dir, n), engine, now, false)?;
        loaded(engine);
    }
    let path = snapshot_path(dir, upto);
    let size =
        snapshot::write(&path, engine).map_err(io_error(format!("writing {}", path.display())))?;
    for n in listing.segments.iter().filter(|&&n| n < upto) {
        let _ = std::fs::remove_file(segment_path(dir, *n));
    }
    for n in listing.snapshots.iter().filter(|&&n| n < upto) {
        let _ = std::fs::remove_file(snapshot_path(dir, *n));
    }
    let _ = frame::sync_dir(dir);
    Ok((size, folded_bytes))
}
