//! The edge every request passes before the router: limits, CORS and
//! metrics.
//!
//! In order: the header-size limit (431), the CORS preflight of tracking
//! routes (answered here), load shedding of API routes beyond `MAX_IN_FLIGHT`
//! (503), a deadline on the body (408 when it is read too late) and the
//! default body limit, then the router; on the way out, CORS headers for
//! tracking routes and the latency histogram.
//!
//! Why one hand-written service around the router and not a layer each:
//! axum boxes every route again for each `Router::layer` and clones the
//! layer stack per request; tower-http's CORS layer alone (which clones its
//! lists) cost more than the rest together on the single-impression path.
//! Here a request pays two reference-count increments and one boxed future
//! for all of it. The edge runs before routing, so it names the route from
//! the raw path ([`metrics::route_template`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tower::Service;

use crate::error::ApiError;
use crate::limits::DeadlineBody;
use crate::metrics::{self, Metrics};
use crate::routes::{ApiSettings, pixel};

/// Which origins may call the tracking routes from a browser.
#[derive(Debug)]
enum AllowedOrigins {
    Any,
    List(Vec<HeaderValue>),
}

/// What the edge middleware needs, shared by every request.
pub struct Edge {
    metrics: Arc<Metrics>,
    in_flight: Semaphore,
    max_header_bytes: usize,
    body_read_timeout: std::time::Duration,
    body_limit: DefaultBodyLimit,
    origins: AllowedOrigins,
}

impl Edge {
    /// The edge for these settings.
    pub fn new(settings: &ApiSettings, metrics: Arc<Metrics>) -> Self {
        let origins = if settings
            .cors_allowed_origins
            .iter()
            .any(|o| o.trim() == "*")
        {
            AllowedOrigins::Any
        } else {
            AllowedOrigins::List(
                settings
                    .cors_allowed_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
                    .collect(),
            )
        };
        Edge {
            metrics,
            in_flight: Semaphore::new(settings.max_in_flight),
            max_header_bytes: settings.max_header_bytes,
            body_read_timeout: settings.body_read_timeout,
            body_limit: DefaultBodyLimit::max(settings.max_body_bytes),
            origins,
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`,
    /// if that origin is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match (&self.origins, origin) {
            (AllowedOrigins::Any, _) => Some(HeaderValue::from_static("*")),
            (AllowedOrigins::List(list), Some(origin)) if list.contains(origin) => {
                Some(origin.clone())
            }
            _ => None,
        }
    }
}

/// Tracking routes: open to browsers (CORS).
fn is_tracking(route: &str) -> bool {
    route.starts_with("/api/v1/impressions")
}

/// API routes: shed under overload. Health, readiness, metrics and docs
/// are never shed, so probes still work on an overloaded node.
fn is_sheddable(route: &str) -> bool {
    route.starts_with("/api/")
}

/// The edge around the whole router: what the server serves on every
/// connection. Cloning it (hyper does, per request) costs two
/// reference-count increments.
#[derive(Clone)]
pub struct WithEdge {
    edge: Arc<Edge>,
    router: Router,
}

impl WithEdge {
    /// `router` behind `edge`.
    pub fn new(edge: Edge, router: Router) -> Self {
        WithEdge {
            edge: Arc::new(edge),
            router,
        }
    }
}

impl<B> Service<Request<B>> for WithEdge
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let edge = Arc::clone(&self.edge);
        let router = self.router.clone();
        Box::pin(async move { Ok(edge.serve(router, request).await) })
    }
}

impl Edge {
    async fn serve<B>(&self, router: Router, request: Request<B>) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let (route, name) = self
            .metrics
            .request_route(metrics::route_template(request.uri().path()));
        let response = self.handle(name, router, request).await;
        self.metrics.observe_request(
            route,
            method.as_str(),
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response
    }

    async fn handle<B>(&self, route: &str, mut router: Router, request: Request<B>) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let size = header_bytes(&request);
        if size > self.max_header_bytes {
            let error = ApiError::HeadersTooLarge(format!(
                "the request line and headers take {size} bytes; at most {} are accepted (MAX_HEADER_BYTES)",
                self.max_header_bytes
            ));
            return refuse(route, error);
        }

        let cors = is_tracking(route);
        if cors && request.method() == Method::OPTIONS {
            return preflight(self, request.headers());
        }
        let allow_origin = if cors {
            self.allow_origin(request.headers().get(header::ORIGIN))
        } else {
            None
        };

        let _slot = if is_sheddable(route) {
            match self.in_flight.try_acquire() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    let error = ApiError::Unavailable(
                        "the server is at its limit of requests in flight (MAX_IN_FLIGHT); retry shortly"
                            .into(),
                    );
                    return refuse(route, error);
                }
            }
        } else {
            None
        };

        let mut request = if request_has_body(&request) {
            let timeout = self.body_read_timeout;
            request.map(|body| Body::new(DeadlineBody::new(body, timeout)))
        } else {
            request.map(Body::new)
        };
        self.body_limit.apply(&mut request);
        let Ok(mut response) = router.call(request).await;
        if let Some(origin) = allow_origin {
            let headers = response.headers_mut();
            if matches!(self.origins, AllowedOrigins::List(_)) {
                headers.insert(header::VARY, HeaderValue::from_static("origin"));
            }
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        response
    }
}

/// A refusal at the edge: the JSON error, except on the pixel, which
/// answers its GIF with the reason in `X-Impression-Error` whatever refused
/// it, so an `<img>` never shows as broken on a page.
fn refuse(route: &str, error: ApiError) -> Response {
    if route == pixel::ROUTE {
        pixel::refusal(&error)
    } else {
        error.into_response()
    }
}

/// Answers a CORS preflight: the origin if allowed, the methods and the one
/// request header tracking needs, and how long to cache the answer.
fn preflight(edge: &Edge, headers: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let Some(origin) = edge.allow_origin(headers.get(header::ORIGIN)) else {
        return response;
    };
    let out = response.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    out.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    out.insert(
        header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    response
}

/// Request line and headers, as counted against `MAX_HEADER_BYTES`.
fn header_bytes<B>(request: &Request<B>) -> usize {
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().path().len()
        + request.uri().query().map_or(0, str::len)
}

/// Whether the request announces a body (GETs and empty POSTs skip the
/// deadline wrapper and its allocation).
fn request_has_body<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}
