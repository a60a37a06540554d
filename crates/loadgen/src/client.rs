//! A minimal HTTP/1.1 client: one keep-alive connection, one request at a time.
//!
//! Built directly on `hyper::client::conn::http1` rather than a pooled client
//! (reqwest, hyper-util's `Client`): each load connection task owns its
//! [`Conn`], so there is no pool lookup, no lock and no URL parsing per
//! request; only the request, its answer and a buffer. That keeps loadgen
//! cheap per request on a machine it shares with the server it measures.
//!
//! Sockets get `TCP_NODELAY`: requests and answers are small and must not
//! wait for Nagle's algorithm.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP/1 handshake failed.
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The connection failed while sending or waiting for the answer head.
    #[error("request failed: {0}")]
    Request(#[source] hyper::Error),
    /// The connection failed while reading the answer body.
    #[error("reading the answer failed: {0}")]
    Body(#[source] hyper::Error),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// A short stable name for summaries: `connect`, `timeout`, `connection`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } | ClientError::Handshake(_) => "connect",
            ClientError::Request(_) | ClientError::Body(_) => "connection",
            ClientError::Timeout(_) => "timeout",
        }
    }
}

/// A URL that loadgen cannot use.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not `http://host[:port][/]`.
    #[error("invalid --url `{url}`: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The host name did not resolve.
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// A non-loopback address without `--allow-remote`.
    #[error("{0} is not a loopback address; pass --allow-remote to load it anyway")]
    Remote(SocketAddr),
}

/// Where requests go: a socket address and the `Host` header naming it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The server's address.
    pub addr: SocketAddr,
    /// The `Host` header value, e.g. `127.0.0.1:8080`.
    pub host: HeaderValue,
}

impl Target {
    /// A target at a known address (a spawned server).
    pub fn at(addr: SocketAddr) -> Self {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self { addr, host }
    }

    /// Parses and resolves `http://host[:port][/]`; refuses addresses that
    /// are not loopback unless `allow_remote`.
    pub async fn resolve(url: &str, allow_remote: bool) -> Result<Self, TargetError> {
        let bad = |why: &str| TargetError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("give the server's base URL, without a path"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| TargetError::Resolve {
                host: host.to_owned(),
                source,
            })?
            // Prefer IPv4: the server binds 0.0.0.0 or 127.0.0.1 by default.
            .min_by_key(std::net::SocketAddr::is_ipv6)
            .ok_or_else(|| bad("the host resolved to no address"))?;
        if !allow_remote && !addr.ip().is_loopback() {
            return Err(TargetError::Remote(addr));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad("the host is not a valid header value"))?;
        Ok(Self { addr, host })
    }
}

/// An answer: status and the whole body (no load answer needs a header).
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The body, read to the end (needed to reuse the connection).
    pub body: Bytes,
}

/// One HTTP/1.1 keep-alive connection.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The driver task owns the socket; stop it with the connection.
        self.driver.abort();
    }
}

impl Conn {
    /// Opens a connection, waiting at most `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let open = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| ClientError::Connect { addr, source })?;
            stream
                .set_nodelay(true)
                .map_err(|source| ClientError::Connect { addr, source })?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(ClientError::Handshake)?;
            // The connection future does the socket I/O; an error there shows
            // up as an error of the request in flight, so it is dropped here.
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Self { sender, driver })
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Whether the connection can take a request. A server that closed an
    /// idle keep-alive connection is noticed here, before anything is sent,
    /// so the caller reconnects instead of losing a request to it.
    pub async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    /// Sends `req` and reads the whole answer, all within `timeout`. After an
    /// error the connection is in an unknown state and must be dropped.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let exchange = async {
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(ClientError::Request)?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(ClientError::Body)?.to_bytes();
            Ok(Answer {
                status: parts.status,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// A request with a `Host` header and, if `json` is given, a JSON body.
pub fn request(
    target: &Target,
    method: Method,
    path: &'static str,
    json: Option<Bytes>,
) -> Request<Full<Bytes>> {
    request_to(target, method, Uri::from_static(path), json)
}

/// Like [`request`] for a path built at run time.
pub fn request_to(
    target: &Target,
    method: Method,
    uri: Uri,
    json: Option<Bytes>,
) -> Request<Full<Bytes>> {
    let has_body = json.is_some();
    let mut req = Request::new(Full::new(json.unwrap_or_default()));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    req.headers_mut().insert(HOST, target.host.clone());
    if has_body {
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_checked() {
        let t = Target::resolve("http://127.0.0.1:8080", false)
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        let t = Target::resolve("http://127.0.0.1/", false).await.unwrap();
        assert_eq!(t.addr.port(), 80);
        let t = Target::resolve("http://[::1]:9000", false).await.unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        for bad in [
            "https://127.0.0.1:8080",
            "127.0.0.1:8080",
            "http://127.0.0.1:8080/api",
            "http://127.0.0.1:8080/?x=1",
            "not a url",
        ] {
            assert!(
                matches!(
                    Target::resolve(bad, false).await,
                    Err(TargetError::Url { .. })
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn remote_targets_need_allow_remote() {
        let err = Target::resolve("http://192.0.2.1:80", false).await;
        assert!(matches!(err, Err(TargetError::Remote(_))));
        assert!(Target::resolve("http://192.0.2.1:80", true).await.is_ok());
    }

    #[test]
    fn requests_carry_host_and_content_type() {
        let t = Target::at("127.0.0.1:9".parse().unwrap());
        let r = request(&t, Method::POST, "/x", Some(Bytes::from_static(b"{}")));
        assert_eq!(r.headers()[HOST], "127.0.0.1:9");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let r = request(&t, Method::GET, "/readyz", None);
        assert!(r.headers().get(CONTENT_TYPE).is_none());
    }
}
