//! Many concurrent HTTP clients on a multi-threaded server.

use std::time::Duration;

use futures::future::join_all;

use crate::helpers::{eventually, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_distinct_impressions_are_all_counted() {
    let app = spawn_app().await;
    let campaigns = [
        app.create_campaign("a").await,
        app.create_campaign("b").await,
    ];
    let clients = 32;
    let per_client = 100;
    let tasks = (0..clients).map(|client| {
        let (http, base, campaigns) = (app.client.clone(), app.base.clone(), campaigns.clone());
        tokio::spawn(async move {
            for i in 0..per_client {
                let response = http
                    .post(format!("{base}/api/v1/impressions"))
                    .json(&serde_json::json!({
                        "campaign_id": campaigns[i % 2],
                        "user_id": format!("client{client}-user{i}"),
                        "ad_id": "ad",
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        })
    });
    for result in join_all(tasks).await {
        result.unwrap();
    }
    let expected = (clients * per_client / 2) as u64;
    eventually(Duration::from_secs(10), || async {
        app.counts(&campaigns[0]).await.2 == expected
            && app.counts(&campaigns[1]).await.2 == expected
    })
    .await;
    assert_eq!(
        app.counts(&campaigns[0]).await,
        (expected, expected, expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_impression_from_many_clients_is_counted_once() {
    let app = spawn_app().await;
    let c = app.create_campaign("c").await;
    let tasks = (0..64).map(|_| {
        let (http, base, c) = (app.client.clone(), app.base.clone(), c.clone());
        tokio::spawn(async move {
            let response = http
                .post(format!("{base}/api/v1/impressions?wait=true"))
                .json(&serde_json::json!({ "campaign_id": c, "user_id": "same", "ad_id": "same" }))
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            body["status"].as_str().unwrap().to_owned()
        })
    });
    let statuses: Vec<String> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| *s == "counted").count(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "duplicate").count(), 63);
    assert_eq!(app.counts(&c).await, (1, 1, 1));
}
