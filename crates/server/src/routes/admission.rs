//! Admission: the rules every track endpoint (single, batch, pixel) applies
//! before an impression is queued, and the queueing itself.
//!
//! An impression is admitted when its ids are valid, its campaign exists,
//! its event time (or, if absent, its receive time) lies within
//! `[received - MAX_EVENT_AGE, received + MAX_CLOCK_SKEW]`, and the campaign
//! had started by then. Everything here is decided synchronously, so the
//! client learns of a bad impression in the response, never later.

use std::cell::RefCell;
use std::net::IpAddr;

use axum::http::HeaderMap;

use impression_core::{
    AdId, Campaign, CampaignId, Impression, Rejection, Timestamp, TrackOutcome, UserId,
};
use tokio::sync::oneshot;

use super::AppState;
use crate::budget;
use crate::error::ApiError;
use crate::metrics::{IdSource, RejectReason};
use crate::timefmt::{format_rfc3339, parse_rfc3339};

/// An event time as a client may send it.
#[derive(Clone, Copy, Debug)]
pub enum EventTime<'a> {
    /// RFC 3339 text (JSON bodies, and the pixel's `ts`).
    Rfc3339(&'a str),
    /// The pixel's `ts` may also be Unix milliseconds.
    RfcOrUnixMillis(&'a str),
}

impl EventTime<'_> {
    /// The time the text gives, not yet checked against the accepted range.
    pub fn parse(self) -> Result<Timestamp, ApiError> {
        match self {
            EventTime::Rfc3339(text) => parse_rfc3339("timestamp", text),
            EventTime::RfcOrUnixMillis(text) => match text.parse::<u64>() {
                Ok(ms) => Ok(Timestamp::from_millis(ms)),
                Err(_) => parse_rfc3339("ts", text).map_err(|_| {
                    ApiError::BadRequest(
                        "ts must be Unix milliseconds or an RFC 3339 timestamp".into(),
                    )
                }),
            },
        }
    }
}

/// Admits the impressions of one request. Campaign lookups are cached for
/// the request, so a batch of 10,000 for one campaign looks it up once.
pub struct Admission<'a> {
    app: &'a AppState,
    received_at: Timestamp,
}

thread_local! {
    /// Start times of the campaigns this thread has seen, per application
    /// (tests run many in one process). Campaigns are immutable and never
    /// deleted, so an entry never goes stale; unknown ids are not cached, as
    /// another node may create the campaign a moment later. Per thread, so a
    /// track request takes no lock and touches no shared cache line to find
    /// its campaign; bounded by `MAX_CAMPAIGNS` per thread. hashbrown's
    /// default hasher (foldhash): the keys are ours, not attacker-chosen
    /// (only ids of existing campaigns are inserted), and SipHash was a
    /// visible share of the lookup.
    static STARTS: RefCell<hashbrown::HashMap<(u64, CampaignId), Timestamp>> =
        RefCell::new(hashbrown::HashMap::new());
}

impl<'a> Admission<'a> {
    /// Admission for a request received at `received_at`.
    pub fn new(app: &'a AppState, received_at: Timestamp) -> Self {
        Admission { app, received_at }
    }

    /// Validates one impression and stamps it with its event time.
    pub async fn admit(
        &mut self,
        campaign_id: &str,
        ad_id: String,
        user_id: String,
        timestamp: Option<EventTime<'_>>,
    ) -> Result<Impression, ApiError> {
        let campaign_id: CampaignId = campaign_id.parse()?;
        let max = self.app.settings.max_id_bytes;
        for (field, id) in [("ad_id", &ad_id), ("user_id", &user_id)] {
            if id.len() > max {
                return Err(ApiError::BadRequest(format!(
                    "{field} must be at most {max} bytes, got {} (MAX_ID_BYTES)",
                    id.len()
                )));
            }
        }
        let ad_id = AdId::parse(ad_id)?;
        let user_id = UserId::parse(user_id)?;
        let timestamp = match timestamp {
            None => self.received_at,
            Some(t) => self.event_time(t)?,
        };
        let start = self.campaign_start(campaign_id).await?;
        if timestamp < start {
            return Err(ApiError::CampaignNotStarted {
                id: campaign_id,
                starts: Some(format_rfc3339(start)),
            });
        }
        let impression = Impression {
            campaign_id,
            ad_id,
            user_id,
            timestamp,
        };
        self.check_key_capacity(&impression)?;
        self.check_memory(&impression)?;
        Ok(impression)
    }

    /// With `MAX_DEDUP_KEYS` reached, an impression that would add a key is
    /// refused (503) here, before it is acknowledged; one whose key is live
    /// adds nothing and goes through. Queued impressions can add at most
    /// `IMPRESSIONS_QUEUE_SIZE` keys past the limit, so memory stays bounded
    /// and nothing accepted is ever dropped.
    /// At the memory limit (`MEMORY_LIMIT`) an impression that would count
    /// (and so add state) is refused (503) here, before it is acknowledged;
    /// a duplicate adds nothing and goes through. See [`crate::budget`].
    fn check_memory(&self, impression: &Impression) -> Result<(), ApiError> {
        let budget = self.app.settings.budget;
        let Some(limit) = budget.limit() else {
            return Ok(());
        };
        let used = self.app.state_bytes().total();
        budget
            .check(used, &*self.app.store, impression, self.received_at)
            .map_err(|used| {
                ApiError::MemoryLimit(format!(
                    "the memory limit is reached ({} of {}, MEMORY_LIMIT): impressions that \
                     would add state are refused until older state expires",
                    budget::human(used as u64),
                    budget::human(limit as u64)
                ))
            })
    }

