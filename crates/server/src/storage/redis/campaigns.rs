//! Campaigns in Redis, and the node's cache of them.
//!
//! All campaigns live in one sorted set, every score 0, each member
//! `<hyphenated id>|<start ms>|<name>`. Members with equal scores are ordered
//! by their bytes, and lower-case hex orders like the UUID's bytes, so the
//! set is in id order, which for UUIDv7 ids is creation order:
//!
//! * creating is one script on that key (refuse the id if present, else
//!   add), atomic in a cluster too, since it is one key;
//! * reading one is `ZRANGEBYLEX [<id>| (<id>}` (`}` sorts right after `|`);
//! * a page after a cursor is `ZRANGEBYLEX (<cursor>} + LIMIT 0 n`: one
//!   command, `O(log N + n)`.
//!
//! Campaigns are immutable and never deleted, so a node caches every one
//! it has seen for good. A miss is cached for [`NEGATIVE_TTL`] only: ids are
//! chosen by the server at creation, so nobody can ask for an id before it
//! exists except by guessing, and a second later another node's creation is
//! visible anyway. The negative cache keeps a flood of unknown ids from
//! costing one Redis read each.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use impression_core::{Campaign, CampaignId, CampaignName, Timestamp};
use parking_lot::RwLock;

/// How long "no such campaign" is believed.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Most campaigns cached per node; past it the cache starts over (a
/// campaign costs ~150 bytes, so this is ~150 MB at most).
const MAX_CACHED: usize = 1_000_000;
/// Most unknown ids remembered.
const MAX_NEGATIVE: usize = 100_000;

/// The index member of a campaign.
pub fn encode(campaign: &Campaign) -> String {
    format!(
        "{}|{}|{}",
        campaign.id,
        campaign.start_time.as_millis(),
        campaign.name
    )
}

/// A campaign from its index member.
pub fn decode(member: &[u8]) -> Result<Campaign, String> {
    let text = std::str::from_utf8(member).map_err(|_| "a campaign that is not UTF-8")?;
    let mut parts = text.splitn(3, '|');
    let (Some(id), Some(start), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("a malformed campaign entry {:?}", excerpt(text)));
    };
    let id: CampaignId = id.parse().map_err(|e| format!("campaign entry: {e}"))?;
    let start: u64 = start
        .parse()
        .map_err(|_| format!("campaign {id}: bad start time {start:?}"))?;
    let name = CampaignName::parse(name).map_err(|e| format!("campaign {id}: {e}"))?;
    Ok(Campaign {
        id,
        name,
        start_time: Timestamp::from_millis(start),
    })
}

fn excerpt(text: &str) -> String {
    text.chars().take(60).collect()
}

/// The lexical range of one id's member.
pub fn id_range(id: CampaignId) -> (String, String) {
    (format!("[{id}|"), format!("({id}}}"))
}

/// The lexical lower bound of the page after `after`.
pub fn page_start(after: Option<CampaignId>) -> String {
    after.map_or_else(|| "-".to_owned(), |id| format!("({id}}}"))
}

/// Campaigns this node has seen, and ids it recently found missing.
#[derive(Default)]
pub struct CampaignCache {
    known: RwLock<HashMap<CampaignId, Arc<Campaign>>>,
    missing: RwLock<HashMap<CampaignId, Instant>>,
    /// Heap bytes of `known`, kept as entries come and go so the memory
    /// budget reads it without the lock.
    known_bytes: AtomicUsize,
}

/// What a cached campaign costs: its map entry (with a control byte and the
/// map's 8/7 room), the shared record with its two counts, its name.
fn entry_bytes(campaign: &Campaign) -> usize {
    (size_of::<(CampaignId, Arc<Campaign>)>() + 1) * 8 / 7
        + 2 * size_of::<usize>()
        + size_of::<Campaign>()
        + campaign.name.as_str().len()
}

