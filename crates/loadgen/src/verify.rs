//! After the load: did the server count exactly what it acknowledged?
//!
//! The expected totals come from the [`Ledger`](crate::ledger::Ledger) as
//! ranges ([`Expected`]). The server ingests asynchronously (202 means
//! *queued*), so the stats are polled ([`settle`]) until they stop moving:
//! they are accepted once every total is in its range and unchanged for a
//! short while, or given up on once they have been unchanged (out of range)
//! for longer, or at `--verify-timeout`. Then each campaign is compared
//! ([`compare`]): MATCH if every total is in its range and every campaign's
//! `unique_users.total` is within the stated error of its expected range
//! ([`users_admit`]).
//!
//! The check assumes the server's TTL is longer than the run (the default is
//! one hour) and that its dedup scope is `--dedup-scope`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::Counts;
use crate::ledger::Expected;

/// The server counts up to this many users per sketch exactly.
pub const EXACT_USERS: u64 = 128;

/// Relative error allowed beyond [`EXACT_USERS`]: the HLL's standard error
/// is 0.81%, so 3% is 3.7 standard errors (about 2 runs in 10,000 outside
/// by chance).
pub const USERS_TOLERANCE: f64 = 0.03;

/// Whether `actual` unique users can be the server's count of an audience
/// in `expected`: exactly in range at or below [`EXACT_USERS`], within
/// [`USERS_TOLERANCE`] of it above.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "user counts far below 2^52; the bounds are rounded outwards on purpose"
)]
pub fn users_admit(expected: Expected, actual: u64) -> bool {
    let lo = if expected.lo <= EXACT_USERS {
        expected.lo
    } else {
        (expected.lo as f64 * (1.0 - USERS_TOLERANCE)).floor() as u64
    };
    let hi = if expected.hi <= EXACT_USERS {
        expected.hi
    } else {
        (expected.hi as f64 * (1.0 + USERS_TOLERANCE)).ceil() as u64
    };
    (lo..=hi).contains(&actual)
}

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
    /// One unique-user total per campaign.
    pub users: Vec<u64>,
    /// Rounds of stats reads.
    pub polls: u32,
    /// From the first read to the last.
    pub waited: Duration,
    /// Stopped by the timeout while totals were still changing.
    pub timed_out: bool,
}

