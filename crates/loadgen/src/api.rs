//! The server calls made around a run, not during it: creating the
//! campaigns, reading their stats, and the readiness probe.
//!
//! These are few and not timed, so they use `serde_json` and simple errors.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};

use crate::client::{ClientError, Conn, Target, request, request_to};

/// How long one control call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A control call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An answer other than the one the contract promises.
    #[error("{what}: expected {expected}, got {status}: {body}")]
    Status {
        /// The call.
        what: &'static str,
        /// The status promised.
        expected: StatusCode,
        /// The status received.
        status: StatusCode,
        /// The start of the body, for the error message.
        body: String,
    },
    /// A body that does not parse.
    #[error("{what}: unexpected body: {source}")]
    Body {
        /// The call.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
}

/// The server's answer to `POST /api/v1/campaigns`.
#[derive(serde::Deserialize)]
struct Created {
    id: String,
}

/// The server's answer to `GET /api/v1/campaigns/{id}/stats`.
#[derive(serde::Deserialize)]
struct Stats {
    total: u64,
    unique_users: UniqueUsers,
}

#[derive(serde::Deserialize)]
struct UniqueUsers {
    total: u64,
}

/// A campaign's all-time counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Counted impressions (`total`).
    pub total: u64,
    /// Distinct users among them (`unique_users.total`).
    pub users: u64,
}

/// A control connection: reconnects after a failed call.
pub struct ControlClient {
    target: Target,
    conn: Option<Conn>,
}

impl ControlClient {
    /// A client for `target`; connects on first use.
    pub fn new(target: Target) -> Self {
        Self { target, conn: None }
    }

    async fn call(
        &mut self,
        what: &'static str,
        req: http::Request<http_body_util::Full<Bytes>>,
        expected: StatusCode,
    ) -> Result<Bytes, ApiError> {
        // The server closes idle keep-alive connections (HEADER_READ_TIMEOUT),
        // possibly just as a call is sent on one that sat idle during a run:
        // such a call is sent again once, on a fresh connection.
        let retry = req.clone();
        let answer = match self.send(req).await {
            Ok(answer) => answer,
            Err(_) => {
                self.conn = None;
                self.send(retry).await.inspect_err(|_| self.conn = None)?
            }
        };
        if answer.status != expected {
            let text = String::from_utf8_lossy(&answer.body);
            return Err(ApiError::Status {
                what,
                expected,
                status: answer.status,
                body: text.chars().take(200).collect(),
            });
        }
        Ok(answer.body)
    }

    async fn send(
        &mut self,
        req: http::Request<http_body_util::Full<Bytes>>,
    ) -> Result<crate::client::Answer, ClientError> {
        let usable = match &mut self.conn {
            Some(c) => c.ready().await,
            None => false,
        };
        let conn = match &mut self.conn {
            Some(c) if usable => c,
            _ => self
                .conn
                .insert(Conn::connect(self.target.addr, CALL_TIMEOUT).await?),
        };
        conn.send(req, CALL_TIMEOUT).await
    }

    /// Creates a campaign starting now; returns its id.
    pub async fn create_campaign(&mut self, name: &str) -> Result<String, ApiError> {
        let body = serde_json::json!({ "name": name }).to_string();
        let req = request(
            &self.target,
            Method::POST,
            "/api/v1/campaigns",
            Some(Bytes::from(body)),
        );
        let what = "creating a campaign";
        let body = self.call(what, req, StatusCode::CREATED).await?;
        let created: Created =
            serde_json::from_slice(&body).map_err(|source| ApiError::Body { what, source })?;
        Ok(created.id)
    }

    /// A campaign's `total` and `unique_users.total`.
    pub async fn counts(&mut self, campaign: &str) -> Result<Counts, ApiError> {
        let what = "reading stats";
        let uri: Uri = format!("/api/v1/campaigns/{campaign}/stats")
            .parse()
            .map_err(|_| ApiError::Status {
                what,
                expected: StatusCode::OK,
                status: StatusCode::BAD_REQUEST,
                body: format!("campaign id `{campaign}` cannot be part of a path"),
            })?;
        let req = request_to(&self.target, Method::GET, uri, None);
        let body = self.call(what, req, StatusCode::OK).await?;
        let stats: Stats =
            serde_json::from_slice(&body).map_err(|source| ApiError::Body { what, source })?;
        Ok(Counts {
            total: stats.total,
            users: stats.unique_users.total,
        })
    }

    /// Whether `GET /readyz` answers 200.
    pub async fn ready(&mut self) -> bool {
        let req = request(&self.target, Method::GET, "/readyz", None);
        self.call("readiness", req, StatusCode::OK).await.is_ok()
    }
}
