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
//! routing, so it classifies the raw path with the route table
//! ([`crate::paths`]), and it hands `POST /api/v1/impressions`, by far the
//! most requested route, to [`EdgeRoutes::track`] without the router.
//!
//! The edge knows routes only through [`crate::paths`] and the
//! [`EdgeRoutes`] it is given: the application's composition
//! ([`crate::startup::app`]) plugs the routes in, so the layers point one
//! way.
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
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;
use tower::Service;

use crate::error::ApiError;
use crate::limits::DeadlineBody;
use crate::metrics::Metrics;
use crate::paths::{self, Route};

/// What the edge enforces, from the configuration.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    /// Largest total header size, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Most API requests handled at once (503 beyond).
    pub max_in_flight: usize,
    /// Time to send a body (408 beyond).
    pub body_read_timeout: Duration,
    /// Largest request body other than a batch's, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Origins allowed to call tracking routes from browsers; `*` for any.
    pub cors_allowed_origins: Vec<String>,
}

/// What the edge calls besides the router.
pub trait EdgeRoutes: Send + Sync + 'static {
    /// Serves `POST` on [`paths::TRACK`], exactly as the router's handler
    /// for it would (the edge calls it directly: matching the hot route in
    /// the router cost about a tenth of a single-impression request). The
    /// body already carries the edge's limit and deadline.
    fn track(
        &self,
        request: Request<Body>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response> + Send + '_;

    /// The answer to a request on `route` that the edge refused (headers too
    /// large, load shed). The JSON error, unless a route must answer in its
    /// own format (the pixel answers its GIF whatever happens).
    fn refusal(&self, route: Option<&Route>, error: ApiError) -> Response {
        let _ = route;
        error.into_response()
    }
}

/// Which origins may call the tracking routes from a browser.
#[derive(Debug)]
enum AllowedOrigins {
    Any,
    List(Vec<HeaderValue>),
}

/// What the edge middleware needs, shared by every request.
pub struct Edge<R> {
    metrics: Arc<Metrics>,
    in_flight: InFlight,
    max_header_bytes: usize,
    body_read_timeout: Duration,
    body_limit: DefaultBodyLimit,
    max_body_bytes: usize,
    origins: AllowedOrigins,
    /// The single-impression route, called without the router.
    routes: R,
}

impl<R: EdgeRoutes> Edge<R> {
    /// The edge for these settings, recording into `metrics`, calling
    /// `routes`.
    pub fn new(settings: &EdgeSettings, metrics: Arc<Metrics>, routes: R) -> Self {
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
            in_flight: InFlight {
                count: AtomicUsize::new(0),
                limit: settings.max_in_flight,
            },
            max_header_bytes: settings.max_header_bytes,
            body_read_timeout: settings.body_read_timeout,
            body_limit: DefaultBodyLimit::max(settings.max_body_bytes),
            max_body_bytes: settings.max_body_bytes,
            origins,
            routes,
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

/// The edge around the whole router: what the server serves. Each
/// connection gets its own handle from [`WithEdge::connection`].
pub struct WithEdge<R>(Arc<Shared<R>>);

impl<R> Clone for WithEdge<R> {
    fn clone(&self) -> Self {
        WithEdge(Arc::clone(&self.0))
    }
}

struct Shared<R> {
    edge: Edge<R>,
    router: Router,
}

impl<R: EdgeRoutes> WithEdge<R> {
    /// `router` behind `edge`.
    pub fn new(edge: Edge<R>, router: Router) -> Self {
        WithEdge(Arc::new(Shared { edge, router }))
    }

    /// The service for one new connection from `peer`, and its idle watch.
    ///
    /// hyper clones the service for every request, and a request's future
    /// must own what it uses. Cloning a handle shared by every connection
    /// would write its reference count from every core for every request,
    /// and that cache line would bounce between cores; a connection's own
    /// handle is only touched by the thread serving that connection.
    pub fn connection(&self, peer: SocketAddr) -> (ConnectionService<R>, IdleWatch<R>) {
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
struct Connection<R> {
    shared: Arc<Shared<R>>,
    /// The TCP peer: the client, or the proxy in front of it.
    peer: SocketAddr,
    opened: Instant,
    /// Nanoseconds after `opened` when the connection last became idle (its
    /// last answer was ready), or [`BUSY`] while a request is served.
    idle_since: AtomicU64,
}

/// `idle_since` while a request is being served.
const BUSY: u64 = u64::MAX;

impl<R> Connection<R> {
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
pub struct IdleWatch<R>(Arc<Connection<R>>);

impl<R: EdgeRoutes> IdleWatch<R> {
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
    pub fn spawn(self, limit: Duration) -> oneshot::Receiver<()> {
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

    async fn expired(&self, limit: Duration) {
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
            let deadline = conn.opened + Duration::from_nanos(since) + limit;
            if Instant::now() >= deadline {
                return;
            }
            sleep.as_mut().reset(deadline.into());
        }
    }
}

/// The service of one connection.
pub struct ConnectionService<R>(Arc<Connection<R>>);

impl<R> Clone for ConnectionService<R> {
    fn clone(&self) -> Self {
        ConnectionService(Arc::clone(&self.0))
    }
}

impl<R: EdgeRoutes, B> Service<Request<B>> for ConnectionService<R>
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
            let (response, finished, streaming) =
                shared.edge.serve(&shared.router, conn.peer, request).await;
            if streaming {
                // A stream's answer is its body: the connection stays busy
                // until the body is done (or dropped), so the idle watch
                // does not close a live stream.
                let busy = BusyUntilDropped(Arc::clone(&conn));
                return Ok(response.map(move |body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &busy;
                        frame
                    }))
                }));
            }
            conn.mark_idle(finished);
            Ok(response)
        })
    }
}

