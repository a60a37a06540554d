//! The tracking pixel in a real headless Chromium, as a publisher uses it:
//! the README's `<img>` snippet pasted into a page on another site.
//!
//! The page is served from `http://127.0.0.1:<A>` and the pixel from the
//! application at `http://localhost:<B>`: two different sites (a site is
//! scheme plus host; ports do not count, and `127.0.0.1` and `localhost`
//! are different hosts), so the id cookie is a third-party cookie there, as
//! on a real publisher's page.
//!
//! What Chromium 156 (Debian, headless, fresh profile) was found to do,
//! by trying each case with a pixel that set test cookies:
//!
//! * `http://localhost` counts as a secure context for cookies: a
//!   `SameSite=None; Secure` cookie set by a plain-HTTP response from
//!   `localhost` in a cross-site `<img>` is stored (`secure: true`,
//!   `sameSite: None`) and sent back on the next load, when third-party
//!   cookies are allowed. So the default cookie works in these tests
//!   without TLS.
//! * `SameSite=None` without `Secure` is refused outright, even from
//!   localhost. Hence `PIXEL_COOKIE_SECURE=false` gives `SameSite=Lax`.
//! * From a plain-HTTP host that is not loopback (`devbox`, mapped to
//!   127.0.0.1 with `--host-resolver-rules`), `Secure` cookies are refused
//!   and a `Lax` one works when page and pixel are the same site.
//! * A fresh headless profile blocks third-party cookies by default. The
//!   preference `profile.cookie_controls_mode` decides (0 allow, 1 block,
//!   2 block in incognito only; the older `profile.block_third_party_cookies`
//!   changes nothing), and the switch `--test-third-party-cookie-phaseout`
//!   blocks them even when the preference allows. The harness sets the
//!   preference to 0 in every browser, and a blocked browser differs only
//!   by the switch; the tests prove it is in effect by looking in the
//!   browser's cookie store (through DevTools, which sees every site's
//!   `HttpOnly` cookies).
//!
//! The application's clock is a manual one, so "the next day" is a clock
//! step, not a wait.

use std::time::Duration;

use crate::browser::{Browser, BrowserOptions, Site, StoredCookie};
use crate::helpers::{TestApp, eventually, metric, spawn_app_with};

/// The README's pixel snippet, with the counter's address and the campaign
/// filled in as a publisher would.
fn readme_snippet(counter: &str, campaign: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("the README");
    let start = readme
        .find(r#"<img src="https://counter.example/api/v1/impressions/pixel.gif?"#)
        .expect("the README shows the pixel's <img> snippet");
    let end = start + readme[start..].find('>').expect("the snippet's end") + 1;
    let snippet = &readme[start..end];
    assert!(snippet.contains("campaign_id=..."), "{snippet}");
    snippet
        .replace("https://counter.example", counter)
        .replace("campaign_id=...", &format!("campaign_id={campaign}"))
}

/// A publisher's article embedding the pixel of `campaign` served by `app`
/// under the host name `counter_host`.
async fn publisher_site(app: &TestApp, counter_host: &str, campaign: &str) -> Site {
    let port = app.base.rsplit(':').next().expect("a port");
    let snippet = readme_snippet(&format!("http://{counter_host}:{port}"), campaign);
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Publisher</title></head>\
         <body style=\"font: 20px sans-serif; margin: 40px\">\
         <h1>Publisher's article</h1><p id=\"text\">An article with an ad's tracking pixel \
         below, loaded from another site.</p>{snippet}</body></html>"
    );
    Site::serve(vec![("/article", page)]).await
}

/// Loads the article `times` times, each a new navigation.
async fn read_article(browser: &Browser, site: &Site, times: usize) {
    for _ in 0..times {
        browser.goto(&site.url("/article")).await;
        // The pixel has loaded (the load event waits for images): a 1x1
        // image, not a broken one.
        let width = browser
            .eval("return document.querySelector('img').naturalWidth")
            .await;
        assert_eq!(width, 1, "the pixel loaded as a 1x1 GIF");
    }
}

