//! Applying a chunk of impressions: one atomic script on a single node, or
//! the journaled dedup/count steps on a cluster; and the journal replay that
//! finishes cluster chunks a node could not.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use impression_core::engine::user_hash;
use impression_core::{
    Campaign, CampaignId, Fingerprint, Impression, Rejection, Timestamp, TrackOutcome,
};
use serde::Deserialize;

use super::conn::bounded;
use super::keys::{DEDUP_BUCKETS, KeySpace, slot};
use super::{
    DEDUP_SLACK, MARKER_TTL, MAX_SCRIPT_ITEMS, REPLAY_MAX_AGE, RedisStore, WINDOW_SLACK, group_by,
    wall_ms,
};
use crate::storage::StoreError;
use crate::telemetry::chain;

/// An impression that passed the campaign checks and awaits its decision.
#[derive(Clone, Copy)]
struct Pending {
    /// Position in the batch.
    index: usize,
    /// Position of its campaign in the chunk's campaign list.
    campaign: usize,
    fp: Fingerprint,
}

/// The counted impressions of one bucket of one chunk, as journaled by
/// `dedup.lua`: enough for any node to run step 2 again.
#[derive(Debug, Deserialize)]
struct JournalEntry {
    /// Wall-clock ms when the chunk was created.
    c: String,
    /// The node time the chunk was applied at.
    n: String,
    /// Campaign ids (hyphenated).
    cs: Vec<String>,
    /// Counted impressions: campaign number (1-based), ad id, t in ms,
    /// user id, user hash (signed decimal).
    it: Vec<(usize, String, String, String, String)>,
}

impl RedisStore {
    /// [`Store::apply`](crate::storage::Store::apply) for this backend.
    pub(super) async fn apply_batch(
        &self,
        batch: &[Impression],
        now: Timestamp,
    ) -> Result<Vec<TrackOutcome>, StoreError> {
        let mut outcomes = vec![TrackOutcome::Duplicate; batch.len()];
        let mut campaigns: Vec<Arc<Campaign>> = Vec::new();
        let mut position: HashMap<CampaignId, Option<usize>> = HashMap::new();
        let mut pending = Vec::with_capacity(batch.len());
        for (index, imp) in batch.iter().enumerate() {
            let slot = match position.get(&imp.campaign_id) {
                Some(slot) => *slot,
                None => {
                    let slot = self.lookup(imp.campaign_id).await?.map(|c| {
                        campaigns.push(c);
                        campaigns.len() - 1
                    });
                    position.insert(imp.campaign_id, slot);
                    slot
                }
            };
            match slot {
                None => outcomes[index] = TrackOutcome::Rejected(Rejection::UnknownCampaign),
                Some(c) if !campaigns[c].has_started(imp.timestamp) => {
                    outcomes[index] = TrackOutcome::Rejected(Rejection::NotStarted);
                }
                Some(c) => pending.push(Pending {
                    index,
                    campaign: c,
                    fp: Fingerprint::of(
                        &imp.campaign_id,
                        &imp.ad_id,
                        &imp.user_id,
                        self.rules.scope,
                    ),
                }),
            }
        }
        let ids: Vec<CampaignId> = campaigns.iter().map(|c| c.id).collect();
        // In order: a key's first copy in the batch is decided first.
        for piece in pending.chunks(MAX_SCRIPT_ITEMS) {
            let counted = if self.is_cluster() {
                self.apply_on_cluster(batch, &ids, piece, now).await?
            } else {
                self.apply_on_node(batch, &ids, piece, now).await?
            };
            for (p, counted) in piece.iter().zip(counted) {
                if counted {
                    outcomes[p.index] = TrackOutcome::Counted;
                }
            }
        }
        Ok(outcomes)
    }

    /// A single node: dedup and counting in one `track.lua` call.
    async fn apply_on_node(
        &self,
        batch: &[Impression],
        ids: &[CampaignId],
        piece: &[Pending],
        now: Timestamp,
    ) -> Result<Vec<bool>, StoreError> {
        let mut call = self.scripts.track.prepare_invoke();
        for p in piece {
            call.key(self.keys.dedup(p.fp));
        }
        call.arg(now.as_millis())
            .arg(self.rules.ttl_ms)
            .arg(self.rules.retention_ms)
            .arg(u64::try_from(DEDUP_SLACK.as_millis()).unwrap_or(u64::MAX))
            .arg(WINDOW_SLACK.as_secs())
            .arg(self.rules.history_hours)
            .arg(self.rules.max_ads)
            .arg(self.rules.keep_hours)
            .arg(ids.len());
        for &id in ids {
            call.arg(self.keys.campaign_base(id));
        }
        for p in piece {
            let imp = &batch[p.index];
            call.arg(p.campaign + 1)
                .arg(imp.ad_id.as_str())
                .arg(imp.timestamp.as_millis())
                .arg(imp.user_id.as_str())
                .arg(signed_hash(imp));
        }
        let decided: Vec<u8> = bounded(call.invoke_async(&mut self.conn())).await?;
        let decided = decisions(&decided, piece.len())?;
        self.wait_for_replicas(&[]).await?;
        Ok(decided)
    }

