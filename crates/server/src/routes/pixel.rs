//! `GET /api/v1/impressions/pixel.gif`: tracking from an image URL.
//!
//! Browsers (`<img src=...>`) and video players (VAST impression URLs) can
//! only fire a GET. The pixel counts exactly like the POST, and always
//! answers a 1x1 transparent GIF so a page never shows a broken image: a
//! refused impression gets the matching 4xx/503 status with the reason in
//! the `X-Impression-Error` header. Nothing may cache it, or a repeat view
//! would never reach the server.
//!
//! The user id is, in order: `user_id` in the URL, the `PIXEL_COOKIE`
//! cookie, or, for a browser that brings neither, one made up as
//! `PIXEL_ID` says ([`crate::pixel_id`]): the daily hashed id, offered back
//! as the cookie in `cookie` mode. A cookie is a client-supplied id like
//! any other (same limits, same 400s); it is set only on a 200.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use impression_core::{CampaignId, Timestamp};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::admission::{Admission, EventTime, enqueue_from, rate_limit, reject_reason};
use crate::error::ApiError;
use crate::metrics::IdSource;
use crate::paths;
use crate::pixel_id::PixelIdMode;

/// A 1x1 transparent GIF (`GIF89a`, 43 bytes).
pub const TRANSPARENT_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The body of every pixel answer, for the API description: the 43-byte
/// transparent GIF.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Gif(pub Vec<u8>);

/// The header carrying the reason a pixel impression was refused.
pub const ERROR_HEADER: &str = "x-impression-error";

/// Query of the pixel URL.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PixelParams {
    /// The campaign (UUID).
    #[param(required = true, format = Uuid)]
    pub campaign_id: Option<String>,
    /// The creative; 1..=512 bytes.
    #[param(required = true, min_length = 1, max_length = 512)]
    pub ad_id: Option<String>,
    /// The viewer; 1..=512 bytes. When absent, read from the `uid` cookie
    /// (name set by `PIXEL_COOKIE`); without that either, the pixel makes
    /// one up as `PIXEL_ID` says (default: a daily hashed id, also set as
    /// the cookie).
    #[param(min_length = 1, max_length = 512)]
    pub user_id: Option<String>,
    /// When the impression happened: Unix milliseconds or RFC 3339.
    pub ts: Option<String>,
}

