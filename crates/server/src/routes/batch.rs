//! `POST /api/v1/impressions/batch`: many impressions in one request.
//!
//! The body is a JSON array of track requests (`application/json`) or one
//! object per line (`application/x-ndjson`). Items are validated one by one:
//! valid ones are queued together as one job, invalid ones are reported with
//! their index, status code and reason; the batch is not all-or-nothing.
//! A body that cannot be read as a batch at all is a 400; one over the item
//! or byte limit is a 413.
//!
//! A batch costs far less per impression than single requests: one HTTP
//! exchange, one campaign lookup per campaign, one queue job, and the engine
//! takes each lock once per run of the batch.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use impression_core::{Impression, Timestamp, TrackOutcome};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};

use super::AppState;
use super::admission::{Admission, EventTime, enqueue, rate_limit, reject_reason, rejection_error};
use super::impressions::{TrackImpressionRequest, TrackParams};
use crate::bulk::{self, Bulk};
use crate::error::{ApiError, ApiQuery, ErrorBody};
use crate::paths;

/// One refused item of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RejectedItem {
    /// Position in the batch (array index, or item number among the
    /// non-empty NDJSON lines), from 0.
    pub index: usize,
    /// Why it was refused.
    pub error: String,
    /// The status a single request would have got: 400, 404 or 409.
    pub code: u16,
}

/// Answer when the batch was validated and queued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchAccepted {
    /// Items queued for counting.
    pub accepted: usize,
    /// Items refused, with the reason.
    pub rejected: Vec<RejectedItem>,
}

/// Answer with `?wait=true`, once every accepted item was processed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchProcessed {
    /// Items counted.
    pub counted: usize,
    /// Items found to be duplicates within the TTL.
    pub duplicates: usize,
    /// Items refused, with the reason.
    pub rejected: Vec<RejectedItem>,
}

/// A batch as a JSON array, for the API description: 1..=10,000 track
/// requests (`BATCH_MAX_ITEMS`). Written by hand because the derive cannot
/// bound the length of a newtype's array.
pub struct BatchArray;

impl utoipa::PartialSchema for BatchArray {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .description(Some(
                "1..=10,000 track requests. Items are checked one by one: an invalid \
                 item does not fail the request, it is listed in `rejected`.",
            ))
            .items(Ref::from_schema_name(TrackImpressionRequest::name()))
            .min_items(Some(1))
            .max_items(Some(10_000))
            .into()
    }
}

impl ToSchema for BatchArray {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            TrackImpressionRequest::name().into_owned(),
            <TrackImpressionRequest as utoipa::PartialSchema>::schema(),
        ));
        TrackImpressionRequest::schemas(schemas);
    }
}

/// A batch as NDJSON, for the API description: one track request (a JSON
/// object) per line; blank lines are skipped.
#[derive(ToSchema)]
#[schema(pattern = r"\S")]
pub struct BatchNdjson(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    JsonArray,
    Ndjson,
}

/// Tracks a batch of impressions.
#[utoipa::path(
    post,
    path = paths::TRACK_BATCH,
    tag = "impressions",
    params(TrackParams),
    request_body(
        description = "A JSON array of track requests, or NDJSON (one per line)",
        content(
            (BatchArray = "application/json"),
            (BatchNdjson = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 202, description = "Validated; valid items queued, invalid ones listed", body = BatchAccepted),
        (status = 200, description = "With wait=true: processed", body = BatchProcessed),
        (status = 400, description = "Not a batch at all (not an array, not NDJSON, empty)", body = ErrorBody),
        (status = 413, description = "Over the item limit (10,000) or the byte limit (8 MiB)", body = ErrorBody),
        (status = 415, description = "Content-Type is neither application/json nor application/x-ndjson", body = ErrorBody),
        (status = 429, description = "Over RATE_LIMIT_PER_CLIENT; see Retry-After",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "Queue full, storage unavailable or MEMORY_LIMIT reached; see Retry-After",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn track_batch(
    State(app): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiQuery(params): ApiQuery<TrackParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received_at = app.clock.now();
    let format = format_of(&headers)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "the batch body is over {} bytes; split it into smaller requests",
            app.settings.batch_max_bytes
        )),
        _ => ApiError::BadRequest(rejection.body_text()),
    })?;
    // A large body is parsed on a bulk thread: thousands of items of CPU
    // work that would otherwise hold up the requests queued behind it.
    let Admitted {
        valid,
        valid_index,
        mut rejected,
    } = bulk::run_async(
        Bulk::Parse,
        bulk::is_large_body(body.len()),
        admit_all(&app, &body, format, received_at),
    )
    .await?;

    let accepted = valid.len();
    // The client is charged for what it would have queued.
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    rate_limit(&app, peer, &headers, accepted, received_at).inspect_err(|e| {
        app.metrics
            .impression_rejected_many(reject_reason(e), accepted);
    })?;
    let campaign_of: Vec<_> = valid.iter().map(|i| i.campaign_id).collect();
    let outcomes = if valid.is_empty() {
        params.wait.then(Vec::new)
    } else {
        enqueue(&app, valid, params.wait).await.inspect_err(|e| {
            app.metrics
                .impression_rejected_many(reject_reason(e), accepted);
        })?
    };
    match outcomes {
        Some(outcomes) if params.wait => {
            let (mut counted, mut duplicates) = (0, 0);
            for (i, outcome) in outcomes.into_iter().enumerate() {
                match outcome {
                    TrackOutcome::Counted => counted += 1,
                    TrackOutcome::Duplicate => duplicates += 1,
                    TrackOutcome::Rejected(r) => {
                        let e = rejection_error(r, campaign_of[i]);
                        rejected.push(RejectedItem {
                            index: valid_index[i],
                            code: e.status().as_u16(),
                            error: e.to_string(),
                        });
                    }
                }
            }
            rejected.sort_by_key(|r| r.index);
            let body = BatchProcessed {
                counted,
                duplicates,
                rejected,
            };
            Ok((StatusCode::OK, Json(body)).into_response())
        }
        _ => {
            let body = BatchAccepted { accepted, rejected };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
    }
}

