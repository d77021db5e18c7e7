//! History at every level: order, entries, `_count` paging, `_since`.

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::spawn_app;

#[tokio::test]
async fn instance_history_lists_every_version_newest_first_with_request_and_response() {
    let app = spawn_app().await;
    let created = app
        .created(&json!({"resourceType": "Patient", "active": true}))
        .await;
    let id = created["id"].as_str().expect("id");
    let mut changed = created.clone();
    changed["active"] = json!(false);
    assert_eq!(app.update(&changed).await.status(), 200);
    let bundle: Value = app
        .get(&format!("Patient/{id}/_history"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["total"], 2);
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries[0]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[0]["request"]["method"], "PUT");
    assert_eq!(entries[0]["request"]["url"], format!("Patient/{id}"));
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["response"]["etag"], "W/\"2\"");
    assert_eq!(entries[1]["request"]["method"], "POST");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["fullUrl"], format!("{}/Patient/{id}", app.base));
}

#[tokio::test]
async fn history_of_an_unknown_resource_is_404() {
    let app = spawn_app().await;
    assert_eq!(app.get("Patient/nobody/_history").await.status(), 404);
}

#[tokio::test]
async fn type_and_system_history_cover_their_scope() {
    let app = spawn_app().await;
    app.created(&json!({"resourceType": "Patient"})).await;
    app.created(&json!({"resourceType": "Patient"})).await;
    app.created(&json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    assert_eq!(app.history_total("Patient").await, 2);
    assert_eq!(app.history_total("Organization").await, 1);
    let system: Value = app.get("_history").await.json().await.expect("JSON");
    assert_eq!(system["total"], 3);
    assert_eq!(
        system["entry"][0]["resource"]["resourceType"],
        "Organization"
    );
}

#[tokio::test]
async fn following_next_links_visits_every_version_once() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        let created = app.created(&json!({"resourceType": "Patient"})).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    let mut seen = Vec::new();
    let mut url = format!("{}/Patient/_history?_count=3", app.base);
    let mut pages = 0;
    loop {
        pages += 1;
        let bundle: Value = app
            .client
            .get(&url)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            seen.push(entry["resource"]["id"].as_str().expect("id").to_owned());
        }
        let next = bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str());
        match next {
            Some(next) => url = next.to_owned(),
            None => break,
        }
        // A write between pages must neither shift nor repeat what the next page shows.
        if pages == 1 {
            app.created(&json!({"resourceType": "Patient"})).await;
        }
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn since_keeps_only_later_versions() {
    let app = spawn_app().await;
    app.created(&json!({"resourceType": "Patient"})).await;
    let second = app.created(&json!({"resourceType": "Patient"})).await;
    let since = second["meta"]["lastUpdated"].as_str().expect("lastUpdated");
    let bundle: Value = app
        .request(Method::GET, "Patient/_history")
        .query(&[("_since", since)])
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(bundle["total"], 1);
    assert_eq!(bundle["entry"][0]["resource"]["id"], second["id"]);
}

#[tokio::test]
async fn a_malformed_since_or_count_is_400_naming_the_parameter() {
    let app = spawn_app().await;
    for query in ["_since=last-week", "_count=many"] {
        let response = app.get(&format!("Patient/_history?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let outcome: Value = response.json().await.expect("JSON");
        let name = query.split('=').next().unwrap_or_default();
        assert_eq!(telemed_tests::expressions(&outcome), name);
    }
}