/// What the cache knows about an id.
pub enum Cached {
    /// The campaign.
    Found(Arc<Campaign>),
    /// Looked up less than [`NEGATIVE_TTL`] ago and not found.
    Missing,
    /// Ask Redis.
    Unknown,
}

impl CampaignCache {
    /// What is known about `id` now.
    pub fn get(&self, id: CampaignId) -> Cached {
        if let Some(c) = self.known.read().get(&id) {
            return Cached::Found(Arc::clone(c));
        }
        match self.missing.read().get(&id) {
            Some(at) if at.elapsed() < NEGATIVE_TTL => Cached::Missing,
            _ => Cached::Unknown,
        }
    }

    /// Remembers a campaign for good.
    pub fn found(&self, campaign: Arc<Campaign>) {
        self.missing.write().remove(&campaign.id);
        let mut known = self.known.write();
        if known.len() >= MAX_CACHED {
            known.clear();
            self.known_bytes.store(0, Ordering::Relaxed);
        }
        let bytes = entry_bytes(&campaign);
        if known.insert(campaign.id, campaign).is_none() {
            self.known_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Heap bytes of the campaigns cached (the misses' map is small and
    /// bounded by `MAX_NEGATIVE`).
    pub fn heap_bytes(&self) -> usize {
        self.known_bytes.load(Ordering::Relaxed)
    }

    /// Remembers, briefly, that `id` does not exist.
    pub fn missing(&self, id: CampaignId) {
        let mut missing = self.missing.write();
        if missing.len() >= MAX_NEGATIVE {
            missing.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            if missing.len() >= MAX_NEGATIVE {
                missing.clear();
            }
        }
        missing.insert(id, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_sort_by_id() {
        let a = Campaign {
            id: "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a".parse().unwrap(),
            name: CampaignName::parse("Summer | sale").unwrap(),
            start_time: Timestamp::from_millis(1_735_689_600_123),
        };
        assert_eq!(decode(encode(&a).as_bytes()).unwrap(), a);
        let b = Campaign {
            id: "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6b".parse().unwrap(),
            ..a.clone()
        };
        assert!(encode(&a) < encode(&b));
        assert!(a.id < b.id);
        // The range of a's id holds a's member and not b's.
        let (lo, hi) = id_range(a.id);
        assert!(encode(&a).as_str() > &lo[1..] && encode(&a).as_str() < &hi[1..]);
        assert!(encode(&b).as_str() > &hi[1..]);
        assert!(decode(b"garbage").is_err());
        assert!(decode(b"0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a|x|n").is_err());
    }

    #[test]
    fn the_cache_accounts_what_it_holds() {
        let cache = CampaignCache::default();
        assert_eq!(cache.heap_bytes(), 0);
        let campaign = |n: u128| {
            Arc::new(Campaign {
                id: CampaignId::from_uuid(uuid::Uuid::from_u128(n)),
                name: CampaignName::parse("cached").unwrap(),
                start_time: Timestamp::EPOCH,
            })
        };
        cache.found(campaign(1));
        let one = cache.heap_bytes();
        assert!(one > size_of::<Campaign>(), "{one}");
        cache.found(campaign(1));
        assert_eq!(
            cache.heap_bytes(),
            one,
            "the same campaign again adds nothing"
        );
        cache.found(campaign(2));
        assert_eq!(cache.heap_bytes(), 2 * one);
    }

    #[test]
    fn misses_are_forgotten_and_hits_are_kept() {
        let cache = CampaignCache::default();
        let id: CampaignId = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a".parse().unwrap();
        assert!(matches!(cache.get(id), Cached::Unknown));
        cache.missing(id);
        assert!(matches!(cache.get(id), Cached::Missing));
        cache.found(Arc::new(Campaign {
            id,
            name: CampaignName::parse("c").unwrap(),
            start_time: Timestamp::EPOCH,
        }));
        assert!(matches!(cache.get(id), Cached::Found(_)));
    }
}
