//! The route table: every path the service serves, written once.
//!
//! The router ([`crate::routes::router`]), the OpenAPI annotations, the
//! request metrics' `route` label and the edge's classification of a raw
//! path all take their paths from here, so a route cannot be served under
//! one spelling and measured or documented under another. Tests check that
//! every entry is served and that the OpenAPI document lists exactly the
//! documented ones.
//!
//! Templates use axum's syntax: `{id}` is one non-empty path segment,
//! `{*rest}` the non-empty rest of the path.

/// `POST`: track one impression (the hot route).
pub const TRACK: &str = "/api/v1/impressions";
/// `POST`: track a batch (JSON array or NDJSON).
pub const TRACK_BATCH: &str = "/api/v1/impressions/batch";
/// `GET`: the tracking pixel.
pub const PIXEL: &str = "/api/v1/impressions/pixel.gif";
/// `POST` creates, `GET` lists campaigns.
pub const CAMPAIGNS: &str = "/api/v1/campaigns";
/// `GET`: one campaign.
pub const CAMPAIGN: &str = "/api/v1/campaigns/{id}";
/// `GET`: a campaign's stats.
pub const CAMPAIGN_STATS: &str = "/api/v1/campaigns/{id}/stats";
/// `GET`: a campaign's stats as Server-Sent Events, one a second.
pub const CAMPAIGN_STATS_STREAM: &str = "/api/v1/campaigns/{id}/stats/stream";
/// `GET`: ingest health (accepted and refused impressions, the queue).
pub const INGEST: &str = "/api/v1/ingest";
/// `GET`: a campaign's time series.
pub const CAMPAIGN_TIMESERIES: &str = "/api/v1/campaigns/{id}/timeseries";
/// `GET`: liveness.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: readiness.
pub const READYZ: &str = "/readyz";
/// `GET`: Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// `GET`: the OpenAPI document.
pub const OPENAPI: &str = "/openapi.json";
/// `GET`: the docs page.
pub const DOCS: &str = "/docs";
/// `GET`: the docs page's assets (`/docs/` itself and its files).
pub const DOCS_ASSETS: [&str; 2] = ["/docs/", "/docs/{*rest}"];

/// `GET`: redirects to the dashboard.
pub const ROOT: &str = "/";
/// `GET`: the dashboard's campaign list.
pub const DASHBOARD: &str = "/dashboard";
/// `GET`: the dashboard's page of one campaign.
pub const DASHBOARD_CAMPAIGN: &str = "/dashboard/campaigns/{id}";
/// `GET`: the dashboard's script, styles and vendored chart library.
pub const DASHBOARD_ASSETS: &str = "/dashboard/assets/{file}";

/// Who may call a route, which decides what the edge does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Open to the world and to browsers on any allowed origin (CORS);
    /// shed under overload.
    Tracking,
    /// An advertiser's back office: API key when configured; shed under
    /// overload.
    Management,
    /// Probes, metrics and docs: never shed, so load balancers and
    /// Prometheus can still reach an overloaded node.
    Operations,
}

/// One entry of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The template, as the router matches it.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Whether the OpenAPI document describes it (the document and the docs
    /// page describe the API, not themselves).
    pub documented: bool,
    /// Whether its answer is a long-lived stream (Server-Sent Events): the
    /// edge keeps the connection marked busy until the stream ends, so the
    /// idle timeout (`HEADER_READ_TIMEOUT`) does not cut it.
    pub streaming: bool,
    /// Whether the template has parameters (else a path matches it only by
    /// being equal to it).
    templated: bool,
}

impl Route {
    const fn new(path: &'static str, access: Access, documented: bool) -> Self {
        Route {
            path,
            access,
            documented,
            streaming: false,
            templated: has_parameters(path),
        }
    }

    /// The same route, answering a long-lived stream.
    const fn stream(self) -> Self {
        Route {
            streaming: true,
            ..self
        }
    }

    /// Whether browsers may call it from other origins.
    pub fn is_tracking(&self) -> bool {
        self.access == Access::Tracking
    }

