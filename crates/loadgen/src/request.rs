//! The load requests of each mode, and what their answers mean.
//!
//! [`Encoder`] writes bodies (or pixel query strings) by hand into one
//! reused buffer: the ids are generated, never contain characters that need
//! JSON or URL escaping (`u123`, `ad4`, UUIDs), and skipping `serde_json`
//! on this path keeps loadgen's cost per request small.
//!
//! [`classify`] reads an answer into a [`Verdict`]: every impression
//! acknowledged, some rejected (batch), none counted (a 4xx or a 503: the
//! server refused before queueing), or unknown (any other 5xx, an
//! unreadable 2xx batch answer).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;

use crate::args::Mode;
use crate::client::{Target, request_to};
use crate::workload::Key;

/// Path of the single-impression endpoint.
pub const SINGLE_PATH: &str = "/api/v1/impressions";
/// Path of the batch endpoint.
pub const BATCH_PATH: &str = "/api/v1/impressions/batch";
/// Path of the tracking pixel.
pub const PIXEL_PATH: &str = "/api/v1/impressions/pixel.gif";

/// Builds the requests of one mode; one per connection task (it owns a
/// buffer that is reused from request to request).
pub struct Encoder {
    mode: Mode,
    ndjson: bool,
    target: Target,
    /// Campaign ids, by index.
    campaigns: Vec<String>,
    buf: BytesMut,
}