async fn total(app: &TestApp, campaign: &str) -> u64 {
    app.counts(campaign).await.2
}

/// Waits until `app` has applied `received` pixel requests, then returns
/// the campaign's total.
async fn settled_total(app: &TestApp, campaign: &str, received: u64) -> u64 {
    eventually(Duration::from_secs(10), || async {
        let text = app.metrics().await;
        let counted: u64 =
            metric(&text, "impressions_duplicate_total").unwrap_or(0) + total(app, campaign).await;
        metric(&text, "impressions_received_total") == Some(received) && counted == received
    })
    .await;
    total(app, campaign).await
}

fn id_cookies(cookies: &[StoredCookie]) -> Vec<&StoredCookie> {
    cookies.iter().filter(|c| c.name == "uid").collect()
}

fn with_user_agent(third_party_cookies: bool, profile: &str) -> BrowserOptions {
    BrowserOptions {
        third_party_cookies,
        // A second person: a fresh profile alone, from the same address
        // with the same user agent on the same day, has the same hashed
        // id by design until it holds a cookie of its own.
        user_agent: Some(format!(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/156.0.0.0 Safari/537.36 {profile}"
        )),
        ..BrowserOptions::default()
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_mode_counts_a_browser_once_and_a_fresh_profile_once_more() {
    // A TTL longer than a day: a browser identified by its hashed id
    // would be counted again on the next day (a new day's id), one
    // identified by its cookie would not.
    let app = spawn_app_with(&["--ttl", "48h"]).await;
    let c = app.create_campaign("summer").await;
    let site = publisher_site(&app, "localhost", &c).await;

    let browser = Browser::launch_with(with_user_agent(true, "profile-1")).await;
    read_article(&browser, &site, 3).await;
    assert_eq!(settled_total(&app, &c, 3).await, 1);
    let shot = browser.screenshot("pixel-publisher-page").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "{shot:?}");
    assert!(
        browser.text("#text").await.contains("tracking pixel"),
        "the page rendered"
    );

    // The browser holds the id cookie, as the pixel set it, for the
    // counter's host, third-party as it was.
    let cookies = browser.all_cookies().await;
    let ids = id_cookies(&cookies);
    assert_eq!(ids.len(), 1, "{cookies:?}");
    let uid = ids[0];
    assert_eq!(uid.domain, "localhost");
    assert_eq!(uid.path, "/");
    assert!(uid.secure && uid.http_only, "{uid:?}");
    assert_eq!(uid.same_site.as_deref(), Some("None"));
    let year_from_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 364.0 * 86400.0;
    assert!(uid.expires.is_some_and(|t| t > year_from_now), "{uid:?}");
    let uid = uid.clone();

    // The next day the hashed id is another; the cookie still names the
    // browser, so two more views count nothing.
    app.clock.advance(DAY);
    read_article(&browser, &site, 2).await;
    assert_eq!(
        settled_total(&app, &c, 5).await,
        1,
        "the cookie was sent back"
    );
    browser.close().await;

    // A fresh profile (another person): one more, however often.
    let fresh = Browser::launch_with(with_user_agent(true, "profile-2")).await;
    read_article(&fresh, &site, 3).await;
    assert_eq!(settled_total(&app, &c, 8).await, 2);
    let theirs = fresh.all_cookies().await;
    let their_id = id_cookies(&theirs);
    assert_eq!(their_id.len(), 1, "{theirs:?}");
    assert_ne!(their_id[0].value, uid.value);
    fresh.close().await;

    let text = app.metrics().await;
    assert_eq!(
        metric(&text, r#"impressions_counted_total{id_source="minted"}"#),
        Some(2),
        "{text}"
    );
    // The first impression was counted under exactly the cookie's id.
    assert_eq!(
        app.track_and_wait(&c, &uid.value, "banner-1").await,
        "duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_third_party_cookies_blocked_cookie_mode_still_counts_once_per_browser() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("summer").await;
    let site = publisher_site(&app, "localhost", &c).await;

    let blocked = Browser::launch_with(with_user_agent(false, "blocked-1")).await;
    read_article(&blocked, &site, 3).await;
    // Counted once: the cookie offered each time was refused, and the
    // hashed id (address, user agent, campaign, day) deduplicated.
    assert_eq!(settled_total(&app, &c, 3).await, 1);
    // The switch is in effect: the browser kept no cookie of the counter
    // (a browser that allows them does: the test above).
    let cookies = blocked.all_cookies().await;
    assert!(id_cookies(&cookies).is_empty(), "{cookies:?}");
    blocked
        .screenshot("pixel-third-party-cookies-blocked")
        .await;
    blocked.close().await;

    let another = Browser::launch_with(with_user_agent(false, "blocked-2")).await;
    read_article(&another, &site, 3).await;
    assert_eq!(settled_total(&app, &c, 6).await, 2);
    assert!(id_cookies(&another.all_cookies().await).is_empty());
    another.close().await;

    let text = app.metrics().await;
    assert_eq!(
        metric(&text, r#"impressions_counted_total{id_source="minted"}"#),
        Some(2),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_mode_counts_once_per_browser_and_sets_no_cookie() {
    let app = spawn_app_with(&["--pixel-id", "hash"]).await;
    let c = app.create_campaign("summer").await;
    let site = publisher_site(&app, "localhost", &c).await;

    // Third-party cookies allowed: had the pixel set one, it would be kept.
    let browser = Browser::launch_with(with_user_agent(true, "hash-1")).await;
    read_article(&browser, &site, 3).await;
    assert_eq!(settled_total(&app, &c, 3).await, 1);
    let cookies = browser.all_cookies().await;
    assert!(cookies.is_empty(), "no cookie at all: {cookies:?}");
    browser.close().await;

    let another = Browser::launch_with(with_user_agent(true, "hash-2")).await;
    read_article(&another, &site, 2).await;
    assert_eq!(settled_total(&app, &c, 5).await, 2);
    assert!(another.all_cookies().await.is_empty());
    another.close().await;

    let text = app.metrics().await;
    assert_eq!(
        metric(&text, r#"impressions_counted_total{id_source="hash"}"#),
        Some(2),
        "{text}"
    );
}

/// `PIXEL_COOKIE_SECURE=false` for plain-HTTP development on a host that is
/// not `localhost` (here `devbox`, resolved to 127.0.0.1 by the browser):
/// the default `Secure` cookie is refused there, the `Lax` one is kept and
/// sent when the page is on the same site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_development_needs_pixel_cookie_secure_false() {
    let devbox = || BrowserOptions {
        extra_args: vec!["--host-resolver-rules=MAP devbox 127.0.0.1".into()],
        ..BrowserOptions::default()
    };
    for (flags, kept) in [
        (&["--ttl", "48h"][..], false),
        (
            &["--ttl", "48h", "--pixel-cookie-secure", "false"][..],
            true,
        ),
    ] {
        let app = spawn_app_with(flags).await;
        let c = app.create_campaign("dev").await;
        let site = publisher_site(&app, "devbox", &c).await;
        let page_port = site.base.rsplit(':').next().unwrap().to_owned();
        let browser = Browser::launch_with(devbox()).await;
        browser
            .goto(&format!("http://devbox:{page_port}/article"))
            .await;
        let cookies = browser.all_cookies().await;
        let ids = id_cookies(&cookies);
        assert_eq!(ids.len(), usize::from(kept), "{flags:?}: {cookies:?}");
        if kept {
            assert!(!ids[0].secure, "{cookies:?}");
            assert_eq!(ids[0].same_site.as_deref(), Some("Lax"));
            // The next day, the cookie (not the hash) names the browser.
            app.clock.advance(DAY);
            browser
                .goto(&format!("http://devbox:{page_port}/article"))
                .await;
            assert_eq!(settled_total(&app, &c, 2).await, 1);
        }
        browser.close().await;
    }
}
