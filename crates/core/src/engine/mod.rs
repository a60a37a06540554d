//! The engine: campaigns, the dedup index and per-campaign window counters,
//! put together behind one thread-safe value.
//!
//! # Concurrency
//!
//! There is no global lock on the hot path:
//!
//! * the campaign registry is a `RwLock`ed ordered map, only ever *read* while
//!   tracking (written once per campaign creation);
//! * the dedup index is sharded by fingerprint, each shard behind its own
//!   mutex;
//! * each campaign's window counter has its own mutex, so a stats read waits
//!   at most for one batch of *its own* campaign, never for other campaigns.
//!
//! [`Engine::track_batch`] takes each lock once per run of the batch, not once
//! per impression: impressions are grouped by dedup shard (keeping their
//! order within the shard, which decides which of two copies is counted), then
//! the counted ones are added to their campaigns' windows.
//!
//! Lock order is registry → dedup shard → campaign window, everywhere, so the
//! engine cannot deadlock.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use thiserror::Error;

use crate::campaign::{Campaign, CampaignId};
use crate::dedup::{Decision, DedupIndex, DedupScope, Fingerprint, Tally};
use crate::impression::{AdId, Impression, Rejection, TrackOutcome};
use crate::stats::{AdBreakdown, Stats};
use crate::time::Timestamp;
use crate::uniques::{HllParseError, REDIS_HLL_SEED, murmur64a};
use crate::window::{Metric, Resolution};

mod counters;

use counters::CampaignCounters;
pub use counters::{AdSnapshot, CampaignSnapshot, Growth};

/// How an [`Engine`] counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// The dedup window.
    pub ttl: Duration,
    /// What counts as the same impression.
    pub scope: DedupScope,
    /// How far behind `now` an impression's timestamp may be when it reaches
    /// the engine (queueing delay, late events). Dedup entries are kept for
    /// `ttl + max_lateness`, so a late impression still finds its key.
    pub max_lateness: Duration,
    /// Number of dedup shards (rounded up to a power of two).
    pub dedup_shards: usize,
    /// Hourly buckets kept per campaign (at least 25).
    pub history_hours: u64,
    /// Distinct ads given their own counters per campaign; impressions of
    /// further ads are counted together (see [`AdBreakdown`]).
    pub max_ads_per_campaign: usize,
    /// Days of quarter-hour counts kept per campaign, for calendar days in
    /// any time zone ([`Engine::range_counts`]).
    pub daily_history_days: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ttl: Duration::from_secs(3600),
            scope: DedupScope::Ad,
            max_lateness: Duration::from_secs(30),
            dedup_shards: 64,
            history_hours: 7 * 24,
            max_ads_per_campaign: 10_000,
            daily_history_days: 400,
        }
    }
}

/// The unique-user hash of an impression's user: what Redis's `PFADD`
/// computes for its id, so every backend counts the same users.
pub fn user_hash(impression: &Impression) -> u64 {
    murmur64a(impression.user_id.as_str().as_bytes(), REDIS_HLL_SEED)
}

/// Batches up to this size are tracked one impression at a time: for a
/// few items, grouping by shard and campaign costs more than the locks it
/// saves (measured with `cargo bench --bench engine`).
const SMALL_BATCH: usize = 16;

/// A campaign with this id exists already.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("campaign {0} already exists")]
pub struct CampaignExists(pub CampaignId);

/// Items grouped by a small key, stably: `order` lists item indices grouped
/// by key, and `ranges[k]` is where key `k`'s group lies in it.
struct Grouped {
    order: Vec<usize>,
    ranges: Vec<std::ops::Range<usize>>,
}

