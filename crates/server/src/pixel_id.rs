//! The pixel's user ids for browsers that bring none.
//!
//! A page embeds `<img src=".../pixel.gif?campaign_id=...&ad_id=...">`: the
//! browser sends no `user_id`, and at first no cookie either. `PIXEL_ID`
//! says what the pixel does then:
//!
//! * `cookie` (default): it counts the impression under the hashed id
//!   below and offers that id to the browser as the `PIXEL_COOKIE` cookie
//!   (`Set-Cookie`, [`PixelIds::set_cookie`]). A browser that keeps the
//!   cookie sends it back and keeps that id across days; one that refuses
//!   it (third-party cookies blocked) gets the same hashed id again on its
//!   next request of the day, so it is still deduplicated.
//! * `hash`: no cookie at all; the id is always the hashed one.
//! * `off`: no id is made up; such a request is refused (400), as before
//!   this module existed.
//!
//! # The hashed id
//!
//! ```text
//! day key = HMAC-SHA-256(root, "impression-counter pixel-id day-key v1" || UTC day number, 8 bytes BE)
//! id      = hex(first 16 bytes of HMAC-SHA-256(day key, client address || user agent || campaign))
//! ```
//!
//! each input length-prefixed so that no two input triples give the same
//! message. The root is `PIXEL_HASH_SECRET`, or else the secret the store
//! keeps ([`Store::pixel_id_secret`]: made once per deployment, shared by
//! its nodes, kept across restarts). So:
//!
//! * one browser (address, user agent) on one campaign gets the same id on
//!   every node and across restarts, all UTC day long;
//! * on the next UTC day it gets an unrelated id: without the root, two
//!   days' ids cannot be linked, and with it only by whoever also has the
//!   browser's address and user agent, which the server does not store (its
//!   dedup index holds 128-bit fingerprints of (campaign, ad, id), for
//!   `TTL` plus grace; a day key lives in memory only, for its day);
//! * without the root, ids cannot be recomputed from guessed inputs (the
//!   IPv4 space and common user agents are small enough to enumerate, which
//!   is why the hash is keyed). The root and the day keys are never logged
//!   and have no `Debug` output.
//!
//! The day comes from the application's clock, so tests move it with a
//! manual clock.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderValue;
use hmac::{Hmac, Mac};
use impression_core::{CampaignId, Timestamp};
use parking_lot::Mutex;
use sha2::Sha256;
use tokio::sync::OnceCell;

use crate::secret::Secret;
use crate::storage::{Store, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation of the day keys from any other use of the root.
const DAY_KEY_LABEL: &[u8] = b"impression-counter pixel-id day-key v1";

const DAY_MS: u64 = 24 * 3600 * 1000;

/// `PIXEL_ID` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PixelIdMode {
    /// Mint the hashed id and offer it as a cookie; count under it.
    #[default]
    Cookie,
    /// Count under the hashed id; never set a cookie.
    Hash,
    /// Refuse (400) a pixel without `user_id` or the cookie.
    Off,
}

/// The pixel's settings, from the configuration. `Debug` never shows the
/// secret.
#[derive(Clone, Debug)]
pub struct PixelSettings {
    /// What to do for a browser without an id.
    pub mode: PixelIdMode,
    /// The id cookie's name (`PIXEL_COOKIE`).
    pub cookie: String,
    /// The cookie's `Max-Age`.
    pub cookie_max_age: Duration,
    /// `SameSite=None; Secure` (true) or `SameSite=Lax`.
    pub cookie_secure: bool,
    /// The cookie's `Domain`, if any.
    pub cookie_domain: Option<String>,
    /// The root of the hashed ids, if configured.
    pub hash_secret: Option<Secret>,
}

/// Bytes that must never be printed: the root and the day keys.
struct KeyBytes(Vec<u8>);

/// Makes the pixel's ids: the hashed id and the cookie that carries it.
/// One per application; caches the root (fetched from the store once) and
/// the current day's key.
pub struct PixelIds {
    settings: PixelSettings,
    /// Everything of `Set-Cookie` after the value.
    cookie_attributes: String,
    root: OnceCell<KeyBytes>,
    /// The day number and its key.
    day_key: Mutex<Option<(u64, [u8; 32])>>,
}

