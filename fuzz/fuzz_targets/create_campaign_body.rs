//! `POST /api/v1/campaigns` bodies: arbitrary bytes through the route's JSON
//! extractor into `CreateCampaignRequest`, then the name and start time
//! checks.

#![no_main]

use axum::Json;
use impression_core::CampaignName;
use impression_counter::error::ApiError;
use impression_counter::fuzzing::{format_rfc3339, parse_rfc3339};
use impression_counter::routes::campaigns::CreateCampaignRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req = match Json::<CreateCampaignRequest>::from_bytes(data) {
        Ok(Json(req)) => req,
        Err(rejection) => {
            let status = ApiError::from(rejection).status().as_u16();
            assert_eq!(status, 400, "a malformed body is a 400");
            return;
        }
    };
    if let Ok(name) = CampaignName::parse(&req.name) {
        let chars = name.as_str().chars().count();
        assert!((1..=CampaignName::MAX_CHARS).contains(&chars));
        assert_eq!(name.as_str(), name.as_str().trim());
        // What a log record or snapshot stores must parse back the same.
        assert_eq!(CampaignName::parse(name.as_str()).ok(), Some(name));
    }
    if let Some(text) = req.start_time.as_deref()
        && let Ok(t) = parse_rfc3339("start_time", text)
    {
        let again = format_rfc3339(t);
        assert_eq!(
            parse_rfc3339("start_time", &again).ok(),
            Some(t),
            "{text:?} -> {again}"
        );
    }
});
