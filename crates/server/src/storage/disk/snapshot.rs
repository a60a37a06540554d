//! Snapshots: the whole state as of the start of one log segment.
//!
//! Written by the compactor from its own engine (never the live one, so
//! ingestion never waits for a snapshot), through a temporary file that is
//! fsynced and renamed into place. A snapshot ends with a section counting
//! what came before it; one without it, or with any bad frame, is corrupt
//! (snapshots are never torn: they appear complete or not at all).

use std::io::{self, Write};
use std::path::Path;

use impression_core::{Engine, Timestamp};

use super::DiskError;
use super::frame::{self, FrameReader};
use super::layout::SNAPSHOT_MAGIC;
use super::record::{SnapshotSection, decode_section, encode_section};

/// Dedup entries per snapshot frame (1.5 MiB frames).
const DEDUP_CHUNK: usize = 65_536;

/// Writes `engine`'s state to `path`; returns the file's size.
pub fn write(path: &Path, engine: &Engine) -> io::Result<u64> {
    frame::write_atomically(path, *SNAPSHOT_MAGIC, |out| {
        let mut payload = Vec::new();
        let mut framed = Vec::new();
        let mut emit = |out: &mut dyn Write, section: &SnapshotSection| {
            payload.clear();
            framed.clear();
            encode_section(&mut payload, section);
            frame::encode_frame(&mut framed, &payload);
            out.write_all(&framed)
        };
        let campaigns = engine.snapshot_campaigns();
        for c in &campaigns {
            emit(out, &SnapshotSection::Campaign(c.clone()))?;
        }
        let mut keys = 0u64;
        let mut chunk = Vec::with_capacity(DEDUP_CHUNK);
        let mut result = Ok(());
        engine.for_each_dedup_entry(|fp, t| {
            chunk.push((fp, t));
            if chunk.len() == DEDUP_CHUNK && result.is_ok() {
                keys += chunk.len() as u64;
                result = emit(out, &SnapshotSection::Dedup(std::mem::take(&mut chunk)));
            }
        });
        result?;
        keys += chunk.len() as u64;
        if !chunk.is_empty() {
            emit(out, &SnapshotSection::Dedup(chunk))?;
        }
        emit(
            out,
            &SnapshotSection::End {
                campaigns: campaigns.len() as u64,
                keys,
            },
        )
    })
}

/// Loads the snapshot at `path` into an empty `engine`.
pub fn load(path: &Path, engine: &Engine, now: Timestamp) -> Result<(), DiskError> {
    let mut reader = FrameReader::open(path, SNAPSHOT_MAGIC)?;
    let corrupt = |offset: u64, reason: String| DiskError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let (mut campaigns, mut keys) = (0u64, 0u64);
    while let Some((offset, payload)) = reader.next_frame()? {
        match decode_section(&payload).map_err(|e| corrupt(offset, e))? {
            SnapshotSection::Campaign(c) => {
                engine
                    .restore_campaign(c)
                    .map_err(|e| corrupt(offset, crate::telemetry::chain(&e).to_string()))?;
                campaigns += 1;
            }
            SnapshotSection::Dedup(entries) => {
                keys += entries.len() as u64;
                for (fp, t) in entries {
                    engine.restore_dedup_entry(fp, t, now);
                }
            }
            SnapshotSection::End {
                campaigns: want_campaigns,
                keys: want_keys,
            } => {
                if (campaigns, keys) != (want_campaigns, want_keys) {
                    return Err(corrupt(
                        offset,
                        format!(
                            "the snapshot holds {campaigns} campaigns and {keys} keys, \
                             its end says {want_campaigns} and {want_keys}"
                        ),
                    ));
                }
                return match reader.next_frame()? {
                    None => Ok(()),
                    Some((offset, _)) => Err(corrupt(offset, "data after the end section".into())),
                };
            }
        }
    }
    let offset = match reader.ending() {
        Some(frame::Ending::Torn { offset, .. }) => *offset,
        _ => std::fs::metadata(path).map_or(0, |m| m.len()),
    };
    Err(corrupt(
        offset,
        "the snapshot is incomplete (no end section)".into(),
    ))
}