    fn check_key_capacity(&self, impression: &Impression) -> Result<(), ApiError> {
        let Some(max) = self.app.settings.max_dedup_keys else {
            return Ok(());
        };
        let Some(live) = self.app.store.live_keys_estimate() else {
            return Ok(());
        };
        if live < max || self.app.store.is_live_key(impression, self.received_at) {
            return Ok(());
        }
        Err(ApiError::Unavailable(format!(
            "the duplicate-detection index holds {live} keys, its limit (MAX_DEDUP_KEYS); \
             impressions of new users are refused until keys expire"
        )))
    }

    async fn campaign_start(&self, id: CampaignId) -> Result<Timestamp, ApiError> {
        let key = (self.app.id(), id);
        if let Some(start) = STARTS.with(|s| s.borrow().get(&key).copied()) {
            return Ok(start);
        }
        let campaign = self
            .app
            .store
            .campaign(id)
            .await?
            .ok_or(ApiError::CampaignNotFound(id))?;
        STARTS.with(|s| s.borrow_mut().insert(key, campaign.start_time));
        Ok(campaign.start_time)
    }

    fn event_time(&self, t: EventTime<'_>) -> Result<Timestamp, ApiError> {
        let t = t.parse()?;
        let settings = &self.app.settings;
        let earliest = self.received_at.saturating_sub(settings.max_event_age);
        let latest = self.received_at.saturating_add(settings.max_clock_skew);
        if t < earliest || t > latest {
            return Err(ApiError::BadRequest(format!(
                "timestamp {} is outside the accepted range {} ..= {}: events may be at most \
                 {} old (MAX_EVENT_AGE) and {} ahead of the server clock (MAX_CLOCK_SKEW)",
                format_rfc3339(t),
                format_rfc3339(earliest),
                format_rfc3339(latest),
                humantime::format_duration(settings.max_event_age),
                humantime::format_duration(settings.max_clock_skew),
            )));
        }
        Ok(t)
    }
}

/// The 409 for an impression before its campaign's start.
pub fn not_started(campaign: &Campaign) -> ApiError {
    ApiError::CampaignNotStarted {
        id: campaign.id,
        starts: Some(format_rfc3339(campaign.start_time)),
    }
}

/// The error for an impression the store refused at apply time. Admission
/// rules these out (campaigns are immutable and never deleted), but every
/// outcome must have an answer.
pub fn rejection_error(rejection: Rejection, id: CampaignId) -> ApiError {
    match rejection {
        Rejection::UnknownCampaign => ApiError::CampaignNotFound(id),
        Rejection::NotStarted => ApiError::CampaignNotStarted { id, starts: None },
    }
}

/// The rejection reason a metrics label gives an error.
pub fn reject_reason(e: &ApiError) -> RejectReason {
    match e {
        ApiError::CampaignNotFound(_) => RejectReason::UnknownCampaign,
        ApiError::CampaignNotStarted { .. } => RejectReason::NotStarted,
        ApiError::QueueFull => RejectReason::QueueFull,
        ApiError::MemoryLimit(_) => RejectReason::MemoryLimit,
        ApiError::TooManyRequests { .. } => RejectReason::RateLimited,
        ApiError::Unavailable(_) | ApiError::Internal(_) => RejectReason::Unavailable,
        _ => RejectReason::Invalid,
    }
}

/// Queues admitted impressions. Returns their outcomes when the caller asked
/// to wait or the backend acknowledges only after writing, `None` otherwise
/// (queued is enough).
pub async fn enqueue(
    app: &AppState,
    impressions: Vec<Impression>,
    wait: bool,
) -> Result<Option<Vec<TrackOutcome>>, ApiError> {
    enqueue_from(app, impressions, wait, IdSource::Body).await
}

/// [`enqueue`], for impressions whose user ids came from `source`.
pub async fn enqueue_from(
    app: &AppState,
    impressions: Vec<Impression>,
    wait: bool,
    source: IdSource,
) -> Result<Option<Vec<TrackOutcome>>, ApiError> {
    if !(wait || app.store.acknowledges_after_apply()) {
        app.queue.submit_from(impressions, None, source).await?;
        return Ok(None);
    }
    let (completion, processed) = oneshot::channel();
    app.queue
        .submit_from(impressions, Some(completion), source)
        .await?;
    let outcomes = processed
        .await
        .map_err(|_| ApiError::Unavailable("the service stopped before processing".into()))??;
    Ok(Some(outcomes))
}

/// `RATE_LIMIT_PER_CLIENT`: admits `n` impressions of the client of a
/// request from `peer` with `headers` at `now`, or answers 429 with when to
/// retry. Nothing to do without a limit, or without a peer (a request that
/// did not come through the server, as in router tests).
pub fn rate_limit(
    app: &AppState,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    n: usize,
    now: Timestamp,
) -> Result<(), ApiError> {
    let (Some(limiter), Some(peer)) = (&app.rate_limiter, peer) else {
        return Ok(());
    };
    let client = app.settings.client_addr.client_ip(peer, headers);
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    limiter.check(client, n, now).map_err(|wait| {
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::TooManyRequests {
            message: format!(
                "too many impressions from {client}: at most {} per second \
                 (RATE_LIMIT_PER_CLIENT); retry in {retry_after} s",
                limiter.per_second()
            ),
            retry_after: retry_after.max(1),
        }
    })
}
