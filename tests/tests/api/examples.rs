//! The official R4 examples (tests/data/r4-examples, see the README there): each is written
//! through the API, read back and compared.
//!
//! Every one of the 711 vendored examples validates against the official R4 JSON schema
//! (`spec/fhir.schema.json`, checked independently with Python's `jsonschema`, draft 6), so the
//! server must accept them all, but for the AuditEvents: the audit trail is the server's own
//! record and refuses every write (405; see the audit tests).

use reqwest::Method;
use serde_json::Value;
use telemed_tests::spawn_app;

/// Drops what the server owns (`meta.versionId`, `meta.lastUpdated`) and an emptied `meta`.
fn without_server_meta(mut resource: Value) -> Value {
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            resource.as_object_mut().map(|r| r.remove("meta"));
        }
    }
    resource
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_official_example_round_trips() {
    let app = spawn_app().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/r4-examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the examples are vendored")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() > 700,
        "expected the 711 vendored examples, found {}",
        files.len()
    );

    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let text = std::fs::read_to_string(path).expect("readable");
        let sent: Value = serde_json::from_str(&text).expect("the example is JSON");
        let rt = sent["resourceType"]
            .as_str()
            .expect("resourceType")
            .to_owned();
        if rt == "AuditEvent" {
            // The audit trail is the server's own record: nobody writes to it (see
            // the audit tests).
            continue;
        }
        let response = match sent["id"].as_str() {
            Some(id) => app.request(Method::PUT, &format!("{rt}/{id}")),
            None => app.request(Method::POST, &rt),
        }
        .header("content-type", "application/fhir+json")
        .body(text)
        .send()
        .await
        .expect("sent");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON");
        if status != 201 {
            failures.push(format!("{name}: {status} {}", body["issue"]));
            continue;
        }
        let id = body["id"].as_str().expect("stored id");
        let read: Value = app
            .get(&format!("{rt}/{id}"))
            .await
            .json()
            .await
            .expect("JSON");
        let mut expected = sent.clone();
        if expected.get("id").is_none() {
            expected["id"] = Value::String(id.to_owned());
        }
        if without_server_meta(read) != without_server_meta(expected) {
            failures.push(format!("{name}: read back differs from what was sent"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
