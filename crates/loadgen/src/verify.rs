//! After the load: did the server count exactly what it acknowledged?
//!
//! The expected totals come from the [`Ledger`](crate::ledger::Ledger) as
//! ranges ([`Expected`]). The server ingests asynchronously (202 means
//! *queued*), so the stats are polled ([`settle`]) until they stop moving:
//! they are accepted once every total is in its range and unchanged for a
//! short while, or given up on once they have been unchanged (out of range)
//! for longer, or at `--verify-timeout`. Then each campaign is compared
//! ([`compare`]): MATCH if every total is in its range.
//!
//! The check assumes the server's TTL is longer than the run (the default is
//! one hour) and that its dedup scope is `--dedup-scope`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::ledger::Expected;

/// When polling stops.
#[derive(Clone, Copy, Debug)]
pub struct SettlePolicy {
    /// Pause between two polls.
    pub poll_every: Duration,
    /// Totals all in range and unchanged this long: done.
    pub stable_in_range: Duration,
    /// Totals unchanged this long, in range or not: done.
    pub stable_any: Duration,
    /// Done regardless.
    pub timeout: Duration,
}

impl SettlePolicy {
    /// The defaults with the given overall timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            poll_every: Duration::from_millis(100),
            stable_in_range: Duration::from_millis(300),
            stable_any: Duration::from_millis(1500),
            timeout,
        }
    }
}

/// The last totals read, and how long it took to get them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// One total per campaign.
    pub totals: Vec<u64>,
    /// Rounds of stats reads.
    pub polls: u32,
    /// From the first read to the last.
    pub waited: Duration,
    /// Stopped by the timeout while totals were still changing.
    pub timed_out: bool,
}

/// Polls `fetch` (all campaigns' totals, in order) until they settle; see
/// the module docs. An error of `fetch` ends the polling.
pub async fn settle<F, Fut, E>(
    expected: &[Expected],
    policy: SettlePolicy,
    mut fetch: F,
) -> Result<Settled, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<u64>, E>>,
{
    let start = Instant::now();
    let mut last: Option<Vec<u64>> = None;
    let mut since = start;
    let mut polls = 0;
    loop {
        let totals = fetch().await?;
        polls += 1;
        let now = Instant::now();
        if last.as_ref() != Some(&totals) {
            last = Some(totals.clone());
            since = now;
        }
        let stable = now - since;
        let in_range = totals.len() == expected.len()
            && totals.iter().zip(expected).all(|(t, e)| e.admits(*t));
        let timed_out = now - start >= policy.timeout;
        if (in_range && stable >= policy.stable_in_range)
            || stable >= policy.stable_any
            || timed_out
        {
            return Ok(Settled {
                totals,
                polls,
                waited: now - start,
                timed_out: timed_out && stable < policy.stable_any,
            });
        }
        tokio::time::sleep(policy.poll_every).await;
    }
}

/// Result of the verification step, as printed and in the JSON summary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// The verdict.
    pub status: Status,
    /// Why it was skipped or failed, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Per-campaign comparison (empty if skipped).
    pub campaigns: Vec<CampaignCheck>,
    /// Rounds of stats reads.
    pub polls: u32,
    /// Time spent waiting for the totals to settle, milliseconds.
    pub waited_ms: u64,
}

/// The verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every total is in its expected range.
    Match,
    /// At least one is not.
    Mismatch,
    /// Not checked (noop target, `--no-verify`).
    Skipped,
    /// The stats could not be read.
    Error,
}

/// One campaign's comparison.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CampaignCheck {
    /// The campaign.
    pub campaign_id: String,
    /// Distinct acknowledged keys.
    pub expected_min: u64,
    /// Plus distinct unknown-outcome keys never acknowledged.
    pub expected_max: u64,
    /// The server's `total`.
    pub actual: u64,
    /// How far outside the range `actual` is: negative if below
    /// `expected_min`, positive if above `expected_max`, 0 if in range.
    pub difference: i64,
}

impl Verification {
    /// A verification that was not performed.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self {
            status: Status::Skipped,
            reason: Some(reason.into()),
            campaigns: Vec::new(),
            polls: 0,
            waited_ms: 0,
        }
    }

    /// A verification that could not read the stats.
    pub fn error(reason: impl Into<String>) -> Self {
        Self {
            status: Status::Error,
            ..Self::skipped(reason)
        }
    }
}