/// Tracks an impression from an image request; always answers a GIF.
#[utoipa::path(
    get,
    path = paths::PIXEL,
    tag = "impressions",
    params(PixelParams),
    responses(
        (status = 200, description = "Validated and queued", content_type = "image/gif", body = Gif,
            headers(("Set-Cookie" = String,
                description = "With PIXEL_ID=cookie, when the request had neither user_id nor the cookie: \
                               the id it was counted under"))),
        (status = 400, description = "Invalid or missing parameter (reason in X-Impression-Error)",
            content_type = "image/gif", body = Gif, headers(("X-Impression-Error" = String))),
        (status = 404, description = "No such campaign (reason in X-Impression-Error)",
            content_type = "image/gif", body = Gif, headers(("X-Impression-Error" = String))),
        (status = 409, description = "The campaign has not started (reason in X-Impression-Error)",
            content_type = "image/gif", body = Gif, headers(("X-Impression-Error" = String))),
        (status = 431, description = "Request line and headers over MAX_HEADER_BYTES (reason in X-Impression-Error)",
            content_type = "image/gif", body = Gif, headers(("X-Impression-Error" = String))),
        (status = 429, description = "Over RATE_LIMIT_PER_CLIENT (reason in X-Impression-Error)",
            content_type = "image/gif", body = Gif,
            headers(("X-Impression-Error" = String), ("Retry-After" = u32))),
        (status = 503, description = "Queue full, storage unavailable or MAX_IN_FLIGHT reached (reason in X-Impression-Error)",
            content_type = "image/gif", body = Gif,
            headers(("X-Impression-Error" = String), ("Retry-After" = u32))),
    )
)]
pub async fn track_pixel(
    State(app): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<PixelParams>, QueryRejection>,
) -> Response {
    let received_at = app.clock.now();
    app.metrics.impression_received();
    let result = async {
        let Query(params) = query.map_err(ApiError::from)?;
        let campaign_id = required(params.campaign_id, "campaign_id")?;
        let ad_id = required(params.ad_id, "ad_id")?;
        let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
        rate_limit(&app, peer, &headers, 1, received_at)?;
        let viewer = identify(
            &app,
            params.user_id,
            &campaign_id,
            &headers,
            peer,
            received_at,
        )
        .await?;
        let impression = Admission::new(&app, received_at)
            .admit(
                &campaign_id,
                ad_id,
                viewer.user_id,
                params.ts.as_deref().map(EventTime::RfcOrUnixMillis),
            )
            .await?;
        enqueue_from(&app, vec![impression], false, viewer.source).await?;
        Ok::<_, ApiError>(viewer.set_cookie)
    }
    .await;
    match result {
        Ok(set_cookie) => {
            let mut response = gif(StatusCode::OK, None);
            if let Some(cookie) = set_cookie {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(e) => {
            app.metrics.impression_rejected(reject_reason(&e));
            gif(e.status(), Some(&e.to_string()))
        }
    }
}

/// Who viewed the ad, and what to tell the browser.
struct Viewer {
    user_id: String,
    source: IdSource,
    /// The id cookie to set, for an id minted in `cookie` mode.
    set_cookie: Option<HeaderValue>,
}

/// The viewer's id: from the URL, the cookie, or made up as `PIXEL_ID`
/// says.
async fn identify(
    app: &AppState,
    from_url: Option<String>,
    campaign_id: &str,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    received_at: Timestamp,
) -> Result<Viewer, ApiError> {
    let ids = &app.pixel_ids;
    let settings = ids.settings();
    let given = |user_id, source| Viewer {
        user_id,
        source,
        set_cookie: None,
    };
    if let Some(user_id) = from_url {
        return Ok(given(user_id, IdSource::Url));
    }
    if let Some(user_id) = cookie(headers, &settings.cookie) {
        return Ok(given(user_id, IdSource::Cookie));
    }
    if settings.mode == PixelIdMode::Off {
        return Err(ApiError::BadRequest(format!(
            "user_id is missing: pass it in the URL or the `{}` cookie",
            settings.cookie
        )));
    }
    let campaign: CampaignId = campaign_id.parse()?;
    // Only the router path lacks a peer (tests calling it without the
    // edge); such requests share the unspecified address.
    let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let client = app.settings.client_addr.client_ip(peer, headers);
    let user_agent = headers
        .get(header::USER_AGENT)
        .map_or(&b""[..], HeaderValue::as_bytes);
    let user_id = ids
        .hashed_id(
            app.store.as_ref(),
            received_at,
            client,
            user_agent,
            campaign,
        )
        .await?;
    Ok(match settings.mode {
        PixelIdMode::Cookie => Viewer {
            set_cookie: ids.set_cookie(&user_id),
            user_id,
            source: IdSource::Minted,
        },
        _ => given(user_id, IdSource::Hash),
    })
}

fn required(value: Option<String>, name: &str) -> Result<String, ApiError> {
    value.ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))
}

/// The value of cookie `name`, from any `Cookie` header.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// The pixel's answer to a request refused before it reached the handler
/// (headers too large, load shed): the GIF, with `error`'s status and reason.
pub fn refusal(error: &ApiError) -> Response {
    gif(error.status(), Some(&error.to_string()))
}

fn gif(status: StatusCode, error: Option<&str>) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, no-cache, must-revalidate"),
            (header::PRAGMA, "no-cache"),
        ],
        TRANSPARENT_GIF,
    )
        .into_response();
    if let Some(error) = error {
        response
            .headers_mut()
            .insert(ERROR_HEADER, header_safe(error));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A header value from arbitrary text: visible ASCII only, bounded length.
fn header_safe(text: &str) -> HeaderValue {
    let cleaned: String = text
        .chars()
        .take(300)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("rejected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others_and_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; uid=\"abc\"".parse().unwrap());
        h.append(header::COOKIE, "other=2".parse().unwrap());
        assert_eq!(cookie(&h, "uid").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "other").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "missing"), None);
        let mut empty = HeaderMap::new();
        empty.append(header::COOKIE, "uid=".parse().unwrap());
        assert_eq!(cookie(&empty, "uid"), None);
    }

    #[test]
    fn error_header_is_always_a_valid_value() {
        let v = header_safe("campaign_id must be a UUID, got \"é\u{0}\n\"");
        assert_eq!(
            v.to_str().unwrap(),
            "campaign_id must be a UUID, got \"???\""
        );
    }

    #[test]
    fn the_gif_is_a_1x1_gif89a() {
        assert_eq!(TRANSPARENT_GIF.len(), 43);
        assert_eq!(&TRANSPARENT_GIF[..6], b"GIF89a");
        assert_eq!(
            u16::from_le_bytes([TRANSPARENT_GIF[6], TRANSPARENT_GIF[7]]),
            1
        );
        assert_eq!(
            u16::from_le_bytes([TRANSPARENT_GIF[8], TRANSPARENT_GIF[9]]),
            1
        );
        assert_eq!(TRANSPARENT_GIF.last(), Some(&b';'));
    }
}
