//! The data directory: which files exist and what their names mean.
//!
//! ```text
//! DATA_DIR/LOCK                   held (flock) by the running process
//! DATA_DIR/wal-00000007.log       log segment 7
//! DATA_DIR/snapshot-00000007.snap state as of segment 7 (segments 0..=6 folded in, and
//!                                 of segment 7 and later what each campaign's position says)
//! DATA_DIR/*.tmp                  an unfinished snapshot or secret (deleted on start)
//! DATA_DIR/pixel-id.secret        the pixel id secret, once made (secret.rs)
//! ```
//!
//! The state is the newest snapshot plus every segment numbered at or after
//! it, replayed in order. Older files are leftovers of a compaction that was
//! interrupted after its snapshot was complete, and are deleted.

use std::io;
use std::path::{Path, PathBuf};

/// Magic of log segments.
pub const LOG_MAGIC: &[u8; 8] = b"ICWAL\0\0\x01";
/// Magic of snapshots.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"ICSNAP\0\x01";

/// A place in the log: a segment and a byte offset in it. Positions order
/// as the log does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// The segment's number.
    pub segment: u64,
    /// Bytes from the start of the segment's file (its magic included).
    pub offset: u64,
}

/// Path of log segment `n`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("wal-{n:08}.log"))
}

/// Path of the snapshot that precedes segment `n`.
pub fn snapshot_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("snapshot-{n:08}.snap"))
}

/// What a data directory holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Segment numbers, ascending.
    pub segments: Vec<u64>,
    /// Snapshot numbers, ascending.
    pub snapshots: Vec<u64>,
    /// Unfinished files to delete.
    pub temporary: Vec<PathBuf>,
}

impl Listing {
    /// Reads `dir`.
    pub fn read(dir: &Path) -> io::Result<Self> {
        let mut listing = Listing::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            #[allow(
                clippy::case_sensitive_file_extension_comparisons,
                reason = "only the service's own temporary files, named with a lowercase `.tmp`"
            )]
            if name.ends_with(".tmp") {
                listing.temporary.push(entry.path());
            } else if let Some(n) = number(name, "wal-", ".log") {
                listing.segments.push(n);
            } else if let Some(n) = number(name, "snapshot-", ".snap") {
                listing.snapshots.push(n);
            }
        }
        listing.segments.sort_unstable();
        listing.snapshots.sort_unstable();
        Ok(listing)
    }
}

fn number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "wal-00000002.log",
            "wal-00000010.log",
            "snapshot-00000002.snap",
            "x.tmp",
            "LOCK",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let l = Listing::read(dir.path()).unwrap();
        assert_eq!(l.segments, vec![2, 10]);
        assert_eq!(l.snapshots, vec![2]);
        assert_eq!(l.temporary.len(), 1);
        assert_eq!(
            segment_path(dir.path(), 10),
            dir.path().join("wal-00000010.log")
        );
    }
}