/// A stable counting sort of `items` by `key(item) < keys`: O(items + keys).
fn counting_sort<T>(items: &[T], keys: usize, key: impl Fn(&T) -> usize) -> Grouped {
    let mut starts = vec![0usize; keys + 1];
    for item in items {
        starts[key(item) + 1] += 1;
    }
    for k in 0..keys {
        starts[k + 1] += starts[k];
    }
    let ranges = (0..keys).map(|k| starts[k]..starts[k + 1]).collect();
    let mut order = vec![0usize; items.len()];
    for (i, item) in items.iter().enumerate() {
        let at = &mut starts[key(item)];
        order[*at] = i;
        *at += 1;
    }
    Grouped { order, ranges }
}

/// Heap bytes the engine's state holds, by kind: its own estimate, kept up
/// to date as the state changes (never by walking it), so it can be read on
/// every request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The dedup index: ring chunks and slot tables.
    pub dedup: usize,
    /// Window counters of campaigns and ads, and the per-ad maps.
    pub counters: usize,
    /// Campaign records and their place in the registry.
    pub campaigns: usize,
    /// Unique-user sketches of campaigns and ads.
    pub sketches: usize,
}

impl MemoryUse {
    /// All of it.
    pub fn total(&self) -> usize {
        self.dedup + self.counters + self.campaigns + self.sketches
    }
}

