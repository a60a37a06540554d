//! The OpenAPI description, generated from the handlers' annotations, and
//! the docs page that renders it.
//!
//! `GET /openapi.json` serves the spec; `GET /docs` serves Swagger UI. The UI's
//! assets are vendored into the binary at build time (`utoipa-swagger-ui`
//! with `vendored`), so the page works offline and the build never downloads.

use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ErrorBody;
use crate::routes::{
    batch, campaigns, health, impressions, ingest, pixel, stats, stream, timeseries,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "impression-counter",
        description = "Counts ad impressions per campaign in real time, once per user per TTL, \
                       with exact last-hour and last-day windows. Every error is \
                       `{\"error\": string, \"code\": status}`."
    ),
    paths(
        campaigns::create_campaign,
        campaigns::list_campaigns,
        campaigns::get_campaign,
        stats::campaign_stats,
        stream::stats_stream,
        timeseries::campaign_timeseries,
        impressions::track_impression,
        batch::track_batch,
        pixel::track_pixel,
        health::healthz,
        health::readyz,
        health::metrics,
        ingest::ingest_health,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "campaigns", description = "Create and read campaigns"),
        (name = "impressions", description = "Track ad views"),
        (name = "stats", description = "Counted impressions per campaign"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// `/openapi.json` and the `/docs` page.
pub fn docs() -> Router {
    SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        .into()
}