    /// Whether the edge sheds it when too many requests are in flight.
    pub fn is_sheddable(&self) -> bool {
        self.access != Access::Operations
    }
}

/// Every route, the tracking routes first (the edge looks them up first:
/// they take nearly all the traffic).
pub const ROUTES: &[Route] = &[
    Route::new(TRACK, Access::Tracking, true),
    Route::new(TRACK_BATCH, Access::Tracking, true),
    Route::new(PIXEL, Access::Tracking, true),
    Route::new(CAMPAIGNS, Access::Management, true),
    Route::new(CAMPAIGN, Access::Management, true),
    Route::new(CAMPAIGN_STATS, Access::Management, true),
    Route::new(CAMPAIGN_TIMESERIES, Access::Management, true),
    Route::new(CAMPAIGN_STATS_STREAM, Access::Management, true).stream(),
    Route::new(INGEST, Access::Management, true),
    Route::new(HEALTHZ, Access::Operations, true),
    Route::new(READYZ, Access::Operations, true),
    Route::new(METRICS, Access::Operations, true),
    Route::new(OPENAPI, Access::Operations, false),
    Route::new(DOCS, Access::Operations, false),
    Route::new(DOCS_ASSETS[0], Access::Operations, false),
    Route::new(DOCS_ASSETS[1], Access::Operations, false),
    // The dashboard's pages and files hold no data (they fetch it from the
    // API, with the key): open, like the docs, and never shed.
    Route::new(ROOT, Access::Operations, false),
    Route::new(DASHBOARD, Access::Operations, false),
    Route::new(DASHBOARD_CAMPAIGN, Access::Operations, false),
    Route::new(DASHBOARD_ASSETS, Access::Operations, false),
];

/// The route a raw request path falls under, as axum's router would match
/// it; `None` for a path no route serves. The edge runs before the router,
/// so it classifies the path itself.
pub fn route_of(path: &str) -> Option<&'static Route> {
    // Literal templates by comparison first: the tracking routes are the
    // first entries, so the hot path costs a string comparison or two.
    ROUTES
        .iter()
        .find(|r| !r.templated && r.path == path)
        .or_else(|| ROUTES.iter().find(|r| r.templated && matches(r.path, path)))
}

const fn has_parameters(template: &str) -> bool {
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether `path` matches `template`.
fn matches(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with("{*") => {
                // The rest of the path, whatever it holds, but not nothing.
                return !g.is_empty() || given.next().is_some();
            }
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) => {
                if w != g {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_classifies_as_itself() {
        for route in ROUTES {
            let path = route
                .path
                .replace("{id}", "0190c4c2-6e4b-7c2a-9a4e-1f2e3d4c5b6a")
                .replace("{*rest}", "swagger-ui.css")
                .replace("{file}", "dashboard.js");
            assert_eq!(route_of(&path), Some(route), "{path}");
        }
        assert_eq!(
            route_of("/docs/a/b.js").map(|r| r.path),
            Some("/docs/{*rest}"),
            "a catch-all takes several segments"
        );
    }

    #[test]
    fn paths_no_route_serves_are_unmatched() {
        for path in [
            "",
            "/api",
            "/api/v1",
            "/api/v1/campaigns/",
            "/api/v1/campaigns//stats",
            "/api/v1/campaigns/x/stats/more",
            "/api/v1/impressions/",
            "/API/v1/impressions",
            "/healthz/",
            "/metrics/x",
            "/dashboard/",
            "/dashboard/campaigns",
            "/dashboard/assets/a/b.js",
            "healthz",
        ] {
            assert_eq!(route_of(path), None, "{path:?}");
        }
    }

    #[test]
    fn tracking_routes_come_first_and_only_operations_are_never_shed() {
        let tracking: Vec<_> = ROUTES.iter().take_while(|r| r.is_tracking()).collect();
        assert_eq!(tracking.len(), 3);
        assert!(ROUTES.iter().skip(3).all(|r| !r.is_tracking()));
        for route in ROUTES {
            assert_eq!(
                route.is_sheddable(),
                route.path.starts_with("/api/"),
                "{}",
                route.path
            );
        }
    }
}
