//! Key names, and how they spread over a Redis Cluster.
//!
//! Every key starts with `REDIS_PREFIX` and holds exactly one hash tag
//! (`{...}`), so the tag alone decides its cluster slot:
//!
//! * `<prefix>campaigns`: the campaign index (one sorted set, no tag).
//! * `<prefix>pixel-id-secret`: the pixel id secret (a string, no tag, no
//!   expiry), set once by whichever node needs it first.
//! * `<prefix>{c<uuid>}:...`: everything counted for one campaign (totals,
//!   ad membership, second/minute/hour buckets, step-2 markers). One slot
//!   per campaign, so counting a campaign's impressions and reading its
//!   stats are each one atomic script.
//! * `<prefix>{<bucket tag>}<16 fingerprint bytes>`: the dedup entry of one
//!   key, and `<prefix>{<bucket tag>}:j`, the bucket's journal. There are
//!   [`DEDUP_BUCKETS`] buckets, chosen by the top bits of the fingerprint,
//!   so any campaign's dedup work is spread evenly over all of them
//!   whatever its volume.
//!
//! The bucket tags are not `0..64` but strings found by a fixed search so
//! that bucket `i` hashes into slots `256 i .. 256 (i + 1)`: a cluster whose
//! masters own equal contiguous slot ranges (what `redis-cli --cluster
//! create` and rebalancing produce) gets an equal share of the dedup work.
//! The tags are a function of nothing but the bucket number, so every node
//! computes the same names.

use std::sync::OnceLock;

use impression_core::{CampaignId, Fingerprint};

/// Dedup buckets: the unit of dedup atomicity in a cluster. A power of two
/// (the fingerprint's top bits pick one); 64 spreads evenly over up to 64
/// masters while a chunk of 1,024 impressions still has ~16 per bucket.
pub const DEDUP_BUCKETS: usize = 64;

/// Redis Cluster's slot count.
const SLOTS: u16 = 16_384;

/// The key names of one deployment (one `REDIS_PREFIX`).
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// Key names under `prefix`, which must not contain a brace (it would
    /// become the hash tag of every key and put them all in one slot).
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.contains(['{', '}']) {
            return Err(format!(
                "REDIS_PREFIX {prefix:?} must not contain `{{` or `}}`: keys carry their own hash tags"
            ));
        }
        Ok(KeySpace {
            prefix: prefix.to_owned(),
        })
    }

    /// The campaign index.
    pub fn campaigns(&self) -> String {
        format!("{}campaigns", self.prefix)
    }

    /// The pixel id secret.
    pub fn pixel_id_secret(&self) -> String {
        format!("{}pixel-id-secret", self.prefix)
    }

    /// The base every key of a campaign starts with (not a key itself).
    pub fn campaign_base(&self, id: CampaignId) -> String {
        format!("{}{{c{}}}", self.prefix, id.as_uuid().simple())
    }

    /// The campaign's totals hash: the key its scripts are routed by.
    pub fn campaign_totals(&self, id: CampaignId) -> String {
        format!("{}:tot", self.campaign_base(id))
    }

    /// A key of the campaign's slot that is never written. Every campaign
    /// script declares it (after its real keys), so on a cluster Redis
    /// never runs one while the campaign's slot is being migrated: the
    /// scripts also touch keys they do not declare (buckets named by the
    /// time), which during a migration may already be on the other master
    /// or not yet, and a script that meets one fails half-way, its earlier
    /// writes kept. With a declared key always missing, the source answers
    /// `TRYAGAIN` (some keys here, some not) or `ASK`, and the target,
    /// asked, `TRYAGAIN` (several keys, one missing): a 503 and a retry
    /// once the slot has moved, never a half-applied script.
    pub fn campaign_absent(&self, id: CampaignId) -> String {
        format!("{}:nx", self.campaign_base(id))
    }

    /// The campaign's step-2 marker hash for chunks created in `minute`.
    pub fn campaign_markers(&self, id: CampaignId, minute: u64) -> String {
        format!("{}:k:{minute}", self.campaign_base(id))
    }

    /// The dedup bucket of a fingerprint.
    pub fn bucket_of(fp: Fingerprint) -> usize {
        (fp.as_u128() >> (128 - DEDUP_BUCKETS.trailing_zeros())) as usize
    }

    /// The dedup entry of a fingerprint: 16 raw bytes after the bucket tag,
    /// so every entry is the same small size.
    pub fn dedup(&self, fp: Fingerprint) -> Vec<u8> {
        let tag = bucket_tag(Self::bucket_of(fp));
        let mut key = Vec::with_capacity(self.prefix.len() + tag.len() + 18);
        key.extend_from_slice(self.prefix.as_bytes());
        key.push(b'{');
        key.extend_from_slice(tag.as_bytes());
        key.push(b'}');
        key.extend_from_slice(&fp.as_u128().to_be_bytes());
        key
    }

    /// The journal of a dedup bucket (cluster mode).
    pub fn journal(&self, bucket: usize) -> String {
        format!("{}{{{}}}:j", self.prefix, bucket_tag(bucket))
    }
}

/// The hash tag of dedup bucket `i` (see the module docs).
pub fn bucket_tag(i: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let width = SLOTS as usize / DEDUP_BUCKETS;
        (0..DEDUP_BUCKETS)
            .map(|bucket| {
                // About DEDUP_BUCKETS tries per bucket: instant.
                (0u32..)
                    .map(|n| format!("d{bucket}.{n}"))
                    .find(|tag| slot(tag.as_bytes()) as usize / width == bucket)
                    .unwrap_or_default()
            })
            .collect()
    });
    tags.get(i % DEDUP_BUCKETS).map_or("", String::as_str)
}

/// The cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of the
/// whole key if it has none, modulo 16,384 (the Redis Cluster spec).
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_spec() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
    }

    #[test]
    fn bucket_tags_cover_the_slot_space_evenly() {
        let width = SLOTS as usize / DEDUP_BUCKETS;
        for i in 0..DEDUP_BUCKETS {
            let tag = bucket_tag(i);
            assert!(!tag.is_empty());
            assert_eq!(slot(tag.as_bytes()) as usize / width, i, "{tag}");
        }
        let keys = KeySpace::new("ic:").unwrap();
        let fp = Fingerprint::from_u128(u128::MAX);
        assert_eq!(KeySpace::bucket_of(fp), DEDUP_BUCKETS - 1);
        assert_eq!(
            slot(&keys.dedup(fp)),
            slot(keys.journal(DEDUP_BUCKETS - 1).as_bytes())
        );
    }

    #[test]
    fn a_campaign_lives_in_one_slot() {
        let keys = KeySpace::new("ic:").unwrap();
        let id = CampaignId::from_uuid(uuid::Uuid::from_u128(7));
        let totals = keys.campaign_totals(id);
        assert_eq!(totals, "ic:{c00000000000000000000000000000007}:tot");
        assert_eq!(
            slot(totals.as_bytes()),
            slot(format!("{}:a:m:123", keys.campaign_base(id)).as_bytes())
        );
        assert_eq!(
            slot(totals.as_bytes()),
            slot(keys.campaign_markers(id, 5).as_bytes())
        );
        assert_eq!(
            slot(totals.as_bytes()),
            slot(keys.campaign_absent(id).as_bytes())
        );
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        assert!(KeySpace::new("a{b}").is_err());
        assert!(KeySpace::new("ic:").is_ok());
    }
}
