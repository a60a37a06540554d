//! The memory budget: one number (`MEMORY_LIMIT`) that bounds everything
//! the state holds, and what happens at it.
//!
//! What counts is the service's own estimate of its state, by kind (dedup
//! keys, window counters, unique-user sketches, campaign records, queued
//! work): the store keeps it up to date as the state changes
//! ([`Store::memory_use`]), so checking it costs a few atomic reads, not a
//! walk and never an RSS poll on the hot path.
//!
//! At the limit an impression that would add state (a new dedup key, or a
//! key counted again: new counter buckets) is refused with 503 and
//! `Retry-After` before it is acknowledged, so nothing accepted is lost;
//! duplicates, which add nothing, are still answered; reads keep working;
//! expiry frees room and ingest resumes by itself. Impressions already
//! queued when the limit is reached are applied: the overshoot is bounded
//! by the queue.
//!
//! The default limit is half of the memory the process may use: its
//! cgroup's limit when it has one (v1 or v2, the tightest on its path),
//! else the machine's physical memory.

use std::path::Path;

use impression_core::{Impression, MemoryUse, Timestamp};

use crate::storage::Store;

/// Bytes the state holds, by kind, as `/metrics` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateBytes {
    /// The dedup index.
    pub dedup: usize,
    /// Window counters of campaigns and ads.
    pub counters: usize,
    /// Unique-user sketches.
    pub sketches: usize,
    /// Campaign records.
    pub campaigns: usize,
    /// Impressions queued for the workers.
    pub queue: usize,
    /// Clients tracked by the rate limit.
    pub clients: usize,
}

impl StateBytes {
    /// The store's state, the queue's and the rate limit's.
    pub fn new(store: MemoryUse, queue: usize, clients: usize) -> Self {
        StateBytes {
            dedup: store.dedup,
            counters: store.counters,
            sketches: store.sketches,
            campaigns: store.campaigns,
            queue,
            clients,
        }
    }

    /// All of it.
    pub fn total(&self) -> usize {
        self.dedup + self.counters + self.sketches + self.campaigns + self.queue + self.clients
    }

    /// Each kind with its label.
    pub fn by_kind(&self) -> [(&'static str, usize); 6] {
        [
            ("dedup", self.dedup),
            ("counters", self.counters),
            ("sketches", self.sketches),
            ("campaigns", self.campaigns),
            ("queue", self.queue),
            ("clients", self.clients),
        ]
    }
}

/// The limit, and the check every impression passes before it is queued.
#[derive(Clone, Copy, Debug)]
pub struct MemoryBudget {
    limit: Option<usize>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes; `None`: unlimited.
    pub fn new(limit: Option<usize>) -> Self {
        MemoryBudget { limit }
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Whether `used` bytes reach the limit.
    pub fn is_full(&self, used: usize) -> bool {
        self.limit.is_some_and(|limit| used >= limit)
    }

    /// `Err` with the bytes in use if admitting `impression` would add state
    /// past the limit. Below the limit this is one comparison; at it, the
    /// store is asked whether the impression would count.
    pub fn check(
        &self,
        used: usize,
        store: &dyn Store,
        impression: &Impression,
        now: Timestamp,
    ) -> Result<(), usize> {
        if !self.is_full(used) || !store.would_count(impression, now) {
            return Ok(());
        }
        Err(used)
    }
}

/// Watches the state's size once a second until `stop` (`measure` is
/// called on every tick, also without a limit): logs a warning
/// when it passes 90% of the limit, and again at the limit, and a note when
/// it falls back under 80% (so a size hovering at a threshold does not log
/// every second).
pub fn spawn_watch(
    budget: MemoryBudget,
    measure: impl Fn() -> usize + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let limit = budget.limit();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut level = Level::Normal;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let used = measure();
            let Some(limit) = limit else {
                continue;
            };
            let next = Level::of(used, limit, level);
            if next != level {
                let (used_h, limit_h) = (human(used as u64), human(limit as u64));
                match next {
                    Level::Full => tracing::warn!(
                        used = %used_h, limit = %limit_h,
                        "memory limit reached: impressions that would add state are refused"
                    ),
                    Level::High => tracing::warn!(
                        used = %used_h, limit = %limit_h,
                        "memory use above 90% of MEMORY_LIMIT"
                    ),
                    Level::Normal => tracing::info!(
                        used = %used_h, limit = %limit_h,
                        "memory use back under 80% of MEMORY_LIMIT"
                    ),
                }
                level = next;
            }
        }
    })
}

/// Where the state's size stands against the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Normal,
    High,
    Full,
}

impl Level {
    /// The level at `used` bytes, coming from `from`: up at 90% and 100%,
    /// back to normal only under 80%.
    fn of(used: usize, limit: usize, from: Level) -> Level {
        let percent = used.saturating_mul(100) / limit.max(1);
        match percent {
            100.. => Level::Full,
            90..=99 => Level::High,
            80..=89 if from != Level::Normal => Level::High,
            _ => Level::Normal,
        }
    }
}

/// How the default limit was found, for the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// The process's cgroup limit.
    Cgroup,
    /// The machine's physical memory.
    Physical,
}