/// Why a campaign could not be restored from a snapshot.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// A campaign with this id exists already.
    #[error(transparent)]
    Exists(#[from] CampaignExists),
    /// A unique-user sketch's bytes do not parse.
    #[error("a unique-user sketch is damaged")]
    Sketch(#[source] HllParseError),
}

/// The in-memory impression counter.
pub struct Engine {
    config: EngineConfig,
    campaigns: RwLock<BTreeMap<CampaignId, CampaignSlot>>,
    dedup: DedupIndex,
    /// Heap bytes of every campaign's counters (see [`MemoryUse`]).
    counter_bytes: AtomicUsize,
    /// Heap bytes of the campaign records.
    campaign_bytes: AtomicUsize,
    /// Heap bytes of every unique-user sketch.
    sketch_bytes: AtomicUsize,
}

struct CampaignSlot {
    campaign: Arc<Campaign>,
    windows: Mutex<CampaignCounters>,
}

impl Engine {
    /// An engine with no campaigns.
    pub fn new(config: EngineConfig) -> Self {
        Engine {
            dedup: DedupIndex::new(config.ttl, config.max_lateness, config.dedup_shards),
            campaigns: RwLock::default(),
            config,
            counter_bytes: AtomicUsize::new(0),
            campaign_bytes: AtomicUsize::new(0),
            sketch_bytes: AtomicUsize::new(0),
        }
    }

    /// Heap bytes the state holds, by kind (see [`MemoryUse`]): four atomic
    /// reads.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            dedup: self.dedup.heap_bytes(),
            counters: self.counter_bytes.load(Ordering::Relaxed),
            campaigns: self.campaign_bytes.load(Ordering::Relaxed),
            sketches: self.sketch_bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether tracking `impression` at `now` would count it (and so add
    /// state: a key's entry, counter buckets), rather than find it a
    /// duplicate. Rejections (unknown campaign, not started) add nothing.
    pub fn would_count(&self, impression: &Impression, now: Timestamp) -> bool {
        let fp = Fingerprint::of(
            &impression.campaign_id,
            &impression.ad_id,
            &impression.user_id,
            self.config.scope,
        );
        self.dedup.would_count(fp, impression.timestamp, now)
    }

    /// Publishes a change of the counters' and sketches' bytes.
    fn counters_grew(&self, grew: Growth) {
        for (count, change) in [
            (&self.counter_bytes, grew.counters),
            (&self.sketch_bytes, grew.sketches),
        ] {
            if change > 0 {
                count.fetch_add(change.unsigned_abs(), Ordering::Relaxed);
            } else if change < 0 {
                count.fetch_sub(change.unsigned_abs(), Ordering::Relaxed);
            }
        }
    }

    /// What one campaign record costs: its registry entry (key and slot,
    /// counters inline), twice, because ids arrive in increasing order
    /// (UUIDv7) and a B-tree filled in order keeps its nodes half full; the
    /// shared record (with the `Arc`'s two counts) and its name's text.
    fn campaign_record_bytes(campaign: &Campaign) -> usize {
        2 * size_of::<(CampaignId, CampaignSlot)>()
            + 2 * size_of::<usize>()
            + size_of::<Campaign>()
            + campaign.name.as_str().len()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Registers a campaign. Ids are chosen by the caller (a fresh UUID), so a
    /// clash means the same campaign was submitted twice.
    pub fn create_campaign(&self, campaign: Campaign) -> Result<Arc<Campaign>, CampaignExists> {
        let mut campaigns = self.campaigns.write();
        if campaigns.contains_key(&campaign.id) {
            return Err(CampaignExists(campaign.id));
        }
        let campaign = Arc::new(campaign);
        self.campaign_bytes
            .fetch_add(Self::campaign_record_bytes(&campaign), Ordering::Relaxed);
        campaigns.insert(
            campaign.id,
            CampaignSlot {
                campaign: Arc::clone(&campaign),
                windows: Mutex::new(CampaignCounters::new(&self.config)),
            },
        );
        Ok(campaign)
    }

    /// The campaign with this id.
    pub fn campaign(&self, id: CampaignId) -> Option<Arc<Campaign>> {
        self.campaigns
            .read()
            .get(&id)
            .map(|slot| Arc::clone(&slot.campaign))
    }

    /// Up to `limit` campaigns in id order, starting after `after`.
    pub fn campaigns_after(&self, after: Option<CampaignId>, limit: usize) -> Vec<Arc<Campaign>> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.campaigns
            .read()
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, slot)| Arc::clone(&slot.campaign))
            .collect()
    }

    /// Number of campaigns.
    pub fn campaign_count(&self) -> usize {
        self.campaigns.read().len()
    }

    /// Tracks one impression; see [`Engine::track_batch`].
    pub fn track(&self, impression: &Impression, now: Timestamp) -> TrackOutcome {
        let mut outcomes = Vec::with_capacity(1);
        self.track_batch_into(std::slice::from_ref(impression), now, &mut outcomes);
        outcomes[0]
    }

    /// Tracks a batch of impressions at `now`, returning one outcome per
    /// impression, in order. Within a batch, as across batches, the first of
    /// two copies of a key (in batch order) is the one counted.
    pub fn track_batch(&self, batch: &[Impression], now: Timestamp) -> Vec<TrackOutcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        self.track_batch_into(batch, now, &mut outcomes);
        outcomes
    }

    /// [`Engine::track_batch`] into a caller-owned buffer (cleared first), so
    /// a worker can reuse it across batches.
    pub fn track_batch_into(
        &self,
        batch: &[Impression],
        now: Timestamp,
        outcomes: &mut Vec<TrackOutcome>,
    ) {
        outcomes.clear();
        let campaigns = self.campaigns.read();
        if batch.len() <= SMALL_BATCH {
            let mut tally = Tally::default();
            let mut grew = Growth::default();
            outcomes.extend(
                batch
                    .iter()
                    .map(|imp| self.track_one(&campaigns, imp, now, &mut tally, &mut grew)),
            );
            self.dedup.publish(tally);
            self.counters_grew(grew);
            return;
        }
        outcomes.resize(batch.len(), TrackOutcome::Duplicate);

        // 1. Resolve campaigns (one map lookup per run of the same campaign)
        //    and fingerprint the impressions that may count.
        let mut distinct: Vec<&CampaignSlot> = Vec::new();
        let mut seen: HashMap<CampaignId, Option<u32>> = HashMap::new();
        let mut campaign_of: Vec<u32> = vec![u32::MAX; batch.len()];
        let mut pending: Vec<(u32, u32, Fingerprint)> = Vec::with_capacity(batch.len());
        let mut last: Option<(CampaignId, Option<u32>)> = None;
        for (i, imp) in batch.iter().enumerate() {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "a batch is far below 2^32 items (the service caps it with the u32 `BATCH_MAX_ITEMS`): its indices, and those of its distinct campaigns, fit"
            )]
            let index = match last {
                Some((id, index)) if id == imp.campaign_id => index,
                _ => {
                    let index = *seen.entry(imp.campaign_id).or_insert_with(|| {
                        campaigns.get(&imp.campaign_id).map(|slot| {
                            distinct.push(slot);
                            (distinct.len() - 1) as u32
                        })
                    });
                    last = Some((imp.campaign_id, index));
                    index
                }
            };
            let Some(index) = index else {
                outcomes[i] = TrackOutcome::Rejected(Rejection::UnknownCampaign);
                continue;
            };
            if !distinct[index as usize].campaign.has_started(imp.timestamp) {
                outcomes[i] = TrackOutcome::Rejected(Rejection::NotStarted);
                continue;
            }
            campaign_of[i] = index;
            let fp = Fingerprint::of(
                &imp.campaign_id,
                &imp.ad_id,
                &imp.user_id,
                self.config.scope,
            );
            // Batches are far below 2^32 items; the index fits.
            #[allow(
                clippy::cast_possible_truncation,
                reason = "shards are at most 2^16; a batch is far below 2^32 items (the service caps it with the u32 `BATCH_MAX_ITEMS`)"
            )]
            pending.push((self.dedup.shard_of(fp) as u32, i as u32, fp));
        }

        // 2. Decide, one lock per shard. A counting sort by shard keeps batch
        //    order within each shard, which is all the rule needs.
        let by_shard = counting_sort(&pending, self.dedup.shard_count(), |p| p.0 as usize);
        let mut run: Vec<(Fingerprint, Timestamp)> = Vec::with_capacity(pending.len());
        for (shard, range) in by_shard.ranges.into_iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let order = &by_shard.order[range];
            run.clear();
            run.extend(
                order
                    .iter()
                    .map(|&k| (pending[k].2, batch[pending[k].1 as usize].timestamp)),
            );
            let mut shard = self.dedup.lock_shard(shard);
            shard.check_run(&run, now, |j, decision| {
                if let Decision::Count { .. } = decision {
                    outcomes[pending[order[j]].1 as usize] = TrackOutcome::Counted;
                }
            });
        }

        // 3. Add the counted ones to their campaigns' windows: one lock per
        //    campaign, batch order within it.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a batch is far below 2^32 items (the service caps it with the u32 `BATCH_MAX_ITEMS`): its indices, and those of its distinct campaigns, fit"
        )]
        let counted: Vec<u32> = (0..batch.len() as u32)
            .filter(|&i| outcomes[i as usize] == TrackOutcome::Counted)
            .collect();
        let by_campaign = counting_sort(&counted, distinct.len(), |&i| {
            campaign_of[i as usize] as usize
        });
        let mut grew = Growth::default();
        for (c, range) in by_campaign.ranges.into_iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let mut counters = distinct[c].windows.lock();
            for &k in &by_campaign.order[range] {
                let imp = &batch[counted[k] as usize];
                grew += counters.record(&imp.ad_id, imp.timestamp, Some(user_hash(imp)), now);
            }
        }
        self.counters_grew(grew);
    }

    /// One impression of a small batch, the single-impression requests'
    /// case: the same steps and lock order as a batch (registry, held by the
    /// caller, then dedup shard, then the campaign's windows), without the
    /// per-batch bookkeeping (maps, sorts, buffers), which costs more than
    /// the work itself for a few items. The index's changes are added to
    /// `tally` and the counters' to `grew`, which the caller publishes once
    /// for the batch.
    fn track_one(
        &self,
        campaigns: &BTreeMap<CampaignId, CampaignSlot>,
        imp: &Impression,
        now: Timestamp,
        tally: &mut Tally,
        grew: &mut Growth,
    ) -> TrackOutcome {
        let Some(slot) = campaigns.get(&imp.campaign_id) else {
            return TrackOutcome::Rejected(Rejection::UnknownCampaign);
        };
        if !slot.campaign.has_started(imp.timestamp) {
            return TrackOutcome::Rejected(Rejection::NotStarted);
        }
        let fp = Fingerprint::of(
            &imp.campaign_id,
            &imp.ad_id,
            &imp.user_id,
            self.config.scope,
        );
        let decision = self.dedup.check_tallied(fp, imp.timestamp, now, tally);
        match decision {
            Decision::Count { .. } => {
                let user = Some(user_hash(imp));
                *grew += slot
                    .windows
                    .lock()
                    .record(&imp.ad_id, imp.timestamp, user, now);
                TrackOutcome::Counted
            }
            Decision::Duplicate => TrackOutcome::Duplicate,
        }
    }

    /// The campaign's counts and users at `now`, or `None` if it does not
    /// exist.
    pub fn stats(&self, id: CampaignId, now: Timestamp) -> Option<Stats> {
        let campaigns = self.campaigns.read();
        let slot = campaigns.get(&id)?;
        let (stats, grew) = slot.windows.lock().stats(now);
        self.counters_grew(grew);
        Some(stats)
    }

    /// The campaign's counts and users per ad at `now`, or `None` if it does
    /// not exist.
    pub fn ad_stats(&self, id: CampaignId, now: Timestamp) -> Option<AdBreakdown> {
        let campaigns = self.campaigns.read();
        let slot = campaigns.get(&id)?;
        let (breakdown, grew) = slot.windows.lock().breakdown(now);
        self.counters_grew(grew);
        Some(breakdown)
    }

    /// `metric` per bucket: `count` buckets of `resolution`, the first being
    /// bucket number `first` (Unix seconds / bucket width). `None` if the
    /// campaign does not exist. See
    /// [`WindowCounter::series`](crate::WindowCounter::series) for how far
    /// back each resolution is exact; unique users are kept per minute and
    /// hour only (per second: zeros).
    pub fn timeseries(
        &self,
        id: CampaignId,
        resolution: Resolution,
        metric: Metric,
        first: u64,
        count: usize,
    ) -> Option<Vec<u64>> {
        let campaigns = self.campaigns.read();
        let slot = campaigns.get(&id)?;
        let mut counters = slot.windows.lock();
        Some(match metric {
            Metric::Impressions => counters.series(resolution, first, count),
            Metric::UniqueUsers => {
                let (series, grew) = counters.user_series(resolution, first, count);
                self.counters_grew(grew);
                series
            }
        })
    }

    /// `metric` of campaign `id` over each UTC range `[from, to)` (Unix
    /// seconds): impressions for ranges of whole quarter hours (a local day
    /// or hour in any time zone), exact over the daily history; distinct
    /// users of the hours that start in each range, over the hourly
    /// history, each at most those hours' impressions. `None` for an
    /// unknown campaign.
    pub fn range_counts(
        &self,
        id: CampaignId,
        metric: Metric,
        ranges: &[(u64, u64)],
    ) -> Option<Vec<u64>> {
        let campaigns = self.campaigns.read();
        let slot = campaigns.get(&id)?;
        let (counts, grew) = slot.windows.lock().range_counts(metric, ranges);
        self.counters_grew(grew);
        Some(counts)
    }

    /// Every campaign's complete state, in id order (each campaign is
    /// locked only while it is copied).
    pub fn snapshot_campaigns(&self) -> Vec<CampaignSnapshot> {
        self.campaigns
            .read()
            .values()
            .map(|slot| {
                let (snapshot, grew) = slot.windows.lock().snapshot(&slot.campaign);
                self.counters_grew(grew);
                snapshot
            })
            .collect()
    }

    /// Calls `f` with every live dedup key and its latest counted time.
    pub fn for_each_dedup_entry(&self, f: impl FnMut(Fingerprint, Timestamp)) {
        self.dedup.for_each(f);
    }

    /// Calls `f` with the live dedup keys and their latest counted times a
    /// shard at a time, each copied under its shard's lock and handed over
    /// after it (see [`DedupIndex::for_each_shard`]).
    pub fn for_each_dedup_shard(&self, f: impl FnMut(&[(Fingerprint, Timestamp)])) {
        self.dedup.for_each_shard(f);
    }

    /// The ids of every campaign, in id order.
    pub fn campaign_ids(&self) -> Vec<CampaignId> {
        self.campaigns.read().keys().copied().collect()
    }

    /// One campaign and its counters as plain data, as of now.
    pub fn snapshot_campaign(&self, id: CampaignId) -> Option<CampaignSnapshot> {
        let campaigns = self.campaigns.read();
        let slot = campaigns.get(&id)?;
        let (snapshot, grew) = slot.windows.lock().snapshot(&slot.campaign);
        self.counters_grew(grew);
        Some(snapshot)
    }

    /// Restores a campaign and its counters from a snapshot.
    pub fn restore_campaign(&self, snapshot: CampaignSnapshot) -> Result<(), RestoreError> {
        let mut campaigns = self.campaigns.write();
        let id = snapshot.campaign.id;
        if campaigns.contains_key(&id) {
            return Err(CampaignExists(id).into());
        }
        let campaign = Arc::new(snapshot.campaign.clone());
        let counters =
            CampaignCounters::restore(&self.config, snapshot).map_err(RestoreError::Sketch)?;
        self.campaign_bytes
            .fetch_add(Self::campaign_record_bytes(&campaign), Ordering::Relaxed);
        self.counters_grew(counters.heap_bytes());
        campaigns.insert(
            id,
            CampaignSlot {
                campaign,
                windows: Mutex::new(counters),
            },
        );
        Ok(())
    }

    /// Restores a dedup key's latest counted time (see [`DedupIndex::restore`]).
    pub fn restore_dedup_entry(&self, fp: Fingerprint, last: Timestamp, now: Timestamp) {
        self.dedup.restore(fp, last, now);
    }

    /// Replays an impression known to have been counted (from a log): its key
    /// is restored and it is added to its campaign's counters, and its user
    /// (the hash [`user_hash`] gives; `None` for logs written before users
    /// were kept) to the unique users, without deciding again. Replaying a
    /// log in the order it was written rebuilds exactly the state that wrote
    /// it. Returns false if the campaign is unknown.
    pub fn replay_counted(
        &self,
        campaign_id: CampaignId,
        ad_id: &AdId,
        fp: Fingerprint,
        user: Option<u64>,
        t: Timestamp,
        now: Timestamp,
    ) -> bool {
        let campaigns = self.campaigns.read();
        let Some(slot) = campaigns.get(&campaign_id) else {
            return false;
        };
        self.dedup.restore(fp, t, now);
        let grew = slot.windows.lock().record(ad_id, t, user, now);
        self.counters_grew(grew);
        true
    }

    /// Live dedup keys as of the last completed operation: one atomic read,
    /// cheap enough to check on every request.
    pub fn live_dedup_keys_estimate(&self) -> usize {
        self.dedup.len_estimate()
    }

    /// Whether the impression's key is live at `now`: tracking it would not
    /// add a key.
    pub fn is_live_key(&self, impression: &Impression, now: Timestamp) -> bool {
        let fp = Fingerprint::of(
            &impression.campaign_id,
            &impression.ad_id,
            &impression.user_id,
            self.config.scope,
        );
        self.dedup.contains(fp, now)
    }

    /// Number of live dedup keys.
    pub fn live_dedup_keys(&self) -> usize {
        self.dedup.len()
    }

    /// Reclaims memory that expired by `now` in idle parts of the engine.
    /// Tracking reclaims as it goes; call this periodically (every second or
    /// so) so memory also falls when traffic stops.
    pub fn expire(&self, now: Timestamp) {
        self.dedup.expire(now);
        let mut grew = Growth::default();
        for slot in self.campaigns.read().values() {
            grew += slot.windows.lock().prune(now);
        }
        self.counters_grew(grew);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::CampaignName;
    use crate::impression::{AdId, UserId};
    use crate::window::UniqueStats;

    const T0: u64 = 1_735_689_600_000;

    fn engine(scope: DedupScope) -> Engine {
        Engine::new(EngineConfig {
            scope,
            ..EngineConfig::default()
        })
    }

    fn campaign(engine: &Engine, n: u128, start_ms: u64) -> CampaignId {
        let id = CampaignId::from_uuid(uuid::Uuid::from_u128(n));
        engine
            .create_campaign(Campaign {
                id,
                name: CampaignName::parse("test").unwrap(),
                start_time: Timestamp::from_millis(start_ms),
            })
            .unwrap();
        id
    }

    fn imp(c: CampaignId, ad: &str, user: &str, ms: u64) -> Impression {
        Impression {
            campaign_id: c,
            ad_id: AdId::parse(ad).unwrap(),
            user_id: UserId::parse(user).unwrap(),
            timestamp: Timestamp::from_millis(ms),
        }
    }

    #[test]
    fn counts_dedups_and_rejects() {
        use TrackOutcome::*;
        let e = engine(DedupScope::Ad);
        let c = campaign(&e, 1, T0);
        let unknown = CampaignId::from_uuid(uuid::Uuid::from_u128(99));
        let now = Timestamp::from_millis(T0);
        let batch = [
            imp(c, "a", "u1", T0),
            imp(c, "a", "u1", T0),
            imp(c, "b", "u1", T0),
            imp(unknown, "a", "u1", T0),
            imp(c, "a", "u2", T0 - 1),
        ];
        assert_eq!(
            e.track_batch(&batch, now),
            vec![
                Counted,
                Duplicate,
                Counted,
                Rejected(Rejection::UnknownCampaign),
                Rejected(Rejection::NotStarted)
            ]
        );
        // Two impressions of one user (u1, on ads a and b).
        let users = UniqueStats {
            last_hour: 1,
            last_day: 1,
            total: 1,
        };
        assert_eq!(
            e.stats(c, now),
            Some(Stats {
                last_hour: 2,
                last_day: 2,
                total: 2,
                unique_users: users,
            })
        );
        assert_eq!(e.stats(unknown, now), None);
        assert_eq!(e.live_dedup_keys(), 2);
    }

    #[test]
    fn campaign_scope_counts_a_user_once_across_ads() {
        let e = engine(DedupScope::Campaign);
        let c = campaign(&e, 1, T0);
        let now = Timestamp::from_millis(T0);
        assert_eq!(e.track(&imp(c, "a", "u1", T0), now), TrackOutcome::Counted);
        assert_eq!(
            e.track(&imp(c, "b", "u1", T0), now),
            TrackOutcome::Duplicate
        );
        // Another campaign is another key.
        let c2 = campaign(&e, 2, T0);
        assert_eq!(e.track(&imp(c2, "a", "u1", T0), now), TrackOutcome::Counted);
    }

    #[test]
    fn campaigns_are_listed_in_id_order_from_a_cursor() {
        let e = engine(DedupScope::Ad);
        for n in [5, 1, 3, 2, 4] {
            campaign(&e, n, T0);
        }
        let ids = |v: Vec<Arc<Campaign>>| {
            v.iter()
                .map(|c| c.id.as_uuid().as_u128())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(e.campaigns_after(None, 2)), vec![1, 2]);
        let cursor = CampaignId::from_uuid(uuid::Uuid::from_u128(2));
        assert_eq!(ids(e.campaigns_after(Some(cursor), 10)), vec![3, 4, 5]);
        assert_eq!(e.campaign_count(), 5);
        let dup = Campaign {
            id: cursor,
            name: CampaignName::parse("again").unwrap(),
            start_time: Timestamp::EPOCH,
        };
        assert_eq!(e.create_campaign(dup), Err(CampaignExists(cursor)));
    }

    #[test]
    fn ads_are_counted_separately_up_to_the_bound() {
        let e = Engine::new(EngineConfig {
            max_ads_per_campaign: 2,
            ..EngineConfig::default()
        });
        let c = campaign(&e, 1, T0);
        let now = Timestamp::from_millis(T0);
        for (ad, user) in [
            ("b", "u1"),
            ("a", "u1"),
            ("a", "u2"),
            ("c", "u1"),
            ("d", "u1"),
        ] {
            assert_eq!(e.track(&imp(c, ad, user, T0), now), TrackOutcome::Counted);
        }
        let one = |n, users| Stats {
            last_hour: n,
            last_day: n,
            total: n,
            unique_users: UniqueStats {
                last_hour: users,
                last_day: users,
                total: users,
            },
        };
        let breakdown = e.ad_stats(c, now).unwrap();
        assert_eq!(
            breakdown.ads,
            vec![
                (AdId::parse("a").unwrap(), one(2, 2)),
                (AdId::parse("b").unwrap(), one(1, 1))
            ]
        );
        assert_eq!(breakdown.other, one(2, 1));
        assert!(breakdown.limit_exceeded);
        assert_eq!(e.stats(c, now), Some(one(5, 2)));
    }

    #[test]
    fn snapshot_and_replay_rebuild_the_same_state() {
        let e = Engine::new(EngineConfig {
            max_ads_per_campaign: 1,
            ..EngineConfig::default()
        });
        let c = campaign(&e, 1, T0);
        let now = Timestamp::from_millis(T0 + 60_000);
        let batch = [
            imp(c, "a", "u1", T0),
            imp(c, "b", "u1", T0 + 1000),
            imp(c, "a", "u2", T0 + 59_000),
        ];
        e.track_batch(&batch, now);

        // Restore from a snapshot...
        let copy = Engine::new(e.config().clone());
        for s in e.snapshot_campaigns() {
            copy.restore_campaign(s).unwrap();
        }
        e.for_each_dedup_entry(|fp, t| copy.restore_dedup_entry(fp, t, now));
        // ...or replay the counted impressions into the bare campaign.
        let replayed = Engine::new(e.config().clone());
        campaign(&replayed, 1, T0);
        for i in &batch {
            let fp = Fingerprint::of(&i.campaign_id, &i.ad_id, &i.user_id, DedupScope::Ad);
            let user = Some(user_hash(i));
            assert!(replayed.replay_counted(c, &i.ad_id, fp, user, i.timestamp, now));
        }
        for other in [&copy, &replayed] {
            assert_eq!(other.stats(c, now), e.stats(c, now));
            assert_eq!(other.ad_stats(c, now), e.ad_stats(c, now));
            assert_eq!(other.live_dedup_keys(), 3);
            assert_eq!(
                other.track(&imp(c, "a", "u1", T0 + 2000), now),
                TrackOutcome::Duplicate
            );
        }
        assert_eq!(copy.snapshot_campaigns(), e.snapshot_campaigns());
    }

    #[test]
    fn expire_frees_idle_keys() {
        let e = engine(DedupScope::Ad);
        let c = campaign(&e, 1, T0);
        let now = Timestamp::from_millis(T0);
        for u in 0..100 {
            e.track(&imp(c, "a", &format!("u{u}"), T0), now);
        }
        assert_eq!(e.live_dedup_keys(), 100);
        let later = now.saturating_add(e.config().ttl + e.config().max_lateness);
        e.expire(later);
        assert_eq!(e.live_dedup_keys(), 0);
        assert_eq!(e.stats(c, later).map(|s| s.total), Some(100));
    }
}
