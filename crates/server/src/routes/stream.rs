//! `GET /api/v1/campaigns/{id}/stats/stream`: a campaign's stats as
//! Server-Sent Events, what the dashboard's live pages read.
//!
//! One `stats` event on connect and one a second after it, each the JSON of
//! `GET .../stats` (with `by=ad`, of `stats?by=ad`). Behind the same API keys
//! as stats. If the campaign's counts cannot be read for a moment (a Redis
//! failover), the stream sends an `error` event with the usual error JSON
//! and carries on; clients need not reconnect.
//!
//! **Bounded.** At most `MAX_STREAMS` streams are open at once
//! ([`StreamSlots`]); a stream over it is refused with the JSON 503 before it
//! starts, so an open dashboard can never starve the API of memory or tasks.
//! A stream costs one task-less body (polled by its connection) and one
//! stats read a second.
//!
//! **Shutdown.** Every stream ends as soon as shutdown begins
//! ([`AppState::begin_shutdown`]), so graceful shutdown finishes requests in
//! flight without waiting for streams that would never end. The edge keeps a
//! streaming connection marked busy (see [`crate::paths::Route::streaming`]),
//! so the idle timeout does not cut a stream either.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::stats::{StatsBody, StatsParams, stats_body};
use super::{AppState, parse_campaign_id};
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::paths;

/// How often a stream sends the stats.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the live streams (`MAX_STREAMS`).
#[derive(Clone, Copy, Debug)]
pub struct StreamSettings {
    /// Most streams open at once.
    pub max_streams: usize,
}

/// The open streams: one permit each, given back when the stream's body is
/// dropped (the client went away, or the stream ended).
#[derive(Debug)]
pub struct StreamSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

impl StreamSlots {
    /// Room for `max` streams.
    pub fn new(max: usize) -> Self {
        StreamSlots {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    fn take(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            ApiError::Unavailable(format!(
                "{} stats streams are open, the most allowed (MAX_STREAMS); retry shortly",
                self.max
            ))
        })
    }
}

/// Streams a campaign's stats: one `stats` event now and one a second.
#[utoipa::path(
    get,
    path = paths::CAMPAIGN_STATS_STREAM,
    tag = "stats",
    params(("id" = String, Path, format = Uuid, description = "Campaign id (UUID)"), StatsParams),
    responses(
        (status = 200, description = "`text/event-stream`: an event `stats` on connect and every \
            second, its data the JSON of `GET /api/v1/campaigns/{id}/stats` (with `by=ad`, the \
            breakdown); an event `error` (data: the error JSON) when a read fails, the stream \
            going on. Ends when the server shuts down.",
            content_type = "text/event-stream", body = StatsBody),
        (status = 400, description = "The id is not a UUID, `by` is not `ad`, or `format` is not `json`", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = "`MAX_STREAMS` streams are open, the service is shutting \
            down, or the storage is unavailable", body = ErrorBody),
    )
)]
pub async fn stats_stream(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<StatsParams>,
) -> Result<Response, ApiError> {
    let id = parse_campaign_id(&id)?;
    if params.format.as_deref().is_some_and(|f| f != "json") {
        return Err(ApiError::BadRequest(
            "a stream's events are JSON: format must be `json`".into(),
        ));
    }
    if app.is_shutting_down() {
        return Err(ApiError::Unavailable("the service is shutting down".into()));
    }
    let slot = app.streams.take()?;
    // The first event is read before answering, so an unknown campaign or
    // a bad `by` is a plain JSON error, not a stream that fails at once.
    let by = params.by;
    let first = stats_body(&app, id, by.as_deref()).await?;
    let ticks = Ticks {
        app,
        id,
        by,
        first: Some(first),
        next: Instant::now() + STREAM_INTERVAL,
        _slot: slot,
    };
    let events = stream::unfold(ticks, Ticks::next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A stream's state between events.
struct Ticks {
    app: AppState,
    id: impression_core::CampaignId,
    by: Option<String>,
    /// The event read before the answer, sent first.
    first: Option<StatsBody>,
    next: Instant,
    _slot: OwnedSemaphorePermit,
}

impl Ticks {
    /// The next event, waiting for its second; `None` once shutdown began.
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(stats_event(&first)), self));
        }
        tokio::select! {
            biased;
            () = self.app.shutdown_begun() => return None,
            () = tokio::time::sleep_until(self.next) => {}
        }
        // A second after the last event's time, never in the past: a slow
        // read delays the following events rather than bunching them up.
        self.next = (self.next + STREAM_INTERVAL).max(Instant::now());
        let event = match stats_body(&self.app, self.id, self.by.as_deref()).await {
            Ok(body) => stats_event(&body),
            Err(error) => {
                let body = ErrorBody {
                    error: error.to_string(),
                    code: error.status().as_u16(),
                };
                Event::default()
                    .event("error")
                    .json_data(&body)
                    .unwrap_or_default()
            }
        };
        Some((Ok(event), self))
    }
}

fn stats_event(body: &StatsBody) -> Event {
    Event::default()
        .event("stats")
        .json_data(body)
        .unwrap_or_default()
}
