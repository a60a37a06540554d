//! The live dashboard: `GET /` redirects to `/dashboard`, the campaign list;
//! `/dashboard/campaigns/{id}` is one campaign's live page.
//!
//! Everything is compiled into the binary (`include_str!`/`include_bytes!`
//! of `crates/server/assets/`): two static HTML pages, one script, one
//! stylesheet and the vendored uPlot charting library
//! (`assets/vendor/uplot/`, refreshed by `scripts/refresh-uplot.sh`), so the
//! pages work with no internet and the build needs no Node.
//!
//! The pages hold no data: the script fetches it from the API (with the API
//! key, when keys are configured, which the page asks for once and keeps in
//! `sessionStorage`) and follows the campaign's stats stream
//! ([`crate::routes::stream`]). So the pages themselves are open, like the
//! docs, and never shed.
//!
//! **Safe with hostile data.** Campaign names and ad ids come from clients.
//! The script only ever sets text (`textContent`, never `innerHTML`), and
//! every page is sent with a Content-Security-Policy that allows scripts
//! and styles from this origin only: no inline script, no inline event
//! handler, no `eval`, no style attribute in markup, nothing from another
//! origin, no framing. Even a bug that let markup in could not run it.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::error::{ApiError, ApiPath};
use crate::paths;

/// The policy every dashboard answer carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

const LIST_HTML: &str = include_str!("../assets/dashboard/index.html");
const CAMPAIGN_HTML: &str = include_str!("../assets/dashboard/campaign.html");

/// The files under `/dashboard/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/LICENSE"),
    ),
];

/// The dashboard's routes.
pub fn router() -> Router {
    Router::new()
        .route(
            paths::ROOT,
            get(|| async { Redirect::to(paths::DASHBOARD) }),
        )
        .route(paths::DASHBOARD, get(|| async { page(LIST_HTML) }))
        .route(paths::DASHBOARD_CAMPAIGN, get(campaign_page))
        .route(paths::DASHBOARD_ASSETS, get(asset))
}

async fn campaign_page(ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    // Only a real id gets the page: the script reads it from the URL.
    id.parse::<impression_core::CampaignId>()?;
    Ok(page(CAMPAIGN_HTML))
}

async fn asset(ApiPath(file): ApiPath<String>) -> Result<Response, ApiError> {
    let (_, content_type, bytes) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| {
            let shown: String = file.chars().take(64).collect();
            ApiError::RouteNotFound(format!("GET /dashboard/assets/{shown}"))
        })?;
    Ok(with_headers(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            *bytes,
        )
            .into_response(),
    ))
}

fn page(html: &'static str) -> Response {
    with_headers(
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            html,
        )
            .into_response(),
    )
}

/// The security headers of every dashboard answer. `no-cache`: a browser
/// revalidates, so an upgraded binary's script is never mixed with an old
/// page.
fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}