impl std::fmt::Debug for PixelIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PixelIds")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PixelIds {
    /// Ids as `settings` say.
    pub fn new(settings: PixelSettings) -> Self {
        let mut attributes = format!(
            "; Max-Age={}; Path=/",
            settings.cookie_max_age.as_secs().max(1)
        );
        if let Some(domain) = &settings.cookie_domain {
            attributes.push_str("; Domain=");
            attributes.push_str(domain);
        }
        attributes.push_str("; HttpOnly");
        attributes.push_str(if settings.cookie_secure {
            "; SameSite=None; Secure"
        } else {
            "; SameSite=Lax"
        });
        let root = match &settings.hash_secret {
            Some(secret) => OnceCell::new_with(Some(KeyBytes(secret.expose().as_bytes().to_vec()))),
            None => OnceCell::new(),
        };
        PixelIds {
            settings,
            cookie_attributes: attributes,
            root,
            day_key: Mutex::new(None),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &PixelSettings {
        &self.settings
    }

    /// The `Set-Cookie` value giving a browser `id`; `None` if `id` cannot
    /// be a cookie value (ids made here always can).
    pub fn set_cookie(&self, id: &str) -> Option<HeaderValue> {
        let cookie_safe = id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\",;\\".contains(&b));
        if id.is_empty() || !cookie_safe {
            return None;
        }
        HeaderValue::from_str(&format!(
            "{}={id}{}",
            self.settings.cookie, self.cookie_attributes
        ))
        .ok()
    }

    /// The hashed id of a browser at `client` with `user_agent`, on
    /// `campaign`, on the UTC day of `at`. Fails only if the root must be
    /// fetched from the store and the store cannot give it.
    pub async fn hashed_id(
        &self,
        store: &dyn Store,
        at: Timestamp,
        client: IpAddr,
        user_agent: &[u8],
        campaign: CampaignId,
    ) -> Result<String, StoreError> {
        let key = self.day_key(store, at.as_millis() / DAY_MS).await?;
        Ok(hashed_id(&key, client, user_agent, campaign))
    }

    async fn day_key(&self, store: &dyn Store, day: u64) -> Result<[u8; 32], StoreError> {
        if let Some((cached, key)) = *self.day_key.lock()
            && cached == day
        {
            return Ok(key);
        }
        let root = self
            .root
            .get_or_try_init(|| async {
                let secret = store.pixel_id_secret().await?;
                Ok::<_, StoreError>(KeyBytes(secret.expose().to_vec()))
            })
            .await?;
        let key = day_key(&root.0, day);
        *self.day_key.lock() = Some((day, key));
        Ok(key)
    }
}

