//! Compaction: replacing closed log segments with a snapshot of the live
//! state, off the write path.
//!
//! When the closed segments since the last snapshot outgrow that snapshot
//! (and at least one segment), a background thread writes a snapshot of the
//! live store, named after the segment being written when it started, and
//! deletes every older segment and snapshot. It copies one campaign at a
//! time under the log's writer lock and one dedup shard at a time under
//! that shard's lock (see `snapshot.rs` for why that is exact), so writers
//! wait for one small copy at a time, never for the whole state, and the
//! compactor holds no second copy of it. Its cost follows the live state,
//! not the volume logged: it encodes what is live, and replays nothing.
//! Disk use stays proportional to the live state: a snapshot holds only
//! unexpired dedup keys and bounded window counters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::layout::{Listing, segment_path, snapshot_path};
use super::{Core, DiskError, frame, io_error, snapshot};
use crate::bulk;

/// The compactor thread's nice value: below the bulk threads that apply
/// (nice 5), so compaction takes what ingest leaves first, yet at a normal
/// policy, so it keeps a share of a machine that is never idle.
const COMPACTOR_NICE: i32 = 10;

/// When to compact, and the thread doing it.
pub struct Compactor {
    dir: PathBuf,
    segment_bytes: u64,
    state: Arc<Mutex<State>>,
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
    pub fn new(dir: &Path, segment_bytes: u64, snapshot_bytes: u64, closed_bytes: u64) -> Self {
        Compactor {
            dir: dir.to_owned(),
            segment_bytes,
            state: Arc::new(Mutex::new(State {
                running: None,
                snapshot_bytes,
                closed_bytes,
            })),
        }
    }

    /// A segment of `bytes` was closed: starts a compaction if one is due
    /// and none runs.
    pub fn segment_closed(&self, core: &Arc<Core>, bytes: u64) {
        self.state.lock().closed_bytes += bytes;
        self.catch_up(core);
    }

    /// Starts a compaction if one is due and none runs. Called at every
    /// rotation, and by the periodic upkeep, so a compaction skipped
    /// because another was still running is not left for the next rotation.
    pub fn catch_up(&self, core: &Arc<Core>) {
        let mut state = self.state.lock();
        let due = state.closed_bytes >= state.snapshot_bytes.max(self.segment_bytes);
        let idle = state.running.as_ref().is_none_or(JoinHandle::is_finished);
        if due && idle {
            state.running = self.start(core);
        }
    }

    /// Snapshots the live state in a thread. `None` if no thread could be
    /// started: the next rotation tries again.
    fn start(&self, core: &Arc<Core>) -> Option<JoinHandle<()>> {
        let dir = self.dir.clone();
        let state = Arc::clone(&self.state);
        let core = Arc::clone(core);
        let spawned = std::thread::Builder::new()
            .name("log-compactor".into())
            .spawn(move || {
                // Background upkeep: below the threads that apply and answer
                // (a spawned thread would inherit its spawner's priority, here a
                // bulk-apply thread's), but not idle, so it keeps up on a busy
                // machine.
                bulk::lower_priority(bulk::Priority::Nice(COMPACTOR_NICE));
                let started = std::time::Instant::now();
                // Everything before the segment being written now is in the
                // live state already: the snapshot replaces it.
                let upto = core.log.current_segment();
                match compact(&dir, &core, upto) {
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
                |e| tracing::error!(error = %e, "could not start log compaction; will retry"),
            )
            .ok()
    }

    /// Waits for a running compaction to finish (blocking: joins it).
    pub fn finish(&self) {
        let running = self.state.lock().running.take();
        if let Some(thread) = running {
            let _ = thread.join();
        }
    }
}

/// Writes the live state as the snapshot of segment `upto`, and deletes the
/// segments and snapshots it replaces. Returns the snapshot's size and the
/// bytes of segments deleted.
fn compact(dir: &Path, core: &Core, upto: u64) -> Result<(u64, u64), DiskError> {
    let path = snapshot_path(dir, upto);
    let size = snapshot::write(&path, core.memory.engine(), &core.log)
        .map_err(io_error(format!("writing {}", path.display())))?;
    let listing = Listing::read(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let mut folded_bytes = 0;
    for n in listing.segments.iter().filter(|&&n| n < upto) {
        let segment = segment_path(dir, *n);
        folded_bytes += super::recovery::file_len(&segment);
        let _ = std::fs::remove_file(segment);
    }
    for n in listing.snapshots.iter().filter(|&&n| n < upto) {
        let _ = std::fs::remove_file(snapshot_path(dir, *n));
    }
    let _ = frame::sync_dir(dir);
    Ok((size, folded_bytes))
}
