//! The edge every request passes before the router: limits, CORS and
//! metrics.
//!
//! In order: the header-size limit (431), the CORS preflight of tracking
//! routes (answered here), load shedding of API routes beyond `MAX_IN_FLIGHT`
//! (503), a deadline on the body (408 when it is read too late) and the
//! default body limit, then the router; on the way out, CORS headers for
//! tracking routes and the latency histogram. Each connection also gets an
//! [`IdleWatch`], which closes it once it has waited `HEADER_READ_TIMEOUT`
//! for a request. Requests the router serves carry the connection's peer
//! address as axum's `ConnectInfo<SocketAddr>` extension (the pixel's
//! hashed ids need the client's address); the single-impression route,
//! called directly, never pays for it.
//!
//! Why one hand-written service around the router and not a layer each:
//! axum boxes every route again for each `Router::layer` and clones the
//! layer stack per request; tower-http's CORS layer alone (which clones its
//! lists) cost more than the rest together on the single-impression path.
//! Here a request pays one boxed future for all of it. The edge runs before
//! routing, so it names the route from the raw path
//! ([`metrics::route_template`]), and it hands `POST /api/v1/impressions`,
//! by far the most requested route, straight to its handler.
//!
//! The edge is written so that a request writes no memory that requests on
//! other cores write too (a cache line written from two cores moves between
//! them on every write, which on the single-impression path cost more than
//! the instructions around it): each connection has its own handle
//! ([`WithEdge::connection`]), the in-flight count is one atomic, and the
//! latency histograms are striped per thread.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;
use tokio::sync::oneshot;
use tower::Service;

use crate::error::ApiError;
use crate::limits::DeadlineBody;
use crate::metrics::{self, Metrics};
use crate::routes::{AppState, impressions, pixel};

/// Which origins may call the tracking routes from a browser.
#[derive(Debug)]
enum AllowedOrigins {
    Any,
    List(Vec<HeaderValue>),
}

/// What the edge middleware needs, shared by every request.
pub struct Edge {
    metrics: Arc<Metrics>,
    in_flight: InFlight,
    max_header_bytes: usize,
    body_read_timeout: std::time::Duration,
    body_limit: DefaultBodyLimit,
    max_body_bytes: usize,
    origins: AllowedOrigins,
    /// For the single-impression route, called without the router.
    state: AppState,
}

