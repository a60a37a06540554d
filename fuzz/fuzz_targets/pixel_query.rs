//! `GET /api/v1/impressions/pixel.gif`: the query string (through the same
//! `Query<PixelParams>` extractor as the route), the `ts` parameter (Unix
//! milliseconds or RFC 3339) and the cookie the user id falls back to.
//! Input: query string, then `\n`-separated `Cookie` header values.

#![no_main]

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use impression_core::{AdId, CampaignId, UserId};
use impression_counter::error::ApiError;
use impression_counter::fuzzing::{EventTime, pixel_cookie};
use impression_counter::routes::pixel::PixelParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == b'\n');
    let query = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for value in parts {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(header::COOKIE, value);
        }
    }
    for name in ["uid", "a", "visitor_id"] {
        if let Some(user) = pixel_cookie(&headers, name) {
            assert!(!user.is_empty() && !user.contains(';'), "{user:?}");
            let _ = UserId::parse(user);
        }
    }

    let mut uri = b"/api/v1/impressions/pixel.gif?".to_vec();
    uri.extend_from_slice(query);
    let Ok(uri) = Uri::try_from(uri) else {
        return; // not a request target hyper would deliver
    };
    let params = match Query::<PixelParams>::try_from_uri(&uri) {
        Ok(Query(params)) => params,
        Err(rejection) => {
            assert_eq!(ApiError::from(rejection).status().as_u16(), 400);
            return;
        }
    };
    if let Some(id) = params.campaign_id.as_deref() {
        let _ = id.parse::<CampaignId>();
    }
    if let Some(ad) = params.ad_id {
        let _ = AdId::parse(ad);
    }
    if let Some(user) = params.user_id {
        let _ = UserId::parse(user);
    }
    if let Some(ts) = params.ts.as_deref()
        && let Ok(t) = EventTime::RfcOrUnixMillis(ts).parse()
        && ts.bytes().all(|b| b.is_ascii_digit())
    {
        assert_eq!(ts.parse::<u64>().ok(), Some(t.as_millis()));
    }
});