/// Compares the settled totals with the expected ranges.
pub fn compare(ids: &[String], expected: &[Expected], settled: &Settled) -> Verification {
    let campaigns: Vec<CampaignCheck> = ids
        .iter()
        .zip(expected)
        .zip(&settled.totals)
        .map(|((id, e), &actual)| {
            let difference = if actual < e.lo {
                -i64::try_from(e.lo - actual).unwrap_or(i64::MAX)
            } else if actual > e.hi {
                i64::try_from(actual - e.hi).unwrap_or(i64::MAX)
            } else {
                0
            };
            CampaignCheck {
                campaign_id: id.clone(),
                expected_min: e.lo,
                expected_max: e.hi,
                actual,
                difference,
            }
        })
        .collect();
    let ok = campaigns.len() == ids.len() && campaigns.iter().all(|c| c.difference == 0);
    Verification {
        status: if ok { Status::Match } else { Status::Mismatch },
        reason: (!ok && settled.timed_out)
            .then(|| "totals were still changing at --verify-timeout".to_owned()),
        campaigns,
        polls: settled.polls,
        waited_ms: u64::try_from(settled.waited.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::convert::Infallible;

    use super::*;

    fn exact(n: u64) -> Expected {
        Expected { lo: n, hi: n }
    }

    /// A fake stats source replaying `rounds`, repeating the last one.
    fn replay(
        rounds: Vec<Vec<u64>>,
    ) -> impl FnMut() -> std::future::Ready<Result<Vec<u64>, Infallible>> {
        let rounds = RefCell::new(
            rounds
                .into_iter()
                .collect::<std::collections::VecDeque<_>>(),
        );
        move || {
            let mut r = rounds.borrow_mut();
            let next = if r.len() > 1 {
                r.pop_front()
            } else {
                r.front().cloned()
            };
            std::future::ready(Ok(next.unwrap_or_default()))
        }
    }

    // Paused time: the sleeps between polls advance a virtual clock, so
    // these tests do not wait.
    #[tokio::test(start_paused = true)]
    async fn waits_for_ingest_to_catch_up() {
        let expected = [exact(10), exact(5)];
        let policy = SettlePolicy::with_timeout(Duration::from_secs(5));
        let s = settle(
            &expected,
            policy,
            replay(vec![vec![0, 0], vec![4, 2], vec![10, 5]]),
        )
        .await
        .unwrap();
        assert_eq!(s.totals, vec![10, 5]);
        // Two changing rounds, then in range and stable for 300 ms.
        assert_eq!(s.polls, 6);
        assert!(!s.timed_out);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_stable_wrong_totals() {
        let expected = [exact(10)];
        let policy = SettlePolicy::with_timeout(Duration::from_secs(5));
        let s = settle(&expected, policy, replay(vec![vec![9]]))
            .await
            .unwrap();
        assert_eq!(s.totals, vec![9]);
        assert_eq!(s.waited, Duration::from_millis(1500));
        assert!(!s.timed_out, "stable, not still moving");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_timeout_when_totals_keep_moving() {
        let expected = [exact(1000)];
        let policy = SettlePolicy::with_timeout(Duration::from_secs(1));
        let rounds = (0..100).map(|i| vec![i]).collect();
        let s = settle(&expected, policy, replay(rounds)).await.unwrap();
        assert!(s.timed_out);
        assert_eq!(s.waited, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_errors_end_polling() {
        let policy = SettlePolicy::with_timeout(Duration::from_secs(1));
        let r = settle(&[exact(1)], policy, || async { Err::<Vec<u64>, _>("down") }).await;
        assert_eq!(r, Err("down"));
    }

    #[test]
    fn compare_reports_differences_outside_the_range() {
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let expected = [exact(10), Expected { lo: 5, hi: 7 }, exact(3)];
        let settled = |totals: Vec<u64>| Settled {
            totals,
            polls: 3,
            waited: Duration::from_millis(250),
            timed_out: false,
        };
        let v = compare(&ids, &expected, &settled(vec![10, 6, 3]));
        assert_eq!(v.status, Status::Match);
        assert!(v.campaigns.iter().all(|c| c.difference == 0));
        assert_eq!(v.waited_ms, 250);

        let v = compare(&ids, &expected, &settled(vec![8, 9, 3]));
        assert_eq!(v.status, Status::Mismatch);
        let diffs: Vec<i64> = v.campaigns.iter().map(|c| c.difference).collect();
        assert_eq!(diffs, vec![-2, 2, 0]);
        assert_eq!(v.campaigns[1].expected_min, 5);
        assert_eq!(v.campaigns[1].expected_max, 7);
        assert_eq!(v.campaigns[1].actual, 9);
    }
}
