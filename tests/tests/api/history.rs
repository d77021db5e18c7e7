//! History at every level: order, entries, `_count` paging, `_since`.

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::{TestApp, id_of, spawn_app, spawn_app_with};

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

/// Every entry carries fullUrl, request and response, whatever the level.
#[tokio::test]
async fn every_history_entry_has_full_url_request_and_response() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let id = id_of(&created);
    assert_eq!(app.update(&created).await.status(), 200);
    app.delete("Patient", id).await;
    app.created(&json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    for path in [
        format!("Patient/{id}/_history"),
        "Patient/_history".to_owned(),
        "_history".to_owned(),
    ] {
        let bundle: Value = app.get(&path).await.json().await.expect("JSON");
        assert_eq!(bundle["type"], "history", "{path}");
        for entry in bundle["entry"].as_array().expect("entries") {
            assert!(
                entry["fullUrl"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(&app.base)),
                "{path}: {entry}"
            );
            assert!(entry["request"]["method"].is_string(), "{path}: {entry}");
            assert!(entry["request"]["url"].is_string(), "{path}: {entry}");
            assert!(entry["response"]["status"].is_string(), "{path}: {entry}");
            assert!(entry["response"]["etag"].is_string(), "{path}: {entry}");
            assert!(
                entry["response"]["lastModified"].is_string(),
                "{path}: {entry}"
            );
            let deleted = entry["request"]["method"] == "DELETE";
            assert_eq!(entry.get("resource").is_none(), deleted, "{path}: {entry}");
        }
    }
}

#[tokio::test]
async fn history_entries_are_newest_first_across_resources() {
    let app = spawn_app().await;
    let first = app.created(&json!({"resourceType": "Patient"})).await;
    let second = app.created(&json!({"resourceType": "Patient"})).await;
    assert_eq!(app.update(&first).await.status(), 200);
    let bundle: Value = app
        .get("Patient/_history")
        .await
        .json()
        .await
        .expect("JSON");
    let order: Vec<(String, String)> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap_or_default().to_owned(),
                e["resource"]["meta"]["versionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected = [
        (id_of(&first), "2"),
        (id_of(&second), "1"),
        (id_of(&first), "1"),
    ]
    .map(|(id, v)| (id.to_owned(), v.to_owned()));
    assert_eq!(order, expected);
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

/// Follows `next` links from `first`; returns `{type}/{id}/_history/{vid}` of every entry, and
/// the number of pages.
async fn walk(app: &TestApp, first: String) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut url = first;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100, "next links do not end");
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
            let resource = &entry["resource"];
            seen.push(format!(
                "{}/{}/_history/{}",
                resource["resourceType"].as_str().unwrap_or("?"),
                resource["id"].as_str().unwrap_or("?"),
                resource["meta"]["versionId"].as_str().unwrap_or("?")
            ));
        }
        match bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
        {
            Some(next) => url = next.to_owned(),
            None => return (seen, pages),
        }
    }
}

#[tokio::test]
async fn system_history_pages_cover_every_version_once() {
    let app = spawn_app().await;
    let mut expected = Vec::new();
    for rt in [
        "Patient",
        "Organization",
        "Patient",
        "Practitioner",
        "Patient",
    ] {
        let created = app.created(&json!({"resourceType": rt})).await;
        expected.push(format!("{rt}/{}/_history/1", id_of(&created)));
        assert_eq!(app.update(&created).await.status(), 200);
        expected.push(format!("{rt}/{}/_history/2", id_of(&created)));
    }
    expected.reverse();
    let (seen, pages) = walk(&app, format!("{}/_history?_count=4", app.base)).await;
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn count_limits_a_page_and_total_counts_everything() {
    let app = spawn_app().await;
    for _ in 0..5 {
        app.created(&json!({"resourceType": "Patient"})).await;
    }
    let bundle: Value = app
        .get("Patient/_history?_count=2")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(2));
    assert_eq!(bundle["total"], 5);
    assert!(
        bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["relation"] == "self")
    );
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
async fn since_filters_instance_and_system_history() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let id = id_of(&created);
    let updated: Value = app.update(&created).await.json().await.expect("JSON");
    let since = updated["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated");
    for path in [format!("Patient/{id}/_history"), "_history".to_owned()] {
        let bundle: Value = app
            .request(Method::GET, &path)
            .query(&[("_since", since)])
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        assert_eq!(bundle["total"], 1, "{path}");
        assert_eq!(
            bundle["entry"][0]["resource"]["meta"]["versionId"], "2",
            "{path}"
        );
    }
    let future = "2999-01-01T00:00:00Z";
    let bundle: Value = app
        .request(Method::GET, "_history")
        .query(&[("_since", future)])
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(bundle["total"], 0);
    assert!(bundle["entry"].as_array().is_none_or(Vec::is_empty));
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

#[tokio::test]
async fn page_size_defaults_to_and_is_capped_by_the_configuration() {
    let app = spawn_app_with(|config| {
        config.default_page_size = 2;
        config.max_page_size = 3;
    })
    .await;
    for _ in 0..5 {
        app.created(&json!({"resourceType": "Patient"})).await;
    }
    for (query, expected) in [("", 2), ("?_count=100", 3), ("?_count=1", 1)] {
        let bundle: Value = app
            .get(&format!("Patient/_history{query}"))
            .await
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            bundle["entry"].as_array().map(Vec::len),
            Some(expected),
            "{query}"
        );
        assert_eq!(bundle["total"], 5, "{query}");
    }
}
