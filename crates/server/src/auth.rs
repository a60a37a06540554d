//! API keys for the management endpoints.
//!
//! Tracking (`POST /impressions`, batch, pixel) is always open: browsers and
//! SDKs call it. Creating, listing and reading campaigns, stats, time series
//! and metrics belong to an advertiser's back office; when keys are
//! configured (`API_KEYS`, `API_KEYS_FILE`) they need
//! `Authorization: Bearer <key>`, and anything else is answered 401 with
//! `WWW-Authenticate: Bearer`.
//!
//! Keys are kept only as SHA-256 digests and a presented token is compared
//! with every one of them in constant time (`subtle`), so neither the
//! comparison's timing nor its early exit tells how much of a guess was
//! right, and a key's length does not leak either. Keys are never logged.
//! `API_KEYS_FILE` is re-read on SIGHUP, so keys rotate without a restart:
//! add the new key, reload, move clients over, remove the old one, reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Where the keys come from (`API_KEYS`, `API_KEYS_FILE`).
#[derive(Clone, Default)]
pub struct KeySources {
    /// Comma-separated keys.
    pub inline: Option<String>,
    /// A file of one key per line, re-read on SIGHUP.
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for KeySources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySources")
            .field("inline", &self.inline.as_ref().map(|_| "***"))
            .field("file", &self.file)
            .finish()
    }
}

/// The accepted keys (as digests), swappable at run time.
#[derive(Debug)]
pub struct ApiKeys {
    source: KeySources,
    digests: RwLock<Arc<Vec<[u8; 32]>>>,
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot read API_KEYS_FILE {path}")]
pub struct KeyFileError {
    path: String,
    source: std::io::Error,
}

impl ApiKeys {
    /// Loads the keys from their sources.
    pub fn load(source: KeySources) -> Result<Self, KeyFileError> {
        let keys = ApiKeys {
            source,
            digests: RwLock::new(Arc::new(Vec::new())),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Keys that accept nothing and protect nothing (open access).
    pub fn open() -> Self {
        ApiKeys {
            source: KeySources::default(),
            digests: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// Re-reads the sources; returns how many keys are now accepted. On
    /// error the previous keys stay in force.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let mut keys: Vec<String> = Vec::new();
        if let Some(inline) = &self.source.inline {
            keys.extend(inline.split(',').map(str::trim).map(str::to_owned));
        }
        if let Some(path) = &self.source.file {
            keys.extend(read_key_file(path)?);
        }
        keys.retain(|k| !k.is_empty());
        let digests: Vec<[u8; 32]> = keys.iter().map(|k| digest(k)).collect();
        let count = digests.len();
        *self.digests.write() = Arc::new(digests);
        Ok(count)
    }

    /// Whether any key is configured (otherwise everything is open).
    pub fn enabled(&self) -> bool {
        self.source.inline.is_some() || self.source.file.is_some()
    }

    /// Whether `token` is one of the keys, in time independent of which
    /// key (if any) it matches.
    pub fn accepts(&self, token: &str) -> bool {
        let presented = digest(token);
        let digests = Arc::clone(&self.digests.read());
        digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&presented))
            .into()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn read_key_file(path: &Path) -> Result<Vec<String>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Middleware: lets a request through only with a valid bearer key, when
/// keys are configured.
pub async fn require_key(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    if !keys.enabled() {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match token {
        Some(token) if keys.accepts(token) => next.run(request).await,
        Some(_) => ApiError::Unauthorized("the API key is not valid".into()).into_response(),
        None => ApiError::Unauthorized(
            "this endpoint needs an API key: send `Authorization: Bearer <key>`".into(),
        )
        .into_response(),
    }
}

/// Re-reads the keys on every SIGHUP, until the process ends.
pub fn reload_on_sighup(keys: Arc<ApiKeys>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot listen for SIGHUP: API keys will not reload");
            return;
        };
        while hangups.recv().await.is_some() {
            match keys.reload() {
                Ok(n) => tracing::info!(keys = n, "API keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %crate::telemetry::chain(&e), "API keys not reloaded; the previous keys stay in force");
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = keys;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_file_keys_are_accepted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            "# rotated 2025-01-01\nfile-key-1\n\n  file-key-2  \n",
        )
        .unwrap();
        let keys = ApiKeys::load(KeySources {
            inline: Some("inline-a, inline-b".into()),
            file: Some(file.clone()),
        })
        .unwrap();
        assert!(keys.enabled());
        for good in ["inline-a", "inline-b", "file-key-1", "file-key-2"] {
            assert!(keys.accepts(good), "{good}");
        }
        for bad in [
            "",
            "inline",
            "inline-a ",
            "file-key-3",
            "# rotated 2025-01-01",
        ] {
            assert!(!keys.accepts(bad), "{bad:?}");
        }
    }

    #[test]
    fn reload_picks_up_a_rotated_file_and_keeps_old_keys_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "old\n").unwrap();
        let keys = ApiKeys::load(KeySources {
            inline: None,
            file: Some(file.clone()),
        })
        .unwrap();
        assert!(keys.accepts("old"));
        std::fs::write(&file, "new\n").unwrap();
        assert_eq!(keys.reload().unwrap(), 1);
        assert!(keys.accepts("new") && !keys.accepts("old"));
        std::fs::remove_file(&file).unwrap();
        assert!(keys.reload().is_err());
        assert!(
            keys.accepts("new"),
            "a failed reload keeps the keys in force"
        );
    }

    #[test]
    fn without_keys_everything_is_open() {
        let keys = ApiKeys::load(KeySources::default()).unwrap();
        assert!(!keys.enabled());
        assert!(!ApiKeys::open().enabled());
    }
}