impl Encoder {
    /// An encoder for `mode` (and `ndjson` in batch mode) with these
    /// campaign ids.
    pub fn new(mode: Mode, ndjson: bool, target: Target, campaigns: Vec<String>) -> Self {
        Self {
            mode,
            ndjson,
            target,
            campaigns,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// The request carrying `keys` (exactly one key except in batch mode).
    pub fn request(&mut self, keys: &[Key]) -> Request<Full<Bytes>> {
        // The previous request's bytes were frozen and sent; once hyper
        // dropped them, `reserve` reclaims the same allocation.
        self.buf.clear();
        self.buf.reserve(4096);
        match self.mode {
            Mode::Single => {
                self.object(keys[0]);
                let body = self.buf.split().freeze();
                request_to(
                    &self.target,
                    Method::POST,
                    Uri::from_static(SINGLE_PATH),
                    Some(body),
                )
            }
            Mode::Batch => {
                if self.ndjson {
                    for &k in keys {
                        self.object(k);
                        self.buf.put_u8(b'\n');
                    }
                } else {
                    self.buf.put_u8(b'[');
                    for (i, &k) in keys.iter().enumerate() {
                        if i > 0 {
                            self.buf.put_u8(b',');
                        }
                        self.object(k);
                    }
                    self.buf.put_u8(b']');
                }
                let body = self.buf.split().freeze();
                let mut req = request_to(
                    &self.target,
                    Method::POST,
                    Uri::from_static(BATCH_PATH),
                    Some(body),
                );
                if self.ndjson {
                    req.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-ndjson"),
                    );
                }
                req
            }
            Mode::Pixel => {
                let k = keys[0];
                self.buf.put_slice(PIXEL_PATH.as_bytes());
                self.buf.put_slice(b"?campaign_id=");
                self.buf
                    .put_slice(self.campaigns[k.campaign as usize].as_bytes());
                self.buf.put_slice(b"&ad_id=ad");
                self.number(u64::from(k.ad));
                self.buf.put_slice(b"&user_id=u");
                self.number(k.user);
                let uri = Uri::from_maybe_shared(self.buf.split().freeze())
                    // Only reachable if a campaign id held characters a URI
                    // cannot; the server's ids are UUIDs.
                    .unwrap_or_else(|_| Uri::from_static(PIXEL_PATH));
                request_to(&self.target, Method::GET, uri, None)
            }
        }
    }

    /// `{"campaign_id":"…","user_id":"u…","ad_id":"ad…"}`
    fn object(&mut self, k: Key) {
        self.buf.put_slice(br#"{"campaign_id":""#);
        self.buf
            .put_slice(self.campaigns[k.campaign as usize].as_bytes());
        self.buf.put_slice(br#"","user_id":"u"#);
        self.number(k.user);
        self.buf.put_slice(br#"","ad_id":"ad"#);
        self.number(u64::from(k.ad));
        self.buf.put_slice(br#""}"#);
    }

    fn number(&mut self, n: u64) {
        self.buf.put_slice(itoa::Buffer::new().format(n).as_bytes());
    }
}

/// What an answer says about the impressions of its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// All acknowledged (202, or 200 for the pixel).
    Acked,
    /// Batch: all acknowledged except these, which were rejected.
    Partial(Vec<Rejected>),
    /// None counted: the server refused the request before queueing (4xx,
    /// 503).
    Refused,
    /// Unknown: a server error (5xx other than 503) or an unreadable
    /// success answer; each impression may or may not have been counted.
    Unknown,
}

/// One rejected item of a batch answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Rejected {
    /// Position in the request.
    pub index: usize,
    /// Its status (400, 404, 409, ...).
    pub code: u16,
}

/// The batch endpoint's 202 body; `error` texts are not needed.
#[derive(Debug, serde::Deserialize)]
struct BatchAnswer {
    accepted: u64,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

/// Reads the answer to a request of `mode` carrying `n` impressions.
pub fn classify(mode: Mode, n: usize, status: StatusCode, body: &[u8]) -> Verdict {
    let success = match mode {
        Mode::Single | Mode::Batch => StatusCode::ACCEPTED,
        Mode::Pixel => StatusCode::OK,
    };
    if status == success {
        return match mode {
            Mode::Batch => classify_batch(n, body),
            Mode::Single | Mode::Pixel => Verdict::Acked,
        };
    }
    if status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE {
        Verdict::Refused
    } else {
        // Another 2xx/3xx is not the contract: treat like a server error.
        Verdict::Unknown
    }
}

fn classify_batch(n: usize, body: &[u8]) -> Verdict {
    let Ok(answer) = serde_json::from_slice::<BatchAnswer>(body) else {
        return Verdict::Unknown;
    };
    let mut rejected = answer.rejected;
    rejected.sort_unstable_by_key(|r| r.index);
    let consistent = rejected.windows(2).all(|w| w[0].index < w[1].index)
        && rejected.last().is_none_or(|r| r.index < n)
        && answer.accepted == (n - rejected.len()) as u64;
    if !consistent {
        Verdict::Unknown
    } else if rejected.is_empty() {
        Verdict::Acked
    } else {
        Verdict::Partial(rejected)
    }
}

#[cfg(test)]
mod tests {
    use http::header::HOST;
    use http_body_util::BodyExt;

    use super::*;

    const CAMPAIGN: &str = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a";

    fn encoder(mode: Mode, ndjson: bool) -> Encoder {
        let target = Target::at("127.0.0.1:8080".parse().unwrap());
        Encoder::new(mode, ndjson, target, vec![CAMPAIGN.to_owned(), "c1".into()])
    }

    fn key(campaign: u32, ad: u32, user: u64) -> Key {
        Key { campaign, ad, user }
    }

    async fn body(req: Request<Full<Bytes>>) -> serde_json::Value {
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn single_body_is_the_track_json() {
        let mut e = encoder(Mode::Single, false);
        let req = e.request(&[key(0, 3, 42)]);
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), SINGLE_PATH);
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(
            body(req).await,
            serde_json::json!({"campaign_id": CAMPAIGN, "user_id": "u42", "ad_id": "ad3"})
        );
        // The buffer is reused: the next request is independent.
        let req = e.request(&[key(1, 0, 7)]);
        assert_eq!(
            body(req).await,
            serde_json::json!({"campaign_id": "c1", "user_id": "u7", "ad_id": "ad0"})
        );
    }

    #[tokio::test]
    async fn batch_bodies_are_arrays_or_ndjson() {
        let keys = [key(0, 1, 2), key(1, 3, 4)];
        let mut e = encoder(Mode::Batch, false);
        let req = e.request(&keys);
        assert_eq!(req.uri(), BATCH_PATH);
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            body(req).await,
            serde_json::json!([
                {"campaign_id": CAMPAIGN, "user_id": "u2", "ad_id": "ad1"},
                {"campaign_id": "c1", "user_id": "u4", "ad_id": "ad3"},
            ])
        );

        let mut e = encoder(Mode::Batch, true);
        let req = e.request(&keys);
        assert_eq!(req.headers()[CONTENT_TYPE], "application/x-ndjson");
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["user_id"], "u4");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn pixel_is_a_get_with_a_query() {
        let mut e = encoder(Mode::Pixel, false);
        let req = e.request(&[key(0, 9, 123)]);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(
            req.uri().to_string(),
            format!("{PIXEL_PATH}?campaign_id={CAMPAIGN}&ad_id=ad9&user_id=u123")
        );
        assert!(req.headers().get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn statuses_are_classified() {
        let s = |code| StatusCode::from_u16(code).unwrap();
        assert_eq!(classify(Mode::Single, 1, s(202), b""), Verdict::Acked);
        assert_eq!(classify(Mode::Single, 1, s(200), b""), Verdict::Unknown);
        assert_eq!(classify(Mode::Pixel, 1, s(200), b"GIF89a"), Verdict::Acked);
        assert_eq!(classify(Mode::Pixel, 1, s(202), b""), Verdict::Unknown);
        for refused in [400, 404, 409, 413, 415, 503] {
            assert_eq!(classify(Mode::Single, 1, s(refused), b""), Verdict::Refused);
        }
        assert_eq!(classify(Mode::Single, 1, s(500), b""), Verdict::Unknown);
        assert_eq!(classify(Mode::Single, 1, s(502), b""), Verdict::Unknown);
    }

    #[test]
    fn batch_answers_are_checked() {
        let ok = StatusCode::ACCEPTED;
        assert_eq!(
            classify(Mode::Batch, 3, ok, br#"{"accepted":3,"rejected":[]}"#),
            Verdict::Acked
        );
        assert_eq!(
            classify(
                Mode::Batch,
                3,
                ok,
                br#"{"accepted":1,"rejected":[{"index":2,"error":"x","code":404},{"index":0,"error":"y","code":400}]}"#
            ),
            Verdict::Partial(vec![
                Rejected {
                    index: 0,
                    code: 400
                },
                Rejected {
                    index: 2,
                    code: 404
                }
            ])
        );
        // Inconsistent or unreadable answers: outcome unknown.
        for bad in [
            &br#"{"accepted":3,"rejected":[{"index":0,"error":"x","code":400}]}"#[..],
            br#"{"accepted":2,"rejected":[{"index":3,"error":"x","code":400}]}"#,
            br#"{"accepted":1,"rejected":[{"index":1,"code":400},{"index":1,"code":400}]}"#,
            b"not json",
        ] {
            assert_eq!(classify(Mode::Batch, 3, ok, bad), Verdict::Unknown);
        }
        assert_eq!(
            classify(Mode::Batch, 3, StatusCode::BAD_REQUEST, b"{}"),
            Verdict::Refused
        );
    }
}
