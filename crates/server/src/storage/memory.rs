//! The embedded in-memory backend: the core [`Engine`] as a [`Store`].
//!
//! Everything is lost when the process exits. Operations are CPU work of a
//! few microseconds per batch, so they run inline on the calling task, but
//! for large batches, which go to the [bulk] threads.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use impression_core::{
    AdBreakdown, Campaign, CampaignId, Engine, EngineConfig, Impression, MemoryUse, Metric,
    Resolution, Stats, Timestamp, TrackOutcome,
};

use super::{HashSecret, Store, StoreError, StoreGauges};
use crate::bulk::{self, Bulk};

/// The embedded engine, shared by every handler and worker.
pub struct MemoryStore {
    engine: Engine,
    /// Kept like everything else here: until the process exits.
    id_secret: OnceLock<HashSecret>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: EngineConfig) -> Self {
        MemoryStore {
            engine: Engine::new(config),
            id_secret: OnceLock::new(),
        }
    }

    /// The engine inside, for wrapping stores and for tests and benchmarks
    /// that look beneath the API.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// [`Store::create_campaign`], without the async wrapping: for a store
    /// that wraps this one and must do more under its own lock.
    pub fn create_now(&self, campaign: Campaign) -> Result<Arc<Campaign>, StoreError> {
        self.engine
            .create_campaign(campaign)
            .map_err(|e| StoreError::CampaignExists(e.0))
    }

    /// [`Store::apply`], in place (no hand-off of large batches): for a
    /// store that wraps this one and hands off its own work.
    pub fn apply_now(&self, batch: &[Impression], now: Timestamp) -> Vec<TrackOutcome> {
        self.engine.track_batch(batch, now)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_campaign(&self, campaign: Campaign) -> Result<Arc<Campaign>, StoreError> {
        self.create_now(campaign)
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
        let large = bulk::is_large_batch(batch.len());
        Ok(bulk::run(Bulk::Apply, large, || self.apply_now(batch, now)))
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
        metric: Metric,
        first: u64,
        count: usize,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        Ok(self.engine.timeseries(id, resolution, metric, first, count))
    }

    async fn range_counts(
        &self,
        id: CampaignId,
        metric: Metric,
        ranges: &[(u64, u64)],
        _now: Timestamp,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        // The engine's counts are as of its last upkeep (what `maintain`
        // pruned), which is what `now` would select.
        Ok(self.engine.range_counts(id, metric, ranges))
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn maintain(&self, now: Timestamp) {
        self.engine.expire(now);
    }

    fn acknowledges_after_apply(&self) -> bool {
        false
    }

    fn live_keys_estimate(&self) -> Option<u64> {
        Some(self.engine.live_dedup_keys_estimate() as u64)
    }

    fn is_live_key(&self, impression: &Impression, now: Timestamp) -> bool {
        self.engine.is_live_key(impression, now)
    }

    fn memory_use(&self) -> MemoryUse {
        self.engine.memory()
    }

    fn would_count(&self, impression: &Impression, now: Timestamp) -> bool {
        self.engine.would_count(impression, now)
    }

    async fn pixel_id_secret(&self) -> Result<HashSecret, StoreError> {
        HashSecret::kept_in(&self.id_secret)
    }

    fn gauges(&self) -> StoreGauges {
        StoreGauges {
            live_dedup_keys: self.engine.live_dedup_keys() as u64,
            campaigns: self.engine.campaign_count() as u64,
            backend: None,
        }
    }
}