/// The key of UTC day `day` (days since 1970-01-01) under `root`.
fn day_key(root: &[u8], day: u64) -> [u8; 32] {
    let mut mac = new_mac(root);
    mac.update(DAY_KEY_LABEL);
    mac.update(&day.to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// The id of (`client`, `user_agent`, `campaign`) under a day's key.
fn hashed_id(key: &[u8; 32], client: IpAddr, user_agent: &[u8], campaign: CampaignId) -> String {
    let mut mac = new_mac(key);
    let address = match client.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    for part in [address.as_slice(), user_agent, campaign.as_bytes()] {
        mac.update(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC keys have no length limit"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::memory::MemoryStore;
    use clap::Parser;
    use impression_core::EngineConfig;

    fn config(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("impression-counter").chain(args.iter().copied()))
    }

    fn ids(args: &[&str]) -> PixelIds {
        PixelIds::new(config(args).unwrap().pixel())
    }

    const CAMPAIGN: &str = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a";
    /// 2025-01-01T00:00:00Z.
    const DAY0: Timestamp = Timestamp::from_secs(1_735_689_600);

    fn campaign() -> CampaignId {
        CAMPAIGN.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn id_at(ids: &PixelIds, store: &dyn Store, at: Timestamp) -> String {
        ids.hashed_id(store, at, ip("203.0.113.7"), b"Mozilla/5.0", campaign())
            .await
            .unwrap()
    }

    #[test]
    fn the_cookie_says_what_the_settings_say() {
        let cookie = |args: &[&str]| {
            ids(args)
                .set_cookie("0123abcd")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            cookie(&[]),
            "uid=0123abcd; Max-Age=31536000; Path=/; HttpOnly; SameSite=None; Secure"
        );
        assert_eq!(
            cookie(&["--pixel-cookie", "vid", "--pixel-cookie-max-age", "90m"]),
            "vid=0123abcd; Max-Age=5400; Path=/; HttpOnly; SameSite=None; Secure"
        );
        assert_eq!(
            cookie(&["--pixel-cookie-secure", "false"]),
            "uid=0123abcd; Max-Age=31536000; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            cookie(&["--pixel-cookie-domain", "Counter.Example"]),
            "uid=0123abcd; Max-Age=31536000; Path=/; Domain=counter.example; HttpOnly; SameSite=None; Secure"
        );
        let ids = ids(&[]);
        for bad in ["", "a;b", "a b", "\"x\"", "é"] {
            assert_eq!(ids.set_cookie(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn settings_are_validated_and_default_to_cookie_mode() {
        let c = config(&[]).unwrap();
        assert_eq!(c.pixel().mode, PixelIdMode::Cookie);
        assert!(c.pixel.cookie_secure);
        assert_eq!(c.pixel.cookie_max_age, Duration::from_secs(365 * 24 * 3600));
        for (flag, value, wanted) in [
            ("--pixel-id", "sometimes", "--pixel-id"),
            ("--pixel-cookie-max-age", "0s", "at least 1s"),
            ("--pixel-cookie-max-age", "401d", "at most 400d"),
            ("--pixel-cookie-domain", "a b.example", "not a domain"),
            ("--pixel-cookie-domain", "x..example", "not a domain"),
            ("--pixel-cookie-secure", "perhaps", "--pixel-cookie-secure"),
            ("--pixel-hash-secret", "short-secret", "at least 16 bytes"),
        ] {
            let err = config(&[flag, value]).unwrap_err().to_string();
            assert!(err.contains(wanted), "{flag} {value}: {err}");
            assert!(
                flag != "--pixel-hash-secret" || !err.contains(value),
                "the secret is not repeated: {err}"
            );
        }
        for (value, secure) in [
            ("false", false),
            ("0", false),
            ("no", false),
            ("true", true),
        ] {
            let c = config(&["--pixel-cookie-secure", value]).unwrap();
            assert_eq!(c.pixel.cookie_secure, secure, "{value}");
        }
        let c = config(&["--pixel-id", "hash"]).unwrap();
        assert_eq!(c.pixel().mode, PixelIdMode::Hash);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t";
        let c = config(&["--pixel-hash-secret", secret]).unwrap();
        let settings = c.pixel();
        assert_eq!(
            settings.hash_secret.as_ref().map(Secret::expose),
            Some(secret)
        );
        for debug in [
            format!("{c:?}"),
            format!("{settings:?}"),
            format!("{:?}", PixelIds::new(settings.clone())),
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[tokio::test]
    async fn the_key_rotates_at_utc_midnight_and_only_then() {
        let store = MemoryStore::new(EngineConfig::default());
        let ids = ids(&["--pixel-hash-secret", "0123456789abcdef0123"]);
        let morning = id_at(&ids, &store, DAY0).await;
        assert_eq!(morning.len(), 32);
        assert!(morning.bytes().all(|b| b.is_ascii_hexdigit()));
        let last_ms = DAY0.saturating_add(Duration::from_millis(DAY_MS - 1));
        assert_eq!(id_at(&ids, &store, last_ms).await, morning);
        let next_day = DAY0.saturating_add(Duration::from_millis(DAY_MS));
        let tomorrow = id_at(&ids, &store, next_day).await;
        assert_ne!(tomorrow, morning);
        // Back to the first day (a late event): its key again, not a cached one.
        assert_eq!(id_at(&ids, &store, DAY0).await, morning);
        assert_eq!(id_at(&ids, &store, next_day).await, tomorrow);
        // The day keys themselves are unrelated.
        let root = b"0123456789abcdef0123";
        assert_ne!(day_key(root, 20_089), day_key(root, 20_090));
    }

    #[tokio::test]
    async fn every_input_changes_the_id_and_the_same_inputs_never_do() {
        let store = MemoryStore::new(EngineConfig::default());
        let secret = ["--pixel-hash-secret", "a-secret-shared-by-all-nodes"];
        let (a, b) = (ids(&secret), ids(&secret));
        let base = id_at(&a, &store, DAY0).await;
        // Another node (another PixelIds, another store) with the secret.
        let other_store = MemoryStore::new(EngineConfig::default());
        assert_eq!(id_at(&b, &other_store, DAY0).await, base);
        let other_campaign: CampaignId = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6b".parse().unwrap();
        let variants = [
            a.hashed_id(&store, DAY0, ip("203.0.113.8"), b"Mozilla/5.0", campaign()),
            a.hashed_id(&store, DAY0, ip("2001:db8::7"), b"Mozilla/5.0", campaign()),
            a.hashed_id(&store, DAY0, ip("203.0.113.7"), b"Mozilla/5.1", campaign()),
            a.hashed_id(&store, DAY0, ip("203.0.113.7"), b"", campaign()),
            a.hashed_id(
                &store,
                DAY0,
                ip("203.0.113.7"),
                b"Mozilla/5.0",
                other_campaign,
            ),
        ];
        for variant in variants {
            assert_ne!(variant.await.unwrap(), base);
        }
        // An IPv4 client seen through a dual-stack socket is the same client.
        let mapped = a
            .hashed_id(
                &store,
                DAY0,
                ip("::ffff:203.0.113.7"),
                b"Mozilla/5.0",
                campaign(),
            )
            .await
            .unwrap();
        assert_eq!(mapped, base);
        let other_secret = ids(&["--pixel-hash-secret", "another-secret-entirely"]);
        assert_ne!(id_at(&other_secret, &store, DAY0).await, base);
    }

    #[tokio::test]
    async fn without_a_configured_secret_the_stores_is_used() {
        let store = MemoryStore::new(EngineConfig::default());
        let (a, b) = (ids(&[]), ids(&[]));
        // Two applications on one store agree (as nodes on one Redis do).
        assert_eq!(id_at(&a, &store, DAY0).await, id_at(&b, &store, DAY0).await);
        // Another store made its own secret.
        let other = MemoryStore::new(EngineConfig::default());
        assert_ne!(
            id_at(&ids(&[]), &other, DAY0).await,
            id_at(&a, &store, DAY0).await
        );
        // And it is the store's secret the ids come from.
        let root = store.pixel_id_secret().await.unwrap();
        let expected = hashed_id(
            &day_key(root.expose(), DAY0.as_millis() / DAY_MS),
            ip("203.0.113.7"),
            b"Mozilla/5.0",
            campaign(),
        );
        assert_eq!(id_at(&a, &store, DAY0).await, expected);
    }
}
