//! What the frames hold: log records and snapshot sections, in a small
//! little-endian binary encoding.
//!
//! Log records:
//!
//! * `1` campaign: id (16), start ms (8), name length (2), name;
//! * `3` counted batch: count (4), then per impression: campaign id (16),
//!   fingerprint (16), user hash (8), event time ms (8), ad id length (2),
//!   ad id. (`2`, written before unique users were kept, is the same
//!   without the user hash; it still replays, into impressions only.)
//!
//! Counted impressions are enough to rebuild everything: totals, windows
//! and per-ad counters from the campaign, ad and time; unique users from
//! the user hash (`murmur64a` of the id, as Redis's `PFADD` computes it);
//! live dedup keys from the fingerprint and time. Duplicates change nothing
//! and are not logged.
//!
//! Snapshot sections: `15` the log position (segment (8), offset (8)) the
//! next campaign was captured at, `16` campaign with its counters, `11` a
//! chunk of dedup entries (fingerprint, latest counted time), `12` the end,
//! with counts to check that nothing is missing.
//!
//! A campaign section (`16`): campaign, its own counter (total (8), minute
//! count (4), per minute: minute (8) and 60 per-second counts (4 each), hour
//! count (4), per hour: hour (8), count (8)), its users, its quarter hours
//! (count (4), per hour: hour (8) and its 4 quarters' counts (4 each)), the
//! other-ads
//! counter and users, the limit flag (1), ad count (4), per ad: id length
//! (2), id, its counter and users. Ad counters are minute-exact: total (8),
//! minute count (4), per minute: minute (8), count (4), hour count (4), per
//! hour: hour (8), count (8). Users: open hour (8), the total sketch, minute
//! count (4), per minute: minute (8) and sketch, hour count (4), per hour:
//! hour (8) and sketch; a sketch is `0` with a count (4) and that many user
//! hashes (8 each), or `1` with a length (4) and Redis's HLL bytes.
//! Sections `14` (no quarter hours: they are taken from the campaign's own
//! counter, exact for its last day, hour by hour before), `13` (no users
//! either) and `10` (no users, second-exact ad counters, summed to minutes)
//! still load.

use impression_core::{
    AdId, AdParts, AdSnapshot, Campaign, CampaignId, CampaignName, CampaignSnapshot, Fingerprint,
    Hll, QuarterParts, Timestamp, UniqueCounterParts, UniqueParts, WindowParts, quarters_of,
};

use super::layout::LogPosition;

const CAMPAIGN: u8 = 1;
/// Counted impressions without their users (read, no longer written).
const COUNTED_WITHOUT_USERS: u8 = 2;
const COUNTED: u8 = 3;
/// A campaign whose ad counters are second-exact (read, no longer written).
const SNAP_CAMPAIGN_SECOND_ADS: u8 = 10;
const SNAP_DEDUP: u8 = 11;
const SNAP_END: u8 = 12;
/// A campaign without unique users (read, no longer written).
const SNAP_CAMPAIGN_WITHOUT_USERS: u8 = 13;
const SNAP_CAMPAIGN_WITHOUT_QUARTERS: u8 = 14;
const SNAP_POSITION: u8 = 15;
const SNAP_CAMPAIGN: u8 = 16;

// Encoded sizes (at least) of the repeated items, to refuse a count the
// rest of the payload cannot hold before allocating room for it.
const COUNTED_MIN_BYTES: usize = 16 + 16 + 8 + 8 + 2;
const COUNTED_WITHOUT_USERS_MIN_BYTES: usize = 16 + 16 + 8 + 2;
const SKETCH_MIN_BYTES: usize = 1 + 4;
const DATED_SKETCH_MIN_BYTES: usize = 8 + SKETCH_MIN_BYTES;
const AD_MIN_BYTES: usize = 2 + PARTS_MIN_BYTES;
const AD_MINUTE_BYTES: usize = 8 + 4;
const PARTS_MIN_BYTES: usize = 8 + 4 + 4;
const DEDUP_ENTRY_BYTES: usize = 16 + 8;
const MINUTE_BYTES: usize = 8 + 60 * 4;
const HOUR_BYTES: usize = 8 + 8;
const QUARTER_HOUR_BYTES: usize = 8 + 4 * 4;

