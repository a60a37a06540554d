//! The dashboard in a real headless Chromium (the harness of
//! `browser.rs`), against the real server: numbers move live without a
//! reload, charts render, hostile names stay text, the API-key prompt gates
//! the data, and the pages fit a phone.
//!
//! Screenshots land in `target/browser-screenshots/` for people to look
//! at. `docs/dashboard.png`, the README's picture, is written by the
//! ignored test `write_the_readme_screenshot` (`cargo test -p
//! impression-counter --test api dashboard_browser::write_the_readme_screenshot
//! -- --ignored`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::browser::{Browser, BrowserOptions};
use crate::helpers::{TestApp, spawn_app_with};

/// What a hostile advertiser would name things.
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// Waits (at most `within`) until the text of `selector` is `expected`.
async fn wait_for_text(browser: &Browser, selector: &str, expected: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = browser
            .client()
            .find(fantoccini::Locator::Css(selector))
            .await
            && let Ok(text) = element.text().await
        {
            if text == expected {
                return;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{selector} shows {last:?}, not {expected:?}, after {within:?}");
}

/// Posts `n` impressions of `ad` (distinct users) and waits until counted.
async fn post_impressions(app: &TestApp, campaign: &str, ad: &str, n: usize, tag: &str) {
    let users: Vec<usize> = (0..n).collect();
    for chunk in users.chunks(5_000) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({ "campaign_id": campaign, "user_id": format!("{tag}-{i}"), "ad_id": ad }))
            .collect();
        let response = app
            .post_json("/api/v1/impressions/batch?wait=true", &json!(batch))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["counted"], chunk.len(), "{body}");
    }
}

