//! Calendar reports: `timeseries?resolution=day&tz=...&from=...&to=...`,
//! local hours, CSV answers, and the 400s of bad zones and ranges. Time
//! comes from the manual clock, moved impression by impression across DST
//! changes, so no test waits.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_test;
use crate::helpers::{TestApp, assert_error, spawn};

/// Unix seconds of an RFC 3339 instant.
fn at(rfc3339: &str) -> impression_core::Timestamp {
    impression_counter::timefmt::parse_rfc3339("t", rfc3339).unwrap()
}

/// Creates a campaign at `start`, then counts one impression by `user` at
/// each of `times` (moving the clock there first); returns the id.
async fn campaign_with(app: &TestApp, start: &str, events: &[(&str, &str)]) -> String {
    app.clock.set(at(start));
    let c = app.create_campaign("calendar").await;
    for (time, user) in events {
        app.clock.set(at(time));
        assert_eq!(
            app.track_and_wait(&c, user, "ad").await,
            "counted",
            "{time}"
        );
    }
    c
}

async fn series(app: &TestApp, c: &str, query: &str) -> Value {
    let response = app
        .get(&format!("/api/v1/campaigns/{c}/timeseries?{query}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    response.json().await.unwrap()
}

fn points(series: &Value) -> Vec<(String, u64)> {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["t"].as_str().unwrap().to_owned(),
                p["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn days(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|&(t, n)| (t.to_owned(), n)).collect()
}

backend_test! {
    async fn days_follow_new_york_across_the_fall_back(backend: Backend) {
        let app = spawn(backend, &[]).await;
        // 2026-11-01 in New York has 25 hours: 1:30 happens twice.
        let c = campaign_with(&app, "2026-10-31T12:00:00Z", &[
            ("2026-10-31T23:30:00-04:00", "a"),
            ("2026-11-01T00:10:00-04:00", "b"),
            ("2026-11-01T01:30:00-04:00", "c"),
            ("2026-11-01T01:30:00-05:00", "d"),
            ("2026-11-01T23:59:59-05:00", "e"),
            ("2026-11-02T00:00:00-05:00", "f"),
        ]).await;
        app.clock.set(at("2026-11-02T12:00:00Z"));
        let s = series(&app, &c,
            "resolution=day&tz=America/New_York&from=2026-10-30&to=2026-11-02").await;
        assert_eq!(s["tz"], "America/New_York");
        assert_eq!(s["resolution"], "day");
        assert_eq!(points(&s), days(&[
            ("2026-10-30T00:00:00-04:00", 0),
            ("2026-10-31T00:00:00-04:00", 1),
            ("2026-11-01T00:00:00-04:00", 4),
            ("2026-11-02T00:00:00-05:00", 1),
        ]));
        // The same impressions by UTC day.
        let s = series(&app, &c, "resolution=day&from=2026-10-31&to=2026-11-02").await;
        assert_eq!(points(&s), days(&[
            ("2026-10-31T00:00:00Z", 0),
            ("2026-11-01T00:00:00Z", 4),
            ("2026-11-02T00:00:00Z", 2),
        ]));
        // Local hours of the 25-hour day: the repeated 1 o'clock is one
        // bucket of two hours, holding both 1:30s.
        let s = series(&app, &c,
            "resolution=hour&tz=America/New_York&from=2026-11-01&to=2026-11-01").await;
        let hours = points(&s);
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[1], ("2026-11-01T01:00:00-04:00".to_owned(), 2));
        assert_eq!(hours[2].0, "2026-11-01T02:00:00-05:00");
        assert_eq!(hours.iter().map(|h| h.1).sum::<u64>(), 4);
    }
}

backend_test! {
    async fn days_in_berlin_kathmandu_and_lord_howe_are_exact(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = campaign_with(&app, "2026-03-28T12:00:00Z", &[
            // Berlin springs forward on 2026-03-29: a 23-hour day.
            ("2026-03-28T23:59:59+01:00", "a"),
            ("2026-03-29T00:00:00+01:00", "b"),
            ("2026-03-29T23:59:59+02:00", "c"),
            ("2026-03-30T00:00:00+02:00", "d"),
        ]).await;
        app.clock.set(at("2026-03-31T00:00:00Z"));
        let s = series(&app, &c,
            "resolution=day&tz=Europe/Berlin&from=2026-03-28&to=2026-03-30").await;
        assert_eq!(points(&s), days(&[
            ("2026-03-28T00:00:00+01:00", 1),
            ("2026-03-29T00:00:00+01:00", 2),
            ("2026-03-30T00:00:00+02:00", 1),
        ]));

        let c = campaign_with(&app, "2026-10-03T00:00:00Z", &[
            // Kathmandu is +05:45: its midnight is 18:15 UTC.
            ("2026-10-03T18:14:59Z", "a"),
            ("2026-10-03T18:15:00Z", "b"),
            // Lord Howe goes from +10:30 to +11:00 at 02:00 on 2026-10-04:
            // a day of 23.5 hours, ending at 13:00 UTC.
            ("2026-10-04T12:59:59Z", "c"),
            ("2026-10-04T13:00:00Z", "d"),
        ]).await;
        app.clock.set(at("2026-10-05T00:00:00Z"));
        let s = series(&app, &c,
            "resolution=day&tz=Asia/Kathmandu&from=2026-10-03&to=2026-10-04").await;
        assert_eq!(points(&s), days(&[
            ("2026-10-03T00:00:00+05:45", 1),
            ("2026-10-04T00:00:00+05:45", 3),
        ]));
        let s = series(&app, &c,
            "resolution=day&tz=Australia/Lord_Howe&from=2026-10-04&to=2026-10-05").await;
        assert_eq!(points(&s), days(&[
            ("2026-10-04T00:00:00+10:30", 3),
            ("2026-10-05T00:00:00+11:00", 1),
        ]));
        // Hours in India start at :30 UTC, from quarter-hour counts.
        let s = series(&app, &c,
            "resolution=hour&tz=Asia/Kolkata&from=2026-10-03T23:00:00%2B05:30&to=2026-10-04T00:00:00%2B05:30").await;
        assert_eq!(points(&s), days(&[
            ("2026-10-03T23:00:00+05:30", 2),
            ("2026-10-04T00:00:00+05:30", 0),
        ]));
    }
}

backend_test! {
    async fn unique_users_per_day_and_the_default_window(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = campaign_with(&app, "2026-11-01T00:00:00Z", &[
            ("2026-11-01T10:00:00Z", "u1"),
            ("2026-11-01T11:00:00Z", "u2"),
            ("2026-11-02T10:00:00Z", "u1"),
        ]).await;
        // u1 again the same day on another ad: one more impression, no
        // more users.
        assert_eq!(app.track_and_wait(&c, "u1", "other-ad").await, "counted");
        app.clock.set(at("2026-11-03T12:00:00Z"));
        let s = series(&app, &c,
            "resolution=day&metric=unique_users&from=2026-11-01&to=2026-11-03").await;
        assert_eq!(s["metric"], "unique_users");
        assert_eq!(points(&s), days(&[
            ("2026-11-01T00:00:00Z", 2),
            ("2026-11-02T00:00:00Z", 1),
            ("2026-11-03T00:00:00Z", 0),
        ]));
        // Without from/to: the last 30 days, today last.
        let s = series(&app, &c, "resolution=day").await;
        let all = points(&s);
        assert_eq!(all.len(), 30);
        assert_eq!(all[29], ("2026-11-03T00:00:00Z".to_owned(), 0));
        assert_eq!(all[27], ("2026-11-01T00:00:00Z".to_owned(), 2));
        assert_eq!(all[28].1, 2);
        // Far back (within DAILY_HISTORY): zeros.
        let s = series(&app, &c, "resolution=day&from=2026-01-01&to=2026-01-03").await;
        assert_eq!(points(&s).iter().map(|p| p.1).sum::<u64>(), 0);
    }
}

backend_test! {
    async fn bad_zones_and_ranges_are_400s_naming_the_problem(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = campaign_with(&app, "2026-11-01T00:00:00Z", &[]).await;
        app.clock.set(at("2026-11-10T00:00:00Z"));
        for (query, needle) in [
            ("resolution=day&tz=Mars/Olympus", "unknown time zone \"Mars/Olympus\""),
            ("resolution=day&tz=", "tz must be an IANA time zone name"),
            ("resolution=day&from=2026-11-05&to=2026-11-01", "from must be before to"),
            ("resolution=day&from=2024-01-01", "reaches back DAILY_HISTORY (400d): from must be at or after 2025-10-07T00:00:00Z"),
            ("resolution=day&metric=unique_users&from=2026-10-01", "with metric=unique_users reaches back HISTORY"),
            ("resolution=hour&from=2026-10-01", "reaches back HISTORY"),
            ("resolution=minute&from=2026-11-08", "reaches back 24h"),
            ("resolution=day&from=2026-11-01&window=2d", "either window or from/to"),
            ("resolution=day&from=2026-11-01&to=2029-01-01", "at most 400 points"),
            ("resolution=day&from=yesterday", "from must be a date like 2026-11-01"),
            ("resolution=week", "resolution must be `second`, `minute`, `hour` or `day`"),
            ("format=xml", "format must be `json` or `csv`"),
        ] {
            let message = assert_error(
                app.get(&format!("/api/v1/campaigns/{c}/timeseries?{query}")).await,
                StatusCode::BAD_REQUEST,
            )
            .await;
            assert!(message.contains(needle), "{query}: {message}");
        }
    }
}

fn read_csv(text: &str) -> Vec<Vec<String>> {
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

backend_test! {
    async fn csv_answers_parse_back_and_never_run_formulas(backend: Backend) {
        let app = spawn(backend, &[]).await;
        app.clock.set(at("2026-11-01T00:00:00Z"));
        let c = app.create_campaign("csv").await;
        let hostile = ["a,b", "say \"hi\"", "line\nbreak", "=HYPERLINK(\"http://x\")", "@SUM(1)", "plain"];
        for ad in hostile {
            assert_eq!(app.track_and_wait(&c, "u", ad).await, "counted");
        }
        // stats?by=ad with Accept: text/csv.
        let response = app
            .client_get_with_accept(&format!("/api/v1/campaigns/{c}/stats?by=ad"), "text/csv")
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
        let text = response.text().await.unwrap();
        assert!(text.starts_with("scope,ad_id,last_hour,last_day,total,unique_users_last_hour,"), "{text}");
        let rows = read_csv(&text);
        assert_eq!(rows[0][..5], ["campaign", "", "6", "6", "6"]);
        assert_eq!(rows[0][7], "1");
        let ads: Vec<&str> = rows[1..rows.len() - 1].iter().map(|r| r[1].as_str()).collect();
        let mut want = vec!["'=HYPERLINK(\"http://x\")", "'@SUM(1)", "a,b", "line\nbreak", "plain", "say \"hi\""];
        want.sort_unstable();
        let mut got = ads.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(rows.last().unwrap()[0], "other_ads");

        // A series with format=csv.
        app.clock.set(at("2026-11-02T12:00:00Z"));
        let response = app
            .get(&format!("/api/v1/campaigns/{c}/timeseries?resolution=day&from=2026-11-01&to=2026-11-02&format=csv"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        assert_eq!(read_csv(&text), [
            ["2026-11-01T00:00:00Z".to_owned(), "6".to_owned()],
            ["2026-11-02T00:00:00Z".to_owned(), "0".to_owned()],
        ]);
        assert!(text.starts_with("t,count\n"), "{text}");
        // JSON still the default, and format=json wins over Accept.
        let response = app
            .client_get_with_accept(&format!("/api/v1/campaigns/{c}/stats?format=json"), "text/csv")
            .await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["total"], json!(6));
    }
}