/// A counted impression as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Its campaign.
    pub campaign_id: CampaignId,
    /// Its ad.
    pub ad_id: AdId,
    /// The fingerprint of its dedup key.
    pub fingerprint: Fingerprint,
    /// Its event time.
    pub timestamp: Timestamp,
    /// Its user's hash (`user_hash`); `None` in records written before
    /// unique users were kept.
    pub user: Option<u64>,
}

/// One log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// A campaign was created.
    Campaign(Campaign),
    /// These impressions were counted, in this order.
    Counted(Vec<Counted>),
}

/// One snapshot section.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "sections live one at a time, between the file and the engine: boxing would only add an allocation per campaign"
)]
pub enum SnapshotSection {
    /// A campaign and its counters.
    Campaign(CampaignSnapshot),
    /// The log position the next campaign section was captured at: its
    /// counters hold every impression logged before it and none after.
    /// (Sections written before snapshots were taken from the live state
    /// have none: their campaigns are as of the snapshot's segment.)
    Position(LogPosition),
    /// Live dedup keys and their latest counted times.
    Dedup(Vec<(Fingerprint, Timestamp)>),
    /// The end, with how many campaigns and keys came before.
    End {
        /// Campaign sections written.
        campaigns: u64,
        /// Dedup entries written.
        keys: u64,
    },
}

/// Encodes a campaign record.
pub fn encode_campaign(out: &mut Vec<u8>, c: &Campaign) {
    out.push(CAMPAIGN);
    put_campaign(out, c);
}

/// Starts a counted-batch record; [`push_counted`] adds to it.
pub fn begin_counted(out: &mut Vec<u8>) {
    out.push(COUNTED);
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Adds one impression, by the user whose hash is `user`, to the
/// counted-batch record `out` holds.
pub fn push_counted(
    out: &mut Vec<u8>,
    campaign_id: &CampaignId,
    ad_id: &AdId,
    fp: Fingerprint,
    user: u64,
    t: Timestamp,
) {
    out.extend_from_slice(campaign_id.as_bytes());
    out.extend_from_slice(&fp.as_u128().to_le_bytes());
    out.extend_from_slice(&user.to_le_bytes());
    out.extend_from_slice(&t.as_millis().to_le_bytes());
    put_str(out, ad_id.as_str());
    let count = u32::from_le_bytes([out[1], out[2], out[3], out[4]]) + 1;
    out[1..5].copy_from_slice(&count.to_le_bytes());
}

/// Decodes a log record.
pub fn decode_log(payload: &[u8]) -> Result<LogRecord, String> {
    let mut r = Cursor::new(payload);
    let record = match r.u8()? {
        CAMPAIGN => LogRecord::Campaign(r.campaign()?),
        kind @ (COUNTED | COUNTED_WITHOUT_USERS) => {
            let with_users = kind == COUNTED;
            let min = if with_users {
                COUNTED_MIN_BYTES
            } else {
                COUNTED_WITHOUT_USERS_MIN_BYTES
            };
            let n = r.count(min)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let campaign_id = r.campaign_id()?;
                let fingerprint = Fingerprint::from_u128(r.u128()?);
                let user = if with_users { Some(r.u64()?) } else { None };
                items.push(Counted {
                    campaign_id,
                    fingerprint,
                    user,
                    timestamp: Timestamp::from_millis(r.u64()?),
                    ad_id: AdId::parse(r.string()?).map_err(|e| e.to_string())?,
                });
            }
            LogRecord::Counted(items)
        }
        other => return Err(format!("unknown log record type {other}")),
    };
    r.finish()?;
    Ok(record)
}