/// Polls `fetch` (all campaigns' counts, in order) until they settle; see
/// the module docs. An error of `fetch` ends the polling.
pub async fn settle<F, Fut, E>(
    expected: &[Expected],
    policy: SettlePolicy,
    mut fetch: F,
) -> Result<Settled, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<Counts>, E>>,
{
    let start = Instant::now();
    let mut last: Option<Vec<Counts>> = None;
    let mut since = start;
    let mut polls = 0;
    loop {
        let counts = fetch().await?;
        polls += 1;
        let now = Instant::now();
        if last.as_ref() != Some(&counts) {
            last = Some(counts.clone());
            since = now;
        }
        let stable = now - since;
        let in_range = counts.len() == expected.len()
            && counts.iter().zip(expected).all(|(c, e)| e.admits(c.total));
        let timed_out = now - start >= policy.timeout;
        if (in_range && stable >= policy.stable_in_range)
            || stable >= policy.stable_any
            || timed_out
        {
            return Ok(Settled {
                totals: counts.iter().map(|c| c.total).collect(),
                users: counts.iter().map(|c| c.users).collect(),
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
    /// Distinct users among the acknowledged impressions.
    pub users_expected_min: u64,
    /// Plus users seen only in unknown-outcome impressions.
    pub users_expected_max: u64,
    /// The server's `unique_users.total`.
    pub users_actual: u64,
    /// Whether `users_actual` is within the stated error ([`users_admit`]).
    pub users_ok: bool,
}

impl CampaignCheck {
    /// Both the total and the unique users are right.
    pub fn ok(&self) -> bool {
        self.difference == 0 && self.users_ok
    }
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

/// Compares the settled totals and unique users with the expected ranges.
pub fn compare(
    ids: &[String],
    expected: &[Expected],
    expected_users: &[Expected],
    settled: &Settled,
) -> Verification {
    let campaigns: Vec<CampaignCheck> = ids
        .iter()
        .zip(expected)
        .zip(&settled.totals)
        .zip(expected_users.iter().zip(&settled.users))
        .map(|(((id, e), &actual), (&users, &users_actual))| {
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
                users_expected_min: users.lo,
                users_expected_max: users.hi,
                users_actual,
                users_ok: users_admit(users, users_actual),
            }
        })
        .collect();
    let ok = campaigns.len() == ids.len() && campaigns.iter().all(CampaignCheck::ok);
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

    /// A fake stats source replaying `rounds` of totals (each impression
    /// by another user), repeating the last one.
    fn replay(
        rounds: Vec<Vec<u64>>,
    ) -> impl FnMut() -> std::future::Ready<Result<Vec<Counts>, Infallible>> {
        let rounds = RefCell::new(
            rounds
                .into_iter()
                .map(|totals| {
                    totals
                        .into_iter()
                        .map(|total| Counts {
                            total,
                            users: total,
                        })
                        .collect::<Vec<_>>()
                })
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
        let r = settle(&[exact(1)], policy, || async {
            Err::<Vec<Counts>, _>("down")
        })
        .await;
        assert_eq!(r, Err("down"));
    }

    #[test]
    fn users_admit_exactly_when_small_and_within_three_percent_when_large() {
        assert!(users_admit(exact(128), 128));
        assert!(!users_admit(exact(128), 127) && !users_admit(exact(128), 129));
        assert!(users_admit(exact(10_000), 9_700) && users_admit(exact(10_000), 10_300));
        assert!(!users_admit(exact(10_000), 9_699) && !users_admit(exact(10_000), 10_301));
        // A range straddling the threshold: exact below, tolerant above.
        let e = Expected { lo: 100, hi: 200 };
        assert!(!users_admit(e, 99) && users_admit(e, 100) && users_admit(e, 206));
    }

    #[test]
    fn compare_reports_differences_outside_the_range() {
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let expected = [exact(10), Expected { lo: 5, hi: 7 }, exact(3)];
        let users = [exact(4), exact(1_000), Expected { lo: 0, hi: 3 }];
        let settled = |totals: Vec<u64>, users: Vec<u64>| Settled {
            totals,
            users,
            polls: 3,
            waited: Duration::from_millis(250),
            timed_out: false,
        };
        let v = compare(
            &ids,
            &expected,
            &users,
            &settled(vec![10, 6, 3], vec![4, 1_012, 2]),
        );
        assert_eq!(v.status, Status::Match);
        assert!(v.campaigns.iter().all(CampaignCheck::ok));
        assert_eq!(v.waited_ms, 250);

        // Small audiences are exact; large ones within 3%.
        for wrong in [vec![5, 1_000, 2], vec![4, 1_031, 2], vec![4, 969, 2]] {
            let v = compare(
                &ids,
                &expected,
                &users,
                &settled(vec![10, 6, 3], wrong.clone()),
            );
            assert_eq!(v.status, Status::Mismatch, "{wrong:?}");
            assert!(v.campaigns.iter().all(|c| c.difference == 0));
        }

        let v = compare(
            &ids,
            &expected,
            &users,
            &settled(vec![8, 9, 3], vec![4, 1_000, 2]),
        );
        assert_eq!(v.status, Status::Mismatch);
        let diffs: Vec<i64> = v.campaigns.iter().map(|c| c.difference).collect();
        assert_eq!(diffs, vec![-2, 2, 0]);
        assert_eq!(v.campaigns[1].expected_min, 5);
        assert_eq!(v.campaigns[1].expected_max, 7);
        assert_eq!(v.campaigns[1].actual, 9);
    }
}