impl Edge {
    /// The edge for the application's settings.
    pub fn new(state: AppState) -> Self {
        let settings = &state.settings;
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
            metrics: Arc::clone(&state.metrics),
            in_flight: InFlight {
                count: AtomicUsize::new(0),
                limit: settings.max_in_flight,
            },
            max_header_bytes: settings.max_header_bytes,
            body_read_timeout: settings.body_read_timeout,
            body_limit: DefaultBodyLimit::max(settings.max_body_bytes),
            max_body_bytes: settings.max_body_bytes,
            origins,
            state,
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`,
    /// if that origin is allowed. None without an `Origin` header: browsers
    /// send one with every cross-origin request, and nothing else reads the
    /// answer's CORS headers (server-to-server tracking would carry them on
    /// every answer for nothing).
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match (&self.origins, origin) {
            (AllowedOrigins::Any, Some(_)) => Some(HeaderValue::from_static("*")),
            (AllowedOrigins::List(list), Some(origin)) if list.contains(origin) => {
                Some(origin.clone())
            }
            _ => None,
        }
    }
}

/// Requests in flight on API routes, for load shedding. A plain counter,
/// not a semaphore: nothing ever waits for a slot (a request over the
/// limit is refused at once), and releasing a tokio semaphore permit takes
/// its waiters' lock, a second shared write per request.
struct InFlight {
    count: AtomicUsize,
    limit: usize,
}

/// A slot of [`InFlight`], given back on drop.
struct InFlightSlot<'a>(&'a AtomicUsize);

impl InFlight {
    fn try_take(&self) -> Option<InFlightSlot<'_>> {
        if self.count.fetch_add(1, Ordering::Acquire) >= self.limit {
            self.count.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(InFlightSlot(&self.count))
    }
}

impl Drop for InFlightSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
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

/// The edge around the whole router: what the server serves. Each
/// connection gets its own handle from [`WithEdge::connection`].
#[derive(Clone)]
pub struct WithEdge(Arc<Shared>);

struct Shared {
    edge: Edge,
    router: Router,
}

impl WithEdge {
    /// `router` behind `edge`.
    pub fn new(edge: Edge, router: Router) -> Self {
        WithEdge(Arc::new(Shared { edge, router }))
    }

    /// The service for one new connection from `peer`, and its idle watch.
    ///
    /// hyper clones the service for every request, and a request's future
    /// must own what it uses. Cloning a handle shared by every connection
    /// would write its reference count from every core for every request,
    /// and that cache line would bounce between cores; a connection's own
    /// handle is only touched by the thread serving that connection.
    pub fn connection(&self, peer: SocketAddr) -> (ConnectionService, IdleWatch) {
        let conn = Arc::new(Connection {
            shared: Arc::clone(&self.0),
            peer,
            opened: Instant::now(),
            idle_since: AtomicU64::new(0),
        });
        (ConnectionService(Arc::clone(&conn)), IdleWatch(conn))
    }
}

/// One connection's state.
struct Connection {
    shared: Arc<Shared>,
    /// The TCP peer: the client, or the proxy in front of it.
    peer: SocketAddr,
    opened: Instant,
    /// Nanoseconds after `opened` when the connection last became idle (its
    /// last answer was ready), or [`BUSY`] while a request is served.
    idle_since: AtomicU64,
}

/// `idle_since` while a request is being served.
const BUSY: u64 = u64::MAX;

impl Connection {
    fn mark_busy(&self) {
        self.idle_since.store(BUSY, Ordering::Relaxed);
    }

    fn mark_idle(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.opened).as_nanos();
        self.idle_since
            .store(u64::try_from(nanos).unwrap_or(BUSY - 1), Ordering::Relaxed);
    }
}

/// Watches a connection for idleness: see [`IdleWatch::spawn`].
pub struct IdleWatch(Arc<Connection>);

impl IdleWatch {
    /// Starts watching; the receiver completes once the connection has
    /// waited `limit` for a request (none since it opened or since its last
    /// answer): a client that trickles its headers, or a keep-alive
    /// connection left idle. Never while a request is being served; a
    /// request's body has its own deadline. Dropping the receiver (the
    /// connection ended) stops the watch.
    ///
    /// Why not hyper's `header_read_timeout`: it arms a timer for every
    /// request (a boxed sleep, registered in and removed from the timer
    /// wheel, under its lock). Here a connection has one timer, in a task of
    /// its own, which wakes at most once per `limit` while requests keep
    /// coming; the connection's task only polls a one-shot receiver.
    pub fn spawn(self, limit: std::time::Duration) -> oneshot::Receiver<()> {
        let (mut expired, receiver) = oneshot::channel();
        tokio::spawn(async move {
            let fired = tokio::select! {
                () = self.expired(limit) => true,
                () = expired.closed() => false,
            };
            if fired {
                let _ = expired.send(());
            }
        });
        receiver
    }

    async fn expired(&self, limit: std::time::Duration) {
        let conn = &self.0;
        let sleep = tokio::time::sleep(limit);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let since = conn.idle_since.load(Ordering::Relaxed);
            if since == BUSY {
                sleep.as_mut().reset((Instant::now() + limit).into());
                continue;
            }
            let deadline = conn.opened + std::time::Duration::from_nanos(since) + limit;
            if Instant::now() >= deadline {
                return;
            }
            sleep.as_mut().reset(deadline.into());
        }
    }
}

/// The service of one connection.
#[derive(Clone)]
pub struct ConnectionService(Arc<Connection>);

impl<B> Service<Request<B>> for ConnectionService
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
        let conn = Arc::clone(&self.0);
        conn.mark_busy();
        Box::pin(async move {
            let shared = &conn.shared;
            let (response, finished) = shared.edge.serve(&shared.router, conn.peer, request).await;
            conn.mark_idle(finished);
            Ok(response)
        })
    }
}

impl Edge {
    /// Serves one request from `peer`; returns the answer and when it was
    /// ready.
    async fn serve<B>(
        &self,
        router: &Router,
        peer: SocketAddr,
        request: Request<B>,
    ) -> (Response, Instant)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let (route, name) = self
            .metrics
            .request_route(metrics::route_template(request.uri().path()));
        let response = self.handle(name, router, peer, request).await;
        let finished = Instant::now();
        self.metrics.observe_request(
            route,
            method.as_str(),
            response.status().as_u16(),
            finished.saturating_duration_since(started).as_secs_f64(),
        );
        (response, finished)
    }

    async fn handle<B>(
        &self,
        route: &str,
        router: &Router,
        peer: SocketAddr,
        request: Request<B>,
    ) -> Response
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

        let direct = route == impressions::ROUTE && request.method() == Method::POST;
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
            match self.in_flight.try_take() {
                Some(slot) => Some(slot),
                None => {
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

        let timeout = self.body_read_timeout;
        let has_body = request_has_body(&request);
        let mut response = if direct {
            // The body limit as the body's own wrapper rather than as an
            // extension for axum to apply (inserting the first extension
            // allocates the request's extension map): the same limit, the
            // same 413. (Other routes keep the extension, which a route may
            // override, as the batch route does.)
            let limit = self.max_body_bytes;
            let request = if has_body {
                request.map(|body| Body::new(Limited::new(DeadlineBody::new(body, timeout), limit)))
            } else {
                request.map(Body::new)
            };
            // The hot route, called directly: matching it in the router
            // (path lookup, matched-path and parameter extensions, a boxed
            // route future) cost about a tenth of a single-impression
            // request. Same handler, same extractors, same answers.
            impressions::track_direct(&self.state, request).await
        } else {
            let mut request = if has_body {
                request.map(|body| Body::new(DeadlineBody::new(body, timeout)))
            } else {
                request.map(Body::new)
            };
            self.body_limit.apply(&mut request);
            request.extensions_mut().insert(ConnectInfo(peer));
            let Ok(response) = router.clone().call(request).await;
            response
        };
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