/// Encodes a snapshot section.
pub fn encode_section(out: &mut Vec<u8>, section: &SnapshotSection) {
    match section {
        SnapshotSection::Campaign(s) => {
            out.push(SNAP_CAMPAIGN);
            put_campaign(out, &s.campaign);
            put_parts(out, &s.all);
            put_users(out, &s.users);
            put_quarters(out, &s.quarters);
            put_ad(out, &s.other_ads);
            out.push(u8::from(s.ads_limit_exceeded));
            #[allow(
                clippy::cast_possible_truncation,
                reason = "ads per campaign are capped by the u32 `MAX_ADS_PER_CAMPAIGN`"
            )]
            out.extend_from_slice(&(s.ads.len() as u32).to_le_bytes());
            for (ad, state) in &s.ads {
                put_str(out, ad.as_str());
                put_ad(out, state);
            }
        }
        SnapshotSection::Position(at) => {
            out.push(SNAP_POSITION);
            out.extend_from_slice(&at.segment.to_le_bytes());
            out.extend_from_slice(&at.offset.to_le_bytes());
        }
        SnapshotSection::Dedup(entries) => {
            out.push(SNAP_DEDUP);
            #[allow(
                clippy::cast_possible_truncation,
                reason = "a section holds at most `DEDUP_CHUNK` (65,536) entries; a decoded one had a u32 count"
            )]
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for (fp, t) in entries {
                out.extend_from_slice(&fp.as_u128().to_le_bytes());
                out.extend_from_slice(&t.as_millis().to_le_bytes());
            }
        }
        SnapshotSection::End { campaigns, keys } => {
            out.push(SNAP_END);
            out.extend_from_slice(&campaigns.to_le_bytes());
            out.extend_from_slice(&keys.to_le_bytes());
        }
    }
}

/// Decodes a snapshot section.
pub fn decode_section(payload: &[u8]) -> Result<SnapshotSection, String> {
    let mut r = Cursor::new(payload);
    let section = match r.u8()? {
        kind @ (SNAP_CAMPAIGN
        | SNAP_CAMPAIGN_WITHOUT_QUARTERS
        | SNAP_CAMPAIGN_WITHOUT_USERS
        | SNAP_CAMPAIGN_SECOND_ADS) => {
            let second_ads = kind == SNAP_CAMPAIGN_SECOND_ADS;
            let with_users = matches!(kind, SNAP_CAMPAIGN | SNAP_CAMPAIGN_WITHOUT_QUARTERS);
            let campaign = r.campaign()?;
            let all = r.parts()?;
            let users = if with_users {
                r.users()?
            } else {
                UniqueCounterParts::default()
            };
            let quarters = if kind == SNAP_CAMPAIGN {
                r.quarters()?
            } else {
                // Written before quarters were kept: what the campaign's
                // own counter knows (exact for its last day).
                quarters_of(&all)
            };
            let other_ads = r.ad(second_ads, with_users)?;
            let ads_limit_exceeded = r.u8()? != 0;
            let n = r.count(AD_MIN_BYTES)?;
            let mut ads = Vec::with_capacity(n);
            for _ in 0..n {
                let ad = AdId::parse(r.string()?).map_err(|e| e.to_string())?;
                ads.push((ad, r.ad(second_ads, with_users)?));
            }
            SnapshotSection::Campaign(CampaignSnapshot {
                campaign,
                all,
                users,
                quarters,
                ads,
                other_ads,
                ads_limit_exceeded,
            })
        }
        SNAP_POSITION => SnapshotSection::Position(LogPosition {
            segment: r.u64()?,
            offset: r.u64()?,
        }),
        SNAP_DEDUP => {
            let n = r.count(DEDUP_ENTRY_BYTES)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push((
                    Fingerprint::from_u128(r.u128()?),
                    Timestamp::from_millis(r.u64()?),
                ));
            }
            SnapshotSection::Dedup(entries)
        }
        SNAP_END => SnapshotSection::End {
            campaigns: r.u64()?,
            keys: r.u64()?,
        },
        other => return Err(format!("unknown snapshot section type {other}")),
    };
    r.finish()?;
    Ok(section)
}