/// Marks its connection idle when dropped: held by a streaming answer's
/// body.
struct BusyUntilDropped<R>(Arc<Connection<R>>);

impl<R> Drop for BusyUntilDropped<R> {
    fn drop(&mut self) {
        self.0.mark_idle(Instant::now());
    }
}

impl<R: EdgeRoutes> Edge<R> {
    /// Serves one request from `peer`; returns the answer, when it was
    /// ready, and whether its body is a long-lived stream
    /// ([`Route::streaming`]).
    async fn serve<B>(
        &self,
        router: &Router,
        peer: SocketAddr,
        request: Request<B>,
    ) -> (Response, Instant, bool)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let route = paths::route_of(request.uri().path());
        let (label, _) = self.metrics.request_route(route);
        let response = self.handle(route, router, peer, request).await;
        let finished = Instant::now();
        self.metrics.observe_request(
            label,
            method.as_str(),
            response.status().as_u16(),
            finished.saturating_duration_since(started).as_secs_f64(),
        );
        let streaming = route.is_some_and(|r| r.streaming) && response.status().is_success();
        (response, finished, streaming)
    }

    async fn handle<B>(
        &self,
        route: Option<&'static Route>,
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
            return self.routes.refusal(route, error);
        }

        let direct =
            route.is_some_and(|r| r.path == paths::TRACK) && request.method() == Method::POST;
        let cors = route.is_some_and(Route::is_tracking);
        if cors && request.method() == Method::OPTIONS {
            return preflight(self, request.headers());
        }
        let allow_origin = if cors {
            self.allow_origin(request.headers().get(header::ORIGIN))
        } else {
            None
        };

        let _slot = if route.is_some_and(Route::is_sheddable) {
            match self.in_flight.try_take() {
                Some(slot) => Some(slot),
                None => {
                    let error = ApiError::Unavailable(
                        "the server is at its limit of requests in flight (MAX_IN_FLIGHT); retry shortly"
                            .into(),
                    );
                    return self.routes.refusal(route, error);
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
            // The hot route, called directly (see `EdgeRoutes::track`).
            self.routes.track(request, peer).await
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

/// Answers a CORS preflight: the origin if allowed, the methods and the one
/// request header tracking needs, and how long to cache the answer.
fn preflight<R: EdgeRoutes>(edge: &Edge<R>, headers: &HeaderMap) -> Response {
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