/// Whether the page shows a JavaScript dialog (an `alert` that ran).
async fn alert_open(browser: &Browser) -> bool {
    browser.client().get_alert_text().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_a_campaign_whose_total_moves_live() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("Summer sale").await;
    post_impressions(&app, &c, "banner", 2, "a").await;
    let browser = Browser::launch().await;
    // The service's root is the dashboard.
    browser.goto(&app.url("/")).await;
    let url = browser.client().current_url().await.unwrap();
    assert_eq!(url.path(), "/dashboard");
    let row = format!("tr[data-campaign=\"{c}\"]");
    assert_eq!(browser.text(&format!("{row} td.name")).await, "Summer sale");
    wait_for_text(
        &browser,
        &format!("{row} td.total"),
        "2",
        Duration::from_secs(3),
    )
    .await;
    wait_for_text(
        &browser,
        &format!("{row} td.users"),
        "2",
        Duration::from_secs(3),
    )
    .await;

    // Impressions arrive; the page follows without a reload.
    browser
        .eval("window.__notReloaded = true; return true")
        .await;
    post_impressions(&app, &c, "banner", 1_500, "b").await;
    wait_for_text(
        &browser,
        &format!("{row} td.total"),
        "1,502",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        browser.eval("return window.__notReloaded === true").await,
        true
    );

    // The filter hides what does not match.
    let other = app.create_campaign("Winter clearance").await;
    browser.goto(&app.url("/dashboard")).await;
    browser
        .find(&format!("tr[data-campaign=\"{other}\"]"))
        .await;
    browser
        .find("#filter")
        .await
        .send_keys("summer")
        .await
        .unwrap();
    let visible = browser
        .eval("return Array.from(document.querySelectorAll('#campaigns tbody tr')).filter(r => !r.hidden).map(r => r.dataset.campaign)")
        .await;
    assert_eq!(visible, json!([c]));
    browser.screenshot("dashboard-list").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_creates_a_campaign_and_opens_its_page() {
    let app = spawn_app_with(&[]).await;
    let browser = Browser::launch().await;
    browser.goto(&app.url("/dashboard")).await;
    browser.find("#content:not([hidden])").await;
    browser
        .find("#create-name")
        .await
        .send_keys("Made in the browser")
        .await
        .unwrap();
    browser.click("#create-form button[type=submit]").await;
    wait_for_text(
        &browser,
        "#name",
        "Made in the browser",
        Duration::from_secs(5),
    )
    .await;
    let list: Value = app.get("/api/v1/campaigns").await.json().await.unwrap();
    let id = list["campaigns"][0]["id"].as_str().unwrap().to_owned();
    let url = browser.client().current_url().await.unwrap();
    assert_eq!(url.path(), format!("/dashboard/campaigns/{id}"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_campaign_page_counts_and_charts_live() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("Live campaign").await;
    post_impressions(&app, &c, "ad-small", 3, "a").await;
    let browser = Browser::launch().await;
    browser
        .goto(&app.url(&format!("/dashboard/campaigns/{c}")))
        .await;
    wait_for_text(&browser, "#name", "Live campaign", Duration::from_secs(3)).await;
    wait_for_text(&browser, "#c-total", "3", Duration::from_secs(3)).await;
    wait_for_text(&browser, "#u-total", "3", Duration::from_secs(3)).await;
    wait_for_text(&browser, "#live", "live", Duration::from_secs(3)).await;
    // uPlot drew both charts (its canvas), under the page's policy.
    browser.find("#chart-seconds canvas").await;
    browser.find("#chart-history canvas").await;

    post_impressions(&app, &c, "ad-big", 1_200, "b").await;
    post_impressions(&app, &c, "ad-a", 1, "c").await;
    // Counters, per-second numbers and the ad table follow within 3 s
    // (unique users beyond 128 are an estimate: not compared here).
    wait_for_text(&browser, "#c-total", "1,204", Duration::from_secs(3)).await;
    wait_for_text(&browser, "#sec-now", "1,204", Duration::from_secs(3)).await;
    wait_for_text(&browser, "#sec-minute", "1,204", Duration::from_secs(3)).await;
    // Top ads first.
    wait_for_text(
        &browser,
        "#ads tbody tr:first-child td.ad",
        "ad-big",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        browser.text("#ads tbody tr:nth-child(2) td.ad").await,
        "ad-small"
    );
    assert_eq!(
        browser.text("#ads tbody tr:nth-child(3) td.ad").await,
        "ad-a"
    );
    // Sorting by ad id puts them in name order, and again in reverse.
    browser.click("#ads thead button[data-sort=ad]").await;
    wait_for_text(
        &browser,
        "#ads tbody tr:first-child td.ad",
        "ad-a",
        Duration::from_secs(2),
    )
    .await;
    browser.click("#ads thead button[data-sort=ad]").await;
    wait_for_text(
        &browser,
        "#ads tbody tr:first-child td.ad",
        "ad-small",
        Duration::from_secs(2),
    )
    .await;
    // The snippet names this campaign on this server.
    let snippet = browser.text("#snippet").await;
    assert!(
        snippet.starts_with(&format!(
            "<img src=\"{}/api/v1/impressions/pixel.gif?campaign_id={c}&ad_id=AD_ID\"",
            app.base
        )),
        "{snippet}"
    );
    // The ingest panel reads the same numbers as /metrics.
    wait_for_text(&browser, "#i-queue", "0 of 1,000", Duration::from_secs(4)).await;
    // Per day in another zone: the chart is redrawn.
    browser.click(".tabs button[data-res=day]").await;
    browser.find("#tz-label:not([hidden])").await;
    wait_for_text(
        &browser,
        "#history-note",
        "Impressions per calendar day in UTC, last 30 days.",
        Duration::from_secs(3),
    )
    .await;
    browser.screenshot("dashboard-campaign").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_ad_ids_render_as_text_and_run_nothing() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign(HOSTILE).await;
    let script_name = "<script>alert(2)</script>";
    let c2 = app.create_campaign(script_name).await;
    post_impressions(&app, &c, HOSTILE, 2, "a").await;
    post_impressions(&app, &c, "\"><svg onload=alert(3)>", 1, "b").await;
    let browser = Browser::launch().await;

    browser.goto(&app.url("/dashboard")).await;
    assert_eq!(
        browser
            .text(&format!("tr[data-campaign=\"{c}\"] td.name a"))
            .await,
        HOSTILE
    );
    assert_eq!(
        browser
            .text(&format!("tr[data-campaign=\"{c2}\"] td.name a"))
            .await,
        script_name
    );
    wait_for_text(
        &browser,
        &format!("tr[data-campaign=\"{c}\"] td.total"),
        "3",
        Duration::from_secs(3),
    )
    .await;
    let injected = "return document.querySelectorAll('main img, main svg, main script').length";
    assert_eq!(browser.eval(injected).await, 0);
    assert!(!alert_open(&browser).await, "an alert ran");

    browser
        .goto(&app.url(&format!("/dashboard/campaigns/{c}")))
        .await;
    wait_for_text(&browser, "#name", HOSTILE, Duration::from_secs(3)).await;
    wait_for_text(
        &browser,
        "#ads tbody tr:first-child td.ad",
        HOSTILE,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        browser.text("#ads tbody tr:nth-child(2) td.ad").await,
        "\"><svg onload=alert(3)>"
    );
    assert_eq!(browser.eval(injected).await, 0);
    assert_eq!(
        browser.eval("return document.title").await,
        json!(format!("{HOSTILE} · impression-counter"))
    );
    assert!(!alert_open(&browser).await, "an alert ran");
    browser.screenshot("dashboard-hostile").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_prompt_gates_the_data() {
    let app = spawn_app_with(&["--api-keys", "right-key"]).await;
    let created: Value = app
        .client
        .post(app.url("/api/v1/campaigns"))
        .bearer_auth("right-key")
        .json(&json!({ "name": "Secret campaign" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c = created["id"].as_str().unwrap().to_owned();
    let browser = Browser::launch().await;

    browser.goto(&app.url("/dashboard")).await;
    browser.find("#auth:not([hidden])").await;
    let shown = "return document.body.innerText";
    let text = browser.eval(shown).await;
    assert!(
        !text.as_str().unwrap().contains("Secret campaign"),
        "{text}"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('content').hidden")
            .await,
        true
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#campaigns tbody tr').length")
            .await,
        0
    );

    // A wrong key is refused and shows nothing.
    browser
        .find("#auth-key")
        .await
        .send_keys("wrong-key")
        .await
        .unwrap();
    browser.click("#auth-form button[type=submit]").await;
    wait_for_text(
        &browser,
        "#auth-error",
        "That key was not accepted.",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        browser
            .eval("return document.getElementById('content').hidden")
            .await,
        true
    );
    assert!(
        !browser
            .eval(shown)
            .await
            .as_str()
            .unwrap()
            .contains("Secret campaign")
    );

    // The right one opens the dashboard, and is kept for the tab only.
    browser
        .find("#auth-key")
        .await
        .send_keys("right-key")
        .await
        .unwrap();
    browser.click("#auth-form button[type=submit]").await;
    let row = format!("tr[data-campaign=\"{c}\"]");
    assert_eq!(
        browser.text(&format!("{row} td.name")).await,
        "Secret campaign"
    );
    assert_eq!(
        browser
            .eval("return sessionStorage.getItem('impression-counter.api-key')")
            .await,
        "right-key"
    );
    assert_eq!(browser.eval("return localStorage.length").await, 0);
    // The campaign page, live through the stream, with the same key.
    browser
        .goto(&app.url(&format!("/dashboard/campaigns/{c}")))
        .await;
    wait_for_text(&browser, "#name", "Secret campaign", Duration::from_secs(3)).await;
    post_impressions_with_key(&app, &c).await;
    wait_for_text(&browser, "#c-total", "4", Duration::from_secs(3)).await;
    assert_eq!(
        browser
            .eval("return document.getElementById('auth').hidden")
            .await,
        true
    );
    browser.close().await;
}

async fn post_impressions_with_key(app: &TestApp, campaign: &str) {
    // Tracking is open: no key needed.
    for user in ["u1", "u2", "u3", "u4"] {
        assert_eq!(app.track_and_wait(campaign, user, "ad").await, "counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_fit_a_phone_screen() {
    let app = spawn_app_with(&[]).await;
    let c = app
        .create_campaign("A campaign with a rather long name for a small screen")
        .await;
    post_impressions(&app, &c, "banner-320x50-with-a-long-id", 12_345, "a").await;
    let browser = Browser::launch_with(BrowserOptions {
        window: (375, 812),
        ..BrowserOptions::default()
    })
    .await;
    for path in ["/dashboard".to_owned(), format!("/dashboard/campaigns/{c}")] {
        browser.goto(&app.url(&path)).await;
        browser.find("#content:not([hidden])").await;
        // Measured once the counts are in (the widest content).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !browser
            .eval("return document.body.innerText.includes('12,345')")
            .await
            .as_bool()
            .unwrap_or(false)
        {
            assert!(std::time::Instant::now() < deadline, "{path}: no counts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let width = browser
            .eval("return document.documentElement.scrollWidth")
            .await;
        assert!(width.as_u64().unwrap() <= 375, "{path}: {width} px wide");
    }
    wait_for_text(&browser, "#c-total", "12,345", Duration::from_secs(3)).await;
    browser.screenshot("dashboard-campaign-375px").await;
    // The whole page, for people to look at.
    browser
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 375, "height": 2600, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    // Shot once the page has laid itself out at the new height.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while browser.eval("return window.innerHeight").await.as_u64() != Some(2600) {
        assert!(
            std::time::Instant::now() < deadline,
            "the viewport did not grow"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.screenshot("dashboard-campaign-375px-whole").await;
    browser.close().await;
}

/// Writes `docs/dashboard.png`, the README's picture of a campaign's page:
/// six hours of traffic on several ads, the last five minutes second by
/// second, and impressions still arriving while the page is open. Ignored
/// by default (it rewrites a file in the repository).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites docs/dashboard.png; run it by name with --ignored"]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "made-up loads: small positive numbers"
)]
async fn write_the_readme_screenshot() {
    let app = std::sync::Arc::new(spawn_app_with(&[]).await);
    let c = app.create_campaign("Summer sale 2026").await;
    let ads = [
        ("homepage-leaderboard", 9),
        ("sidebar-300x250", 5),
        ("video-preroll-15s", 3),
        ("newsletter-banner", 1),
    ];
    let user = std::sync::atomic::AtomicUsize::new(0);
    // `load` impressions spread over the ads by weight; users come back
    // now and then, so reach stays below impressions.
    let batch = |load: usize| -> Value {
        let mut items = Vec::new();
        for (ad, weight) in ads {
            for _ in 0..load * weight / 18 {
                let n = user.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = format!("user-{}", n % 150_000);
                items.push(json!({ "campaign_id": c, "user_id": id, "ad_id": ad }));
            }
        }
        json!(items)
    };
    let send = |items: Value| {
        let app = std::sync::Arc::clone(&app);
        async move {
            if items.as_array().is_some_and(|a| !a.is_empty()) {
                let response = app
                    .post_json("/api/v1/impressions/batch?wait=true", &items)
                    .await;
                assert_eq!(response.status(), StatusCode::OK);
            }
        }
    };
    // Six hours, minute by minute, rising through the morning.
    for minute in 0..360_u32 {
        let wave = (f64::from(minute) / 40.0).sin() * 150.0;
        let load = 450.0 + f64::from(minute) * 0.8 + wave;
        send(batch(load as usize)).await;
        app.clock.advance(Duration::from_secs(60));
    }
    // The last five minutes, second by second.
    for second in 0..300_u32 {
        let burst = if second % 60 < 8 { 14.0 } else { 0.0 };
        let load =
            11.0 + (f64::from(second) / 7.0).sin() * 4.0 + burst + f64::from(second * 13 % 7);
        send(batch(load as usize)).await;
        app.clock.advance(Duration::from_secs(1));
    }
    // A few refused ones, for the health panel.
    let invalid = json!([{ "campaign_id": c, "user_id": "", "ad_id": "x" }]);
    for _ in 0..3 {
        app.post_json("/api/v1/impressions/batch", &invalid).await;
    }
    // Traffic goes on while the page is open.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = std::sync::Arc::clone(&stop);
        let app = std::sync::Arc::clone(&app);
        let c = c.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let items: Vec<Value> = (0..2)
                    .flat_map(|_| ads)
                    .map(|(ad, _)| {
                        n += 1;
                        json!({ "campaign_id": c, "user_id": format!("live-{n}"), "ad_id": ad })
                    })
                    .collect();
                app.post_json("/api/v1/impressions/batch", &json!(items))
                    .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
                app.clock.advance(Duration::from_millis(250));
            }
        })
    };
    let browser = Browser::launch_with(BrowserOptions {
        window: (1280, 1760),
        ..BrowserOptions::default()
    })
    .await;
    browser
        .goto(&app.url(&format!("/dashboard/campaigns/{c}")))
        .await;
    browser.find("#chart-seconds canvas").await;
    browser.find("#chart-history canvas").await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let path = browser.screenshot("dashboard-readme").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = feeder.await;
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard.png");
    std::fs::copy(&path, docs).expect("docs/dashboard.png is written");
    browser.close().await;
}