fn put_campaign(out: &mut Vec<u8>, c: &Campaign) {
    out.extend_from_slice(c.id.as_bytes());
    out.extend_from_slice(&c.start_time.as_millis().to_le_bytes());
    put_str(out, c.name.as_str());
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "names are at most 256 characters (1 KiB) and ids 512 bytes: below 2^16"
)]
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "at most DAILY_HISTORY (<= 3660 days) of hours: below 2^32"
)]
fn put_quarters(out: &mut Vec<u8>, quarters: &QuarterParts) {
    out.extend_from_slice(&(quarters.len() as u32).to_le_bytes());
    for (hour, counts) in quarters {
        out.extend_from_slice(&hour.to_le_bytes());
        for count in counts {
            out.extend_from_slice(&count.to_le_bytes());
        }
    }
}

fn put_ad(out: &mut Vec<u8>, ad: &AdSnapshot) {
    put_ad_parts(out, &ad.counts);
    put_users(out, &ad.users);
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "a counter holds at most a day of minute sketches and HISTORY (<= 366 days) of hour sketches, \
              and a sketch at most 128 hashes or 12,304 bytes: far below 2^32"
)]
fn put_users(out: &mut Vec<u8>, users: &UniqueCounterParts) {
    out.extend_from_slice(&users.open_hour.to_le_bytes());
    put_sketch(out, &users.total);
    out.extend_from_slice(&(users.minutes.len() as u32).to_le_bytes());
    for (minute, sketch) in &users.minutes {
        out.extend_from_slice(&minute.to_le_bytes());
        put_sketch(out, sketch);
    }
    out.extend_from_slice(&(users.hours.len() as u32).to_le_bytes());
    for (hour, sketch) in &users.hours {
        out.extend_from_slice(&hour.to_le_bytes());
        put_sketch(out, sketch);
    }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "a sketch is at most 128 hashes or 12,304 bytes: far below 2^32"
)]
fn put_sketch(out: &mut Vec<u8>, sketch: &UniqueParts) {
    match sketch {
        UniqueParts::Exact(hashes) => {
            out.push(0);
            out.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
            for hash in hashes {
                out.extend_from_slice(&hash.to_le_bytes());
            }
        }
        UniqueParts::Hll(bytes) => {
            out.push(1);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "a window holds about a day of minute buckets and at most HISTORY (<= 366 days) of hour buckets: far below 2^32"
)]
fn put_ad_parts(out: &mut Vec<u8>, parts: &AdParts) {
    out.extend_from_slice(&parts.total.to_le_bytes());
    out.extend_from_slice(&(parts.minutes.len() as u32).to_le_bytes());
    for (minute, count) in &parts.minutes {
        out.extend_from_slice(&minute.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out.extend_from_slice(&(parts.hours.len() as u32).to_le_bytes());
    for (hour, count) in &parts.hours {
        out.extend_from_slice(&hour.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "a window holds about a day of minute buckets and at most HISTORY (<= 366 days) of hour buckets: far below 2^32"
)]
fn put_parts(out: &mut Vec<u8>, parts: &WindowParts) {
    out.extend_from_slice(&parts.total.to_le_bytes());
    out.extend_from_slice(&(parts.minutes.len() as u32).to_le_bytes());
    for (minute, seconds) in &parts.minutes {
        out.extend_from_slice(&minute.to_le_bytes());
        for c in seconds {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
    out.extend_from_slice(&(parts.hours.len() as u32).to_le_bytes());
    for (hour, count) in &parts.hours {
        out.extend_from_slice(&hour.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
}

/// Reads fields off a payload, failing (never panicking) when it is short.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("record ends early at byte {}", self.pos))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    /// A `u32` count of items of at least `item_bytes` each, checked
    /// against what is left: a damaged count fails here, before anything is
    /// allocated for it (a 24-byte payload announcing four billion dedup
    /// entries used to reserve 24 MiB first).
    fn count(&mut self, item_bytes: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(item_bytes) > left {
            return Err(format!(
                "record ends early: {n} items of at least {item_bytes} bytes announced at byte {}, \
                 {left} bytes left",
                self.pos - 4
            ));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "text is not UTF-8".to_owned())
    }

    fn campaign_id(&mut self) -> Result<CampaignId, String> {
        Ok(CampaignId::from_uuid(uuid::Uuid::from_bytes(self.array()?)))
    }

    fn campaign(&mut self) -> Result<Campaign, String> {
        Ok(Campaign {
            id: self.campaign_id()?,
            start_time: Timestamp::from_millis(self.u64()?),
            name: CampaignName::parse(&self.string()?).map_err(|e| e.to_string())?,
        })
    }

    fn parts(&mut self) -> Result<WindowParts, String> {
        let total = self.u64()?;
        let n = self.count(MINUTE_BYTES)?;
        let mut minutes = Vec::with_capacity(n);
        for _ in 0..n {
            let minute = self.u64()?;
            let mut seconds = [0u32; 60];
            for c in &mut seconds {
                *c = self.u32()?;
            }
            minutes.push((minute, seconds));
        }
        let n = self.count(HOUR_BYTES)?;
        let mut hours = Vec::with_capacity(n);
        for _ in 0..n {
            hours.push((self.u64()?, self.u64()?));
        }
        Ok(WindowParts {
            total,
            minutes,
            hours,
        })
    }

    /// An ad's counters: its impressions (see [`Cursor::ad_parts`]) and,
    /// in sections that have them, its users.
    fn ad(&mut self, second_exact: bool, with_users: bool) -> Result<AdSnapshot, String> {
        let counts = self.ad_parts(second_exact)?;
        let users = if with_users {
            self.users()?
        } else {
            UniqueCounterParts::default()
        };
        Ok(AdSnapshot { counts, users })
    }

    /// A campaign's quarter-hour counts.
    fn quarters(&mut self) -> Result<QuarterParts, String> {
        let n = self.count(QUARTER_HOUR_BYTES)?;
        let mut quarters = Vec::with_capacity(n);
        for _ in 0..n {
            let hour = self.u64()?;
            let mut counts = [0u32; 4];
            for count in &mut counts {
                *count = self.u32()?;
            }
            quarters.push((hour, counts));
        }
        Ok(quarters)
    }

    /// A counter's users.
    fn users(&mut self) -> Result<UniqueCounterParts, String> {
        let open_hour = self.u64()?;
        let total = self.sketch()?;
        let n = self.count(DATED_SKETCH_MIN_BYTES)?;
        let mut minutes = Vec::with_capacity(n);
        for _ in 0..n {
            minutes.push((self.u64()?, self.sketch()?));
        }
        let n = self.count(DATED_SKETCH_MIN_BYTES)?;
        let mut hours = Vec::with_capacity(n);
        for _ in 0..n {
            hours.push((self.u64()?, self.sketch()?));
        }
        Ok(UniqueCounterParts {
            minutes,
            hours,
            total,
            open_hour,
        })
    }

    /// A sketch; HLL bytes must be ones Redis would accept.
    fn sketch(&mut self) -> Result<UniqueParts, String> {
        match self.u8()? {
            0 => {
                let n = self.count(8)?;
                let mut hashes = Vec::with_capacity(n);
                for _ in 0..n {
                    hashes.push(self.u64()?);
                }
                Ok(UniqueParts::Exact(hashes))
            }
            1 => {
                let len = usize::try_from(self.u32()?).map_err(|e| e.to_string())?;
                let bytes = self.take(len)?.to_vec();
                Hll::from_redis_bytes(&bytes).map_err(|e| format!("a unique-user sketch: {e}"))?;
                Ok(UniqueParts::Hll(bytes))
            }
            other => Err(format!("unknown sketch type {other}")),
        }
    }

    /// An ad's counter: minute-exact, or (in sections written before ad
    /// counters were) second-exact and summed to minutes.
    fn ad_parts(&mut self, second_exact: bool) -> Result<AdParts, String> {
        if second_exact {
            return Ok(AdParts::from(self.parts()?));
        }
        let total = self.u64()?;
        let n = self.count(AD_MINUTE_BYTES)?;
        let mut minutes = Vec::with_capacity(n);
        for _ in 0..n {
            minutes.push((self.u64()?, self.u32()?));
        }
        let n = self.count(HOUR_BYTES)?;
        let mut hours = Vec::with_capacity(n);
        for _ in 0..n {
            hours.push((self.u64()?, self.u64()?));
        }
        Ok(AdParts {
            total,
            minutes,
            hours,
        })
    }

    fn finish(&self) -> Result<(), String> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(format!(
                "{} unexpected bytes after the record",
                self.buf.len() - self.pos
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign() -> Campaign {
        Campaign {
            id: CampaignId::from_uuid(uuid::Uuid::from_u128(7)),
            name: CampaignName::parse("Summer €").unwrap(),
            start_time: Timestamp::from_secs(1_735_689_600),
        }
    }

    #[test]
    fn log_records_round_trip() {
        let mut out = Vec::new();
        encode_campaign(&mut out, &campaign());
        assert_eq!(decode_log(&out).unwrap(), LogRecord::Campaign(campaign()));

        let items = vec![
            Counted {
                campaign_id: campaign().id,
                ad_id: AdId::parse("banner").unwrap(),
                fingerprint: Fingerprint::from_u128(u128::MAX - 3),
                timestamp: Timestamp::from_millis(1_735_689_600_123),
                user: Some(u64::MAX),
            },
            Counted {
                campaign_id: campaign().id,
                ad_id: AdId::parse("x".repeat(512)).unwrap(),
                fingerprint: Fingerprint::from_u128(1),
                timestamp: Timestamp::from_millis(5),
                user: Some(0),
            },
        ];
        let mut out = Vec::new();
        begin_counted(&mut out);
        for i in &items {
            push_counted(
                &mut out,
                &i.campaign_id,
                &i.ad_id,
                i.fingerprint,
                i.user.unwrap(),
                i.timestamp,
            );
        }
        assert_eq!(decode_log(&out).unwrap(), LogRecord::Counted(items));
    }

    /// Logs written before unique users were kept still replay, their
    /// impressions without a user.
    #[test]
    fn counted_records_without_users_still_load() {
        let mut out = vec![COUNTED_WITHOUT_USERS];
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(campaign().id.as_bytes());
        out.extend_from_slice(&7u128.to_le_bytes());
        out.extend_from_slice(&5u64.to_le_bytes());
        put_str(&mut out, "banner");
        assert_eq!(
            decode_log(&out).unwrap(),
            LogRecord::Counted(vec![Counted {
                campaign_id: campaign().id,
                ad_id: AdId::parse("banner").unwrap(),
                fingerprint: Fingerprint::from_u128(7),
                timestamp: Timestamp::from_millis(5),
                user: None,
            }])
        );
    }

    /// Users of one counter: exact and HLL sketches, minutes and hours.
    fn users() -> UniqueCounterParts {
        let mut hll = Hll::new();
        for user in 0..1_000u64 {
            hll.insert(&user.to_le_bytes());
        }
        UniqueCounterParts {
            minutes: vec![
                (28_928_160, UniqueParts::Exact(vec![1, 5, u64::MAX])),
                (28_928_161, UniqueParts::Hll(hll.to_redis_bytes())),
            ],
            hours: vec![(482_135, UniqueParts::Exact(vec![2]))],
            total: UniqueParts::Hll(hll.to_redis_bytes()),
            open_hour: 482_136,
        }
    }

    #[test]
    fn snapshot_sections_round_trip() {
        let parts = WindowParts {
            total: 3,
            minutes: vec![(28_928_160, [1; 60])],
            hours: vec![(482_136, 3)],
        };
        let sections = [
            SnapshotSection::Campaign(CampaignSnapshot {
                campaign: campaign(),
                all: parts.clone(),
                users: users(),
                quarters: vec![(482_135, [1, 0, u32::MAX, 7]), (482_136, [0, 0, 0, 3])],
                ads: vec![(
                    AdId::parse("a").unwrap(),
                    AdSnapshot {
                        counts: AdParts {
                            total: 3,
                            minutes: vec![(28_928_160, 3)],
                            hours: vec![(482_136, 3)],
                        },
                        users: users(),
                    },
                )],
                other_ads: AdSnapshot::default(),
                ads_limit_exceeded: true,
            }),
            SnapshotSection::Position(LogPosition {
                segment: 7,
                offset: u64::MAX - 1,
            }),
            SnapshotSection::Dedup(vec![(
                Fingerprint::from_u128(9),
                Timestamp::from_millis(10),
            )]),
            SnapshotSection::End {
                campaigns: 1,
                keys: 1,
            },
        ];
        for s in sections {
            let mut out = Vec::new();
            encode_section(&mut out, &s);
            assert_eq!(decode_section(&out).unwrap(), s);
        }
    }

    /// Snapshots written when ad counters were second-exact still load,
    /// their ad counters summed to minutes (and, having no users, with
    /// empty user sketches).
    #[test]
    fn campaign_sections_with_second_exact_ads_load_as_minutes() {
        let mut seconds = [0u32; 60];
        seconds[3] = 2;
        seconds[59] = 1;
        let second_exact = WindowParts {
            total: 3,
            minutes: vec![(28_928_160, seconds), (28_928_161, [0; 60])],
            hours: vec![(482_136, 3)],
        };
        let mut out = vec![SNAP_CAMPAIGN_SECOND_ADS];
        put_campaign(&mut out, &campaign());
        put_parts(&mut out, &second_exact);
        put_parts(&mut out, &WindowParts::default());
        out.push(0);
        out.extend_from_slice(&1u32.to_le_bytes());
        put_str(&mut out, "a");
        put_parts(&mut out, &second_exact);
        let SnapshotSection::Campaign(s) = decode_section(&out).unwrap() else {
            panic!("a campaign section");
        };
        assert_eq!(s.all, second_exact, "the campaign stays second-exact");
        let minutes = AdParts {
            total: 3,
            minutes: vec![(28_928_160, 3)],
            hours: vec![(482_136, 3)],
        };
        let ad = AdSnapshot {
            counts: minutes,
            users: UniqueCounterParts::default(),
        };
        assert_eq!(s.ads, vec![(AdId::parse("a").unwrap(), ad)]);
        assert_eq!(s.other_ads, AdSnapshot::default());
        assert_eq!(s.users, UniqueCounterParts::default());
    }

    /// Snapshots written before quarter hours were kept load with the
    /// quarters the campaign's own counter implies.
    #[test]
    fn campaign_sections_without_quarters_load_them_from_the_counter() {
        let mut seconds = [0u32; 60];
        seconds[10] = 4;
        let all = WindowParts {
            total: 9,
            minutes: vec![(28_928_170, seconds)],
            hours: vec![(482_135, 5), (482_136, 4)],
        };
        let mut out = vec![SNAP_CAMPAIGN_WITHOUT_QUARTERS];
        put_campaign(&mut out, &campaign());
        put_parts(&mut out, &all);
        put_users(&mut out, &UniqueCounterParts::default());
        put_ad(&mut out, &AdSnapshot::default());
        out.push(0);
        out.extend_from_slice(&0u32.to_le_bytes());
        let SnapshotSection::Campaign(s) = decode_section(&out).unwrap() else {
            panic!("a campaign section");
        };
        // Minute 28,928,170 is minute 10 of hour 482,136: its first quarter,
        // from the seconds; the hour before has only its total.
        let mut seconds = [0u32; 60];
        seconds[10] = 4;
        let later = WindowParts {
            minutes: vec![(28_928_190, seconds)],
            ..all.clone()
        };
        assert_eq!(
            s.quarters,
            vec![(482_135, [5, 0, 0, 0]), (482_136, [4, 0, 0, 0])]
        );
        assert_eq!(quarters_of(&later)[1], (482_136, [0, 0, 4, 0]));
        assert_eq!(s.quarters, quarters_of(&all));
    }

    /// A sketch whose HLL bytes Redis would refuse is a damaged snapshot,
    /// not a panic later.
    #[test]
    fn damaged_sketches_are_refused() {
        let mut out = Vec::new();
        put_sketch(&mut out, &UniqueParts::Hll(b"HYLL-not-really".to_vec()));
        let err = Cursor::new(&out).sketch().unwrap_err();
        assert!(err.contains("a unique-user sketch"), "{err}");
        let err = Cursor::new(&[7]).sketch().unwrap_err();
        assert!(err.contains("unknown sketch type 7"), "{err}");
    }

    #[test]
    fn short_or_long_payloads_are_errors_not_panics() {
        let mut out = Vec::new();
        encode_campaign(&mut out, &campaign());
        for cut in 0..out.len() {
            assert!(decode_log(&out[..cut]).is_err(), "cut at {cut}");
        }
        out.push(0);
        assert!(decode_log(&out).unwrap_err().contains("unexpected bytes"));
        assert!(
            decode_log(&[99])
                .unwrap_err()
                .contains("unknown log record")
        );
        // A count far larger than the payload fails without allocating it.
        let mut huge = vec![COUNTED];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_log(&huge).is_err());
    }

    /// Found by the `snapshot_section` fuzz target: a 24-byte dedup section
    /// announcing 4,294,967,295 entries reserved room for a million of them
    /// (24 MiB) before failing. Every count is now checked against the
    /// bytes left first.
    #[test]
    fn counts_beyond_the_payload_fail_before_allocating() {
        let fuzzed: &[u8] = &[
            0x0b, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x10, 0x00, 0xff, 0x0c,
            0x01, 0x00, 0xfe, 0xff, 0xff, 0xff, 0x0c, 0x00, 0xff, 0x00,
        ];
        let err = decode_section(fuzzed).unwrap_err();
        assert!(
            err.contains("4294967295 items of at least 24 bytes"),
            "{err}"
        );

        // The same check guards every repeated field: counted items, ads,
        // minutes and hours.
        let mut counted = vec![COUNTED];
        counted.extend_from_slice(&2u32.to_le_bytes());
        counted.extend_from_slice(&[0; COUNTED_MIN_BYTES]);
        let err = decode_log(&counted).unwrap_err();
        assert!(err.contains("2 items of at least 50 bytes"), "{err}");

        let mut section = Vec::new();
        encode_section(
            &mut section,
            &SnapshotSection::Campaign(CampaignSnapshot {
                campaign: campaign(),
                all: WindowParts::default(),
                users: UniqueCounterParts::default(),
                quarters: Vec::new(),
                ads: Vec::new(),
                other_ads: AdSnapshot::default(),
                ads_limit_exceeded: false,
            }),
        );
        let minutes_at = 1 + 16 + 8 + 2 + campaign().name.as_str().len() + 8;
        for (at, bytes) in [
            (minutes_at, 248),
            (minutes_at + 4, 16),
            (section.len() - 4, 18),
        ] {
            let mut bad = section.clone();
            bad[at..at + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
            let err = decode_section(&bad).unwrap_err();
            assert!(
                err.contains(&format!("1000000 items of at least {bytes} bytes")),
                "at {at}: {err}"
            );
        }
    }
}