/// A batch's items, admitted or refused.
struct Admitted {
    valid: Vec<Impression>,
    /// The batch index of each valid impression.
    valid_index: Vec<usize>,
    rejected: Vec<RejectedItem>,
}

/// Splits and parses the body and admits its items one by one.
async fn admit_all(
    app: &AppState,
    body: &[u8],
    format: Format,
    received_at: Timestamp,
) -> Result<Admitted, ApiError> {
    let items = split_raw(body, format)?;
    let max = app.settings.batch_max_items;
    if items.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch holds {} impressions; at most {max} per request",
            items.len()
        )));
    }
    if items.is_empty() {
        return Err(ApiError::BadRequest(
            "the batch holds no impressions".into(),
        ));
    }

    let mut admission = Admission::new(app, received_at);
    let mut admitted = Admitted {
        valid: Vec::with_capacity(items.len()),
        valid_index: Vec::with_capacity(items.len()),
        rejected: Vec::new(),
    };
    for (index, raw) in items.into_iter().enumerate() {
        // A large batch is parsed on a bulk thread, but any batch may be
        // large in items: give the thread back now and then.
        if index % 256 == 255 {
            tokio::task::yield_now().await;
        }
        app.metrics.impression_received();
        let result = match parse_item(index, raw) {
            Ok(req) => {
                admission
                    .admit(
                        &req.campaign_id,
                        req.ad_id,
                        req.user_id,
                        req.timestamp.as_deref().map(EventTime::Rfc3339),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(impression) => {
                admitted.valid.push(impression);
                admitted.valid_index.push(index);
            }
            Err(e) => {
                app.metrics.impression_rejected(reject_reason(&e));
                admitted.rejected.push(RejectedItem {
                    index,
                    code: e.status().as_u16(),
                    error: e.to_string(),
                });
            }
        }
    }
    Ok(admitted)
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::JsonArray),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        _ => Err(ApiError::UnsupportedMediaType(
            "a batch must be `Content-Type: application/json` (an array of impressions) \
             or `application/x-ndjson` (one impression per line)"
                .into(),
        )),
    }
}

/// Splits the body into items, each parsed on its own so one bad item does
/// not sink the others: what the handler does item by item while it admits
/// them, all at once (for the fuzz target and the unit tests).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn split_items(
    body: &[u8],
    format: Format,
) -> Result<Vec<Result<TrackImpressionRequest, ApiError>>, ApiError> {
    Ok(split_raw(body, format)?
        .into_iter()
        .enumerate()
        .map(|(i, raw)| parse_item(i, raw))
        .collect())
}

/// The body's items as raw bytes, not yet parsed: a JSON array is checked
/// and split (raw values borrow from the body, no tree of every item is
/// built), NDJSON is split into its non-blank lines.
fn split_raw(body: &[u8], format: Format) -> Result<Vec<&[u8]>, ApiError> {
    match format {
        Format::JsonArray => {
            let raw: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
                ApiError::BadRequest(format!("the body must be a JSON array of impressions: {e}"))
            })?;
            Ok(raw.iter().map(|r| r.get().as_bytes()).collect())
        }
        Format::Ndjson => Ok(body
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|line| !line.is_empty())
            .collect()),
    }
}

/// Parses item `index` of a batch.
fn parse_item(index: usize, raw: &[u8]) -> Result<TrackImpressionRequest, ApiError> {
    serde_json::from_slice::<TrackImpressionRequest>(raw)
        .map_err(|e| ApiError::BadRequest(format!("item {index}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_skips_blank_lines_and_reports_broken_ones_by_item_number() {
        let body = b"{\"campaign_id\":\"c\",\"user_id\":\"u\",\"ad_id\":\"a\"}\r\n\n{broken\n  \n{\"campaign_id\":\"c\",\"user_id\":\"u2\",\"ad_id\":\"a\"}\n";
        let items = split_items(body, Format::Ndjson).unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[2].is_ok());
        let err = items[1].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("item 1:"), "{err}");
    }

    #[test]
    fn a_json_body_that_is_not_an_array_is_refused_whole() {
        for body in [&b"{\"campaign_id\":\"c\"}"[..], b"[1, 2", b"", b"null"] {
            let err = split_items(body, Format::JsonArray).unwrap_err();
            assert!(
                err.to_string().starts_with("the body must be a JSON array"),
                "{err}"
            );
        }
        let items = split_items(
            b"[1, {\"campaign_id\":\"c\",\"user_id\":\"u\",\"ad_id\":\"a\"}]",
            Format::JsonArray,
        )
        .unwrap();
        assert!(items[0].is_err() && items[1].is_ok());
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(format_of(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(format_of(&h).unwrap(), Format::JsonArray);
        h.insert(
            header::CONTENT_TYPE,
            "Application/X-NDJSON".parse().unwrap(),
        );
        assert_eq!(format_of(&h).unwrap(), Format::Ndjson);
        h.insert(header::CONTENT_TYPE, "text/csv".parse().unwrap());
        assert!(format_of(&h).is_err());
    }
}