/// The memory the process may use: its cgroup's limit if one is set and
/// below physical memory, else physical memory. `None` if neither can be
/// read (not Linux).
pub fn available_memory() -> Option<(u64, MemorySource)> {
    let physical = physical_memory();
    let cgroup = cgroup_limit(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup"));
    match (cgroup, physical) {
        (Some(c), Some(p)) if c < p => Some((c, MemorySource::Cgroup)),
        (Some(c), None) => Some((c, MemorySource::Cgroup)),
        (_, Some(p)) => Some((p, MemorySource::Physical)),
        (None, None) => None,
    }
}

/// The default `MEMORY_LIMIT`: half of [`available_memory`].
pub fn default_limit() -> Option<(u64, MemorySource)> {
    available_memory().map(|(bytes, source)| (bytes / 2, source))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Values at or above this mean "no limit" (cgroup v1 writes a number near
/// 2^63 rounded to pages).
const UNLIMITED: u64 = 1 << 60;

/// The tightest memory limit on the process's cgroup path (limits of
/// ancestors apply too), v2 (`memory.max`) or v1 (`memory.limit_in_bytes`).
fn cgroup_limit(proc_cgroup: &Path, root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_cgroup).ok()?;
    let mut tightest: Option<u64> = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (dir, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        // The cgroup itself and each ancestor up to the hierarchy's root.
        let mut at = Some(Path::new(path.trim_start_matches('/')));
        while let Some(relative) = at {
            let limit = std::fs::read_to_string(dir.join(relative).join(file))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&v| v < UNLIMITED);
            if let Some(limit) = limit {
                tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
            }
            at = relative.parent();
        }
    }
    tightest
}

/// Parses a size: `4GiB`, `512MiB`, `64KiB`, `2G`, `100MB` (K, M, G, T and
/// KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB of 1024), or a bare
/// number of bytes. `0` means no limit to the caller.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => 1000 * 1000 * 1000,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}: expected a size like `4GiB`, `512MiB` or `2G`"
            ));
        }
    };
    let invalid = || format!("{text:?} is not a size like `4GiB`, `512MiB` or `2G`");
    let bytes = if let Some((whole, fraction)) = number.split_once('.') {
        // `1.5GiB`: whole and fraction as exact integers.
        let whole: u64 = whole.parse().map_err(|_| invalid())?;
        let digits = u32::try_from(fraction.len()).map_err(|_| invalid())?;
        let scale = 10u64.checked_pow(digits).ok_or_else(invalid)?;
        let fraction: u64 = fraction.parse().map_err(|_| invalid())?;
        whole
            .checked_mul(factor)
            .and_then(|w| Some(w + fraction.checked_mul(factor)? / scale))
    } else {
        number
            .parse::<u64>()
            .map_err(|_| invalid())?
            .checked_mul(factor)
    };
    bytes.ok_or_else(|| format!("{text:?} is too large"))
}

/// `bytes` for people: `3.2 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    // One decimal from the exact value.
    let divisor = 1u64 << (10 * unit);
    let tenths = bytes.saturating_mul(10) / divisor;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        for (text, bytes) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("512MiB", 512 << 20),
            ("4GiB", 4 << 30),
            ("4 GiB", 4 << 30),
            ("1.5GiB", 3 << 29),
            ("64kib", 64 << 10),
            ("2G", 2_000_000_000),
            ("100MB", 100_000_000),
            ("1T", 1_000_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "GiB",
            "4 parsecs",
            "-1",
            "1..5G",
            "99999999999999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_tightest_cgroup_limit_on_the_path_wins() {
        let root = tempfile::tempdir().unwrap();
        let proc = root.path().join("cgroup");
        // v1: the memory controller at /a/b, limited at /a.
        std::fs::write(&proc, "4:memory:/a/b\n0::/x\n").unwrap();
        let v1 = root.path().join("memory/a/b");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            root.path().join("memory/a/memory.limit_in_bytes"),
            "2147483648\n",
        )
        .unwrap();
        // v2 at /x: no limit ("max").
        std::fs::create_dir_all(root.path().join("x")).unwrap();
        std::fs::write(root.path().join("x/memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit(&proc, root.path()), Some(2 << 30));
        // v2 limited below it.
        std::fs::write(root.path().join("x/memory.max"), "1073741824\n").unwrap();
        assert_eq!(cgroup_limit(&proc, root.path()), Some(1 << 30));
        // Nothing readable: no cgroup limit.
        assert_eq!(cgroup_limit(&root.path().join("none"), root.path()), None);
    }

    #[test]
    fn this_machine_has_some_memory_and_the_default_is_half() {
        if let Some((bytes, _)) = available_memory() {
            assert!(bytes > 0);
            assert_eq!(default_limit().map(|d| d.0), Some(bytes / 2));
        }
    }

    #[test]
    fn the_watch_rises_at_90_and_100_percent_and_settles_under_80() {
        use Level::*;
        let steps = [
            (50, Normal),
            (89, Normal),
            (90, High),
            (85, High),
            (100, Full),
            (95, High),
            (80, High),
            (79, Normal),
        ];
        let mut level = Normal;
        for (used, expect) in steps {
            level = Level::of(used, 100, level);
            assert_eq!(level, expect, "at {used}%");
        }
    }

    #[test]
    fn sizes_read_back_for_people() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
