//! Starting from a data directory: its lock, then the newest snapshot and
//! the segments from its number on, replayed into an engine (each
//! campaign's impressions counted from the position its snapshot section
//! was captured at: see `snapshot.rs`).
//!
//! A torn last frame (a crash mid-write, never acknowledged) is truncated
//! with a warning; damage anywhere else stops the start with the file and
//! offset, and nothing is changed. Leftovers of an interrupted compaction
//! (segments and snapshots older than the newest snapshot, temporary files)
//! are deleted once the state is loaded.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use impression_core::{Engine, Timestamp};

use super::frame::{self, Ending, FrameReader};
use super::layout::{LOG_MAGIC, Listing, LogPosition, segment_path, snapshot_path};
use super::record::{self, LogRecord};
use super::snapshot::Positions;
use super::{DiskError, io_error, snapshot};

/// What loading found.
pub struct Loaded {
    /// The segment to start writing: one past the last replayed.
    pub next_segment: u64,
    /// Size of the snapshot loaded (0 without one).
    pub snapshot_bytes: u64,
    /// Bytes of the segments replayed after it.
    pub replayed_bytes: u64,
    /// Segments replayed.
    pub segments: usize,
}

/// Loads the directory's state into `engine` (fresh, with no campaigns).
pub fn load(dir: &Path, engine: &Engine, now: Timestamp) -> Result<Loaded, DiskError> {
    let listing = Listing::read(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let base = listing.snapshots.last().copied();
    let mut snapshot_bytes = 0;
    let mut positions = Positions::new();
    if let Some(n) = base {
        let path = snapshot_path(dir, n);
        positions = snapshot::load(&path, engine, now)?;
        snapshot_bytes = file_len(&path);
    }
    let base = base.unwrap_or(0);
    let segments: Vec<u64> = listing
        .segments
        .iter()
        .copied()
        .filter(|&n| n >= base)
        .collect();
    let mut replayed_bytes = 0;
    for (i, &n) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        replayed_bytes += replay_segment(dir, n, engine, now, last, &positions)?;
    }
    let leftovers = listing
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
        .chain(listing.temporary.iter().cloned());
    for path in leftovers {
        std::fs::remove_file(&path).map_err(io_error(format!("removing {}", path.display())))?;
    }
    Ok(Loaded {
        next_segment: segments.last().map_or(base, |n| n + 1),
        snapshot_bytes,
        replayed_bytes,
        segments: segments.len(),
    })
}

/// Replays segment `segment` of `dir` into `engine`: a counted impression
/// of a campaign the snapshot captured at a later position only restores
/// its key (the campaign's counters have it already). Returns the
/// segment's length after any truncation of a torn tail (allowed only in
/// the `last` segment: every closed segment was fsynced complete).
pub fn replay_segment(
    dir: &Path,
    segment: u64,
    engine: &Engine,
    now: Timestamp,
    last: bool,
    positions: &Positions,
) -> Result<u64, DiskError> {
    let path = &segment_path(dir, segment);
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
                let here = LogPosition { segment, offset };
                for i in items {
                    if positions.get(&i.campaign_id).is_some_and(|&at| here < at) {
                        engine.restore_dedup_entry(i.fingerprint, i.timestamp, now);
                        continue;
                    }
                    if !engine.replay_counted(
                        i.campaign_id,
                        &i.ad_id,
                        i.fingerprint,
                        i.user,
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

/// Opens and takes the directory's lock file, retrying for a moment: a
/// process that is exiting (a restart), or a child that was forked while our
/// descriptor was open and has not yet exec'd, can hold it briefly. A live
/// second server holds it for good, and is reported.
pub fn lock_dir(dir: &Path) -> Result<File, DiskError> {
    let lock_path = dir.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(format!("opening {}", lock_path.display())))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
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

/// A file's length, 0 if it cannot be read.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