    /// A cluster: step 1 per dedup bucket, step 2 per campaign, step 3
    /// clears the journal (see the module docs).
    async fn apply_on_cluster(
        &self,
        batch: &[Impression],
        ids: &[CampaignId],
        piece: &[Pending],
        now: Timestamp,
    ) -> Result<Vec<bool>, StoreError> {
        let chunk = format!("{}.{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed));
        let created = wall_ms();
        let id_texts: Vec<String> = ids.iter().map(ToString::to_string).collect();

        // Step 1: decide, per bucket, all buckets at once.
        let by_bucket = group_by(piece.iter().enumerate(), |(_, p)| KeySpace::bucket_of(p.fp));
        let calls = by_bucket.iter().map(|(bucket, items)| {
            let mut call = self.scripts.dedup.prepare_invoke();
            call.key(self.keys.journal(*bucket));
            for (_, p) in items {
                call.key(self.keys.dedup(p.fp));
            }
            call.arg(now.as_millis())
                .arg(self.rules.ttl_ms)
                .arg(self.rules.retention_ms)
                .arg(u64::try_from(DEDUP_SLACK.as_millis()).unwrap_or(u64::MAX))
                .arg(&chunk)
                .arg(created)
                .arg(ids.len());
            for id in &id_texts {
                call.arg(id);
            }
            for (_, p) in items {
                let imp = &batch[p.index];
                call.arg(p.campaign + 1)
                    .arg(imp.ad_id.as_str())
                    .arg(imp.timestamp.as_millis())
                    .arg(imp.user_id.as_str())
                    .arg(signed_hash(imp));
            }
            let mut conn = self.conn();
            async move { bounded(call.invoke_async::<Vec<u8>>(&mut conn)).await }
        });
        let mut counted = vec![false; piece.len()];
        let mut journaled = Vec::new();
        let mut failure = None;
        for ((bucket, items), result) in by_bucket.iter().zip(join_all(calls).await) {
            match result.and_then(|d| decisions(&d, items.len())) {
                Ok(decided) => {
                    if decided.contains(&true) {
                        journaled.push(*bucket);
                    }
                    for ((at, _), c) in items.iter().zip(decided) {
                        counted[*at] = c;
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            // What the other buckets decided is journaled: replay counts it.
            return Err(e);
        }
        #[cfg(feature = "test-hooks")]
        self.injected(super::Fault::AfterDedup)?;

        // Step 2: count, per campaign, in batch order.
        let counted_items = piece
            .iter()
            .zip(&counted)
            .filter(|(_, c)| **c)
            .map(|(p, _)| *p);
        let by_campaign = group_by(counted_items, |p| p.campaign);
        let slice = created / 60_000;
        let calls = by_campaign.iter().map(|(campaign, items)| {
            let id = ids[*campaign];
            let mut call = self.scripts.count.prepare_invoke();
            call.key(self.keys.campaign_totals(id))
                .key(self.keys.campaign_markers(id, slice))
                .key(self.keys.campaign_absent(id));
            self.count_args(&mut call, now.as_millis(), &chunk, "*", items.len());
            for p in items {
                let imp = &batch[p.index];
                call.arg(KeySpace::bucket_of(p.fp))
                    .arg(imp.ad_id.as_str())
                    .arg(imp.timestamp.as_millis())
                    .arg(imp.user_id.as_str())
                    .arg(signed_hash(imp));
            }
            let mut conn = self.conn();
            async move { bounded(call.invoke_async::<u64>(&mut conn)).await }
        });
        for result in join_all(calls).await {
            // The journal still holds every counted impression: replay
            // finishes the campaigns that failed, the markers skip the rest.
            result?;
        }
        #[cfg(feature = "test-hooks")]
        self.injected(super::Fault::AfterCount)?;

        // Replicas hold steps 1 and 2 before the chunk is acknowledged (if
        // REDIS_MIN_REPLICAS_ACK asks): every slot written, each waited on
        // at its master. A refusal leaves the journal for the replay.
        let mut slots: Vec<u16> = by_bucket
            .iter()
            .map(|(bucket, _)| slot(self.keys.journal(*bucket).as_bytes()))
            .chain(
                by_campaign
                    .iter()
                    .map(|(c, _)| slot(self.keys.campaign_totals(ids[*c]).as_bytes())),
            )
            .collect();
        slots.sort_unstable();
        slots.dedup();
        self.wait_for_replicas(&slots).await?;

        // Step 3: clear the journal. A failure here is harmless: a replay
        // finds the markers set and only deletes the entries.
        let calls = journaled.iter().map(|bucket| {
            let mut conn = self.conn();
            let cmd = redis::cmd("HDEL")
                .arg(self.keys.journal(*bucket))
                .arg(&chunk)
                .to_owned();
            async move { bounded(cmd.query_async::<u64>(&mut conn)).await }
        });
        for result in join_all(calls).await {
            if let Err(e) = result {
                tracing::debug!(error = %chain(&e), "clearing a journal entry failed; replay will");
            }
        }
        Ok(counted)
    }

    /// The arguments `count.lua` takes before its items.
    fn count_args(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        now_ms: u64,
        chunk: &str,
        mode: &str,
        items: usize,
    ) {
        call.arg(now_ms)
            .arg(WINDOW_SLACK.as_secs())
            .arg(self.rules.history_hours)
            .arg(self.rules.max_ads)
            .arg(self.rules.keep_hours)
            .arg(chunk)
            .arg(u64::try_from(MARKER_TTL.as_millis()).unwrap_or(u64::MAX))
            .arg(mode)
            .arg(items);
    }

    /// Finishes cluster chunks whose step 2 or 3 did not complete: every
    /// journal entry at least `min_age` old is counted through the
    /// idempotent step 2 and deleted. Returns the entries finished. Runs
    /// from housekeeping on every node; harmless to run concurrently.
    pub async fn replay_journal(&self, min_age: std::time::Duration) -> Result<usize, StoreError> {
        if !self.is_cluster() {
            return Ok(0);
        }
        let scans = (0..DEDUP_BUCKETS).map(|bucket| {
            let mut conn = self.conn();
            let cmd = redis::cmd("HSCAN")
                .arg(self.keys.journal(bucket))
                .arg(0)
                .arg("COUNT")
                .arg(256)
                .to_owned();
            async move {
                (
                    bucket,
                    bounded(cmd.query_async::<(u64, Vec<Vec<u8>>)>(&mut conn)).await,
                )
            }
        });
        let mut finished = 0;
        let mut failure = None;
        for (bucket, scanned) in join_all(scans).await {
            let pairs = match scanned {
                Ok((_, pairs)) => pairs,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            for pair in pairs.chunks_exact(2) {
                match self.replay_entry(bucket, &pair[0], &pair[1], min_age).await {
                    Ok(true) => finished += 1,
                    Ok(false) => {}
                    Err(e) => failure = Some(e),
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(finished),
        }
    }

    /// Replays one entry if it is old enough; `Ok(true)` if it was finished.
    async fn replay_entry(
        &self,
        bucket: usize,
        chunk: &[u8],
        value: &[u8],
        min_age: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let journal = self.keys.journal(bucket);
        let delete = || async {
            bounded(
                redis::cmd("HDEL")
                    .arg(&journal)
                    .arg(chunk)
                    .query_async::<u64>(&mut self.conn()),
            )
            .await
        };
        let chunk_text = String::from_utf8_lossy(chunk);
        let entry: JournalEntry = match serde_json::from_slice(value) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(%bucket, chunk = %chunk_text, error = %chain(&e), "dropping an unreadable journal entry");
                delete().await?;
                return Ok(true);
            }
        };
        let created: u64 = entry.c.parse().unwrap_or(0);
        let age = wall_ms().saturating_sub(created);
        if u128::from(age) < min_age.as_millis() {
            return Ok(false);
        }
        if u128::from(age) > REPLAY_MAX_AGE.as_millis() {
            tracing::error!(
                %bucket, chunk = %chunk_text, impressions = entry.it.len(), age_ms = age,
                "dropping a journal entry too old to replay safely: its impressions stay uncounted"
            );
            delete().await?;
            return Ok(true);
        }
        let now_ms: u64 = entry.n.parse().unwrap_or(0);
        let ids: Vec<CampaignId> = entry
            .cs
            .iter()
            .map(|id| id.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::internal_by(format!("journal entry {chunk_text}"), e))?;
        let slice = created / 60_000;
        for (campaign, items) in group_by(entry.it.iter(), |(c, ..)| *c) {
            let Some(&id) = campaign.checked_sub(1).and_then(|c| ids.get(c)) else {
                return Err(StoreError::internal(format!(
                    "journal entry {chunk_text}: no campaign {campaign}"
                )));
            };
            let mut call = self.scripts.count.prepare_invoke();
            call.key(self.keys.campaign_totals(id))
                .key(self.keys.campaign_markers(id, slice))
                .key(self.keys.campaign_absent(id));
            self.count_args(&mut call, now_ms, &chunk_text, "r", items.len());
            for (_, ad, t, user, hash) in items {
                call.arg(bucket).arg(ad).arg(t).arg(user).arg(hash);
            }
            bounded(call.invoke_async::<u64>(&mut self.conn())).await?;
        }
        delete().await?;
        tracing::info!(%bucket, chunk = %chunk_text, impressions = entry.it.len(), "replayed a journal entry");
        Ok(true)
    }
}

/// The user's hash as the scripts keep it in exact sets: signed decimal,
/// so Redis stores a set of them as a compact intset.
fn signed_hash(impression: &Impression) -> i64 {
    i64::from_ne_bytes(user_hash(impression).to_ne_bytes())
}

/// One boolean per impression from a script's "1"/"0" answer.
fn decisions(answer: &[u8], expected: usize) -> Result<Vec<bool>, StoreError> {
    if answer.len() != expected || answer.iter().any(|b| !matches!(b, b'0' | b'1')) {
        return Err(StoreError::internal(format!(
            "Redis answered {} decisions for {expected} impressions",
            answer.len()
        )));
    }
    Ok(answer.iter().map(|&b| b == b'1').collect())
}
