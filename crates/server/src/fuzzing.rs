//! Entry points for the fuzz targets in `fuzz/` (`scripts/fuzz.sh`): every
//! parser the service owns, reachable without making the modules that hold
//! them public. Not an API: hidden from the docs and free to change.

use axum::http::HeaderMap;

use crate::error::ApiError;
use crate::routes::batch::{Format, split_items};
use crate::routes::impressions::TrackImpressionRequest;

pub use crate::routes::admission::EventTime;
pub use crate::storage::disk::frame::{Ending, FrameReader, ReadError, encode_frame};
pub use crate::storage::disk::record::{
    Counted, LogRecord, SnapshotSection, begin_counted, decode_log, decode_section,
    encode_campaign, encode_section, push_counted,
};
pub use crate::timefmt::parse_duration;
pub use crate::timefmt::{format_rfc3339, parse_rfc3339};

/// Splits a batch body as `POST /api/v1/impressions/batch` does: a JSON
/// array, or NDJSON when `ndjson`. Outer error: the whole body is refused;
/// inner errors: one item is.
pub fn split_batch(
    body: &[u8],
    ndjson: bool,
) -> Result<Vec<Result<TrackImpressionRequest, ApiError>>, ApiError> {
    let format = if ndjson {
        Format::Ndjson
    } else {
        Format::JsonArray
    };
    split_items(body, format)
}

/// The value of cookie `name` in `headers`, as the tracking pixel reads it.
pub fn pixel_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    crate::routes::pixel::cookie(headers, name)
}
