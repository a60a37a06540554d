//! `POST /api/v1/impressions` bodies: arbitrary bytes through the route's
//! JSON extractor into `TrackImpressionRequest`, then every field check
//! admission makes before it looks the campaign up.

#![no_main]

use axum::Json;
use impression_core::{AdId, CampaignId, UserId};
use impression_counter::error::ApiError;
use impression_counter::fuzzing::{EventTime, format_rfc3339};
use impression_counter::routes::impressions::TrackImpressionRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req = match Json::<TrackImpressionRequest>::from_bytes(data) {
        Ok(Json(req)) => req,
        Err(rejection) => {
            let status = ApiError::from(rejection).status().as_u16();
            assert_eq!(status, 400, "a malformed body is a 400");
            return;
        }
    };
    if let Ok(id) = req.campaign_id.parse::<CampaignId>() {
        assert_eq!(id.to_string().parse::<CampaignId>().ok(), Some(id));
    }
    for raw in [&req.ad_id, &req.user_id] {
        let ok = AdId::parse(raw.as_str()).is_ok();
        assert_eq!(ok, !raw.is_empty() && raw.len() <= 512, "{raw:?}");
        assert_eq!(ok, UserId::parse(raw.as_str()).is_ok());
    }
    if let Some(text) = req.timestamp.as_deref()
        && let Ok(t) = EventTime::Rfc3339(text).parse()
    {
        let again = format_rfc3339(t);
        assert_eq!(
            EventTime::Rfc3339(&again).parse().ok(),
            Some(t),
            "{text:?} -> {again}"
        );
    }
});
