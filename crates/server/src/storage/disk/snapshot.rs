//! Snapshots: the whole state, taken from the live store while it runs.
//!
//! A snapshot is written through a temporary file that is fsynced and
//! renamed into place, and ends with a section counting what came before
//! it; one without it, or with any bad frame, is corrupt (snapshots are
//! never torn: they appear complete or not at all).
//!
//! # Taking it from the live state
//!
//! Ingest goes on while a snapshot is taken; no impression is counted twice
//! or lost on the way back because of two facts:
//!
//! * **Counters are taken campaign by campaign at a log position.** Each
//!   campaign is copied while holding the log's writer lock, the lock under
//!   which every batch is applied *and* appended, so its counters hold
//!   exactly the impressions logged before that position. The position is
//!   written before the campaign; replay counts a campaign's impressions
//!   from there on only. The lock is held for one campaign's copy, so
//!   writers wait microseconds, not for the whole state.
//! * **Dedup keys may be taken later, and from any mix of moments.** A
//!   key's entry is its latest counted time, and restoring it is a maximum:
//!   idempotent and in any order. Every impression logged before the last
//!   campaign's position was applied before the keys are copied, so it is
//!   in the copy (or expired); later ones are replayed, which at worst
//!   restores a time the copy already had.
//!
//! So recovery is: load the snapshot, then replay the segments from the
//! snapshot's own number on, counting an impression of a campaign only at
//! or after that campaign's position (its key is restored either way).
//! Campaign sections with no position (snapshots written before this
//! scheme, from a separate engine replaying the log) are as of the start of
//! the snapshot's segment, so everything after them is replayed.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use impression_core::{CampaignId, Engine, Timestamp};

use super::DiskError;
use super::frame::{self, FrameReader};
use super::layout::{LogPosition, SNAPSHOT_MAGIC};
use super::log::Log;
use super::record::{SnapshotSection, decode_section, encode_section};

/// Dedup entries per snapshot frame (1.5 MiB frames).
const DEDUP_CHUNK: usize = 65_536;

/// Where each campaign of a snapshot was captured; campaigns without one
/// are as of the snapshot's segment.
pub type Positions = HashMap<CampaignId, LogPosition>;

/// Writes the live state of `engine`, whose writes are logged to `log`, to
/// `path` (see the module docs); returns the file's size.
pub fn write(path: &Path, engine: &Engine, log: &Log) -> io::Result<u64> {
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
        let mut campaigns = 0u64;
        for id in engine.campaign_ids() {
            let captured = {
                let w = log.lock();
                engine
                    .snapshot_campaign(id)
                    .map(|snapshot| (w.position(), snapshot))
            };
            // Campaigns are never removed; `None` would only mean one
            // that does not exist, and there is nothing to write for it.
            let Some((at, snapshot)) = captured else {
                continue;
            };
            emit(out, &SnapshotSection::Position(at))?;
            emit(out, &SnapshotSection::Campaign(snapshot))?;
            campaigns += 1;
        }
        let mut keys = 0u64;
        let mut result = Ok(());
        engine.for_each_dedup_shard(|entries| {
            for chunk in entries.chunks(DEDUP_CHUNK) {
                if result.is_ok() {
                    keys += chunk.len() as u64;
                    result = emit(out, &SnapshotSection::Dedup(chunk.to_vec()));
                }
            }
        });
        result?;
        emit(out, &SnapshotSection::End { campaigns, keys })
    })
}

/// Loads the snapshot at `path` into an empty `engine`; returns where each
/// campaign was captured.
pub fn load(path: &Path, engine: &Engine, now: Timestamp) -> Result<Positions, DiskError> {
    let mut reader = FrameReader::open(path, SNAPSHOT_MAGIC)?;
    let corrupt = |offset: u64, reason: String| DiskError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let (mut campaigns, mut keys) = (0u64, 0u64);
    let mut positions = Positions::new();
    let mut pending: Option<LogPosition> = None;
    while let Some((offset, payload)) = reader.next_frame()? {
        let section = decode_section(&payload).map_err(|e| corrupt(offset, e))?;
        if pending.is_some() && !matches!(section, SnapshotSection::Campaign(_)) {
            return Err(corrupt(
                offset,
                "a log position not followed by its campaign".into(),
            ));
        }
        match section {
            SnapshotSection::Position(at) => pending = Some(at),
            SnapshotSection::Campaign(c) => {
                let id = c.campaign.id;
                engine
                    .restore_campaign(c)
                    .map_err(|e| corrupt(offset, crate::telemetry::chain(&e).to_string()))?;
                if let Some(at) = pending.take() {
                    positions.insert(id, at);
                }
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
                    None => Ok(positions),
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
