//! create, read, vread, update, patch, delete.

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::{expressions, spawn_app};

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "birthDate": "1974-12-25"})
}

#[tokio::test]
async fn create_assigns_an_id_and_version_1_with_location_and_etag() {
    let app = spawn_app().await;
    let mut sent = patient();
    sent["id"] = json!("client-chosen");
    let response = app.create(&sent).await;
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    let body: Value = response.json().await.expect("JSON");
    let id = body["id"].as_str().expect("an id");
    assert_ne!(id, "client-chosen", "the server assigns the id on create");
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(
        body["meta"]["lastUpdated"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(
        headers["location"].to_str().expect("text"),
        format!("{}/Patient/{id}/_history/1", app.base)
    );
    assert!(httpdate::parse_http_date(headers["last-modified"].to_str().expect("text")).is_ok());
    assert!(
        headers["content-type"]
            .to_str()
            .expect("text")
            .starts_with("application/fhir+json")
    );
}

#[tokio::test]
async fn read_returns_what_was_created() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let response = app
        .get(&format!("Patient/{}", created["id"].as_str().expect("id")))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    let read: Value = response.json().await.expect("JSON");
    assert_eq!(read, created);
}

#[tokio::test]
async fn reading_an_unknown_id_is_404_with_an_operation_outcome() {
    let app = spawn_app().await;
    let response = app.get("Patient/does-not-exist").await;
    assert_eq!(response.status(), 404);
    let outcome: Value = response.json().await.expect("JSON");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "not-found");
}

#[tokio::test]
async fn update_makes_version_2_and_vread_still_finds_version_1() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = created["id"].as_str().expect("id");
    let mut changed = created.clone();
    changed["active"] = json!(true);
    let response = app.update(&changed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let updated: Value = response.json().await.expect("JSON");
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["active"], true);
    let v1: Value = app
        .get(&format!("Patient/{id}/_history/1"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(v1, created);
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/3")).await.status(),
        404
    );
}

#[tokio::test]
async fn update_of_an_unknown_id_creates_it_with_that_id() {
    let app = spawn_app().await;
    let mut resource = patient();
    resource["id"] = json!("chosen-by-client");
    let response = app.update(&resource).await;
    assert_eq!(response.status(), 201);
    let read: Value = app
        .get("Patient/chosen-by-client")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["meta"]["versionId"], "1");
}

#[tokio::test]
async fn update_with_a_mismatched_or_missing_id_is_400() {
    let app = spawn_app().await;
    let mut resource = patient();
    resource["id"] = json!("other");
    let response = app
        .request(Method::PUT, "Patient/this-one")
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let outcome: Value = response.json().await.expect("JSON");
    assert_eq!(expressions(&outcome), "Patient.id");
    let response = app
        .request(Method::PUT, "Patient/this-one")
        .header("content-type", "application/fhir+json")
        .body(patient().to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    assert_eq!(app.get("Patient/this-one").await.status(), 404);
}

#[tokio::test]
async fn the_server_owns_version_id_and_last_updated() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let mut forged = created.clone();
    forged["meta"] = json!({"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z"});
    let updated: Value = app.update(&forged).await.json().await.expect("JSON");
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_ne!(updated["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
}

#[tokio::test]
async fn if_match_with_a_stale_version_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = created["id"].as_str().expect("id");
    let response = app
        .request(Method::PUT, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"7\"")
        .body(created.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 412);
    let response = app
        .request(Method::PUT, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(created.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
}

async fn patch(app: &telemed_tests::TestApp, id: &str, ops: Value) -> reqwest::Response {
    app.request(Method::PATCH, &format!("Patient/{id}"))
        .header("content-type", "application/json-patch+json")
        .body(ops.to_string())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn json_patch_makes_a_new_version() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = created["id"].as_str().expect("id");
    let response = patch(
        &app,
        id,
        json!([{"op": "add", "path": "/active", "value": true}]),
    )
    .await;
    assert_eq!(response.status(), 200);
    let patched: Value = response.json().await.expect("JSON");
    assert_eq!(patched["active"], true);
    assert_eq!(patched["meta"]["versionId"], "2");
    assert_eq!(patched["name"], created["name"]);
}

#[tokio::test]
async fn a_patch_that_breaks_the_resource_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = created["id"].as_str().expect("id");
    let response = patch(
        &app,
        id,
        json!([{"op": "replace", "path": "/birthDate", "value": "soon"}]),
    )
    .await;
    assert_eq!(response.status(), 422);
    let outcome: Value = response.json().await.expect("JSON");
    assert_eq!(expressions(&outcome), "Patient.birthDate");
    let response = patch(
        &app,
        id,
        json!([{"op": "replace", "path": "/id", "value": "other"}]),
    )
    .await;
    assert_eq!(response.status(), 422);
    let response = patch(
        &app,
        id,
        json!([{"op": "test", "path": "/birthDate", "value": "1900-01-01"}]),
    )
    .await;
    assert_eq!(response.status(), 422);
    let response = patch(&app, id, json!({"not": "a patch"})).await;
    assert_eq!(response.status(), 400);
    let read: Value = app
        .get(&format!("Patient/{id}"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["meta"]["versionId"], "1");
}

#[tokio::test]
async fn patch_needs_the_json_patch_media_type() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = created["id"].as_str().expect("id");
    let response = app
        .request(Method::PATCH, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .body("[]")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);
}

#[tokio::test]
async fn delete_leaves_a_tombstone_version_and_reads_answer_410() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = created["id"].as_str().expect("id");
    let response = app
        .request(Method::DELETE, &format!("Patient/{id}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 410);
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/2")).await.status(),
        410
    );
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/1")).await.status(),
        200
    );
    let history: Value = app
        .get(&format!("Patient/{id}/_history"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(history["total"], 2);
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert!(history["entry"][0].get("resource").is_none());
}

#[tokio::test]
async fn deleting_what_does_not_exist_succeeds_without_a_version() {
    let app = spawn_app().await;
    let response = app
        .request(Method::DELETE, "Patient/never-was")
        .send()
        .await
        .expect("sent");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn a_deleted_resource_can_be_recreated_by_update() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = created["id"].as_str().expect("id");
    app.request(Method::DELETE, &format!("Patient/{id}"))
        .send()
        .await
        .expect("sent");
    let response = app.update(&created).await;
    assert_eq!(response.status(), 201);
    let read: Value = app
        .get(&format!("Patient/{id}"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["meta"]["versionId"], "3");
}

#[tokio::test]
async fn every_r4_resource_type_can_be_created() {
    let app = spawn_app().await;
    for resource in [
        json!({"resourceType": "Procedure", "status": "completed", "subject": {"reference": "Patient/1"}}),
        json!({"resourceType": "Immunization", "status": "completed",
               "vaccineCode": {"text": "flu"}, "patient": {"reference": "Patient/1"},
               "occurrenceDateTime": "2024-01-01"}),
        json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CBC"}}),
        json!({"resourceType": "ExplanationOfBenefit", "status": "active", "type": {"text": "x"},
               "use": "claim", "patient": {"reference": "Patient/1"}, "created": "2024-01-01",
               "insurer": {"reference": "Organization/1"}, "provider": {"reference": "Practitioner/1"},
               "outcome": "complete", "insurance": [{"focal": true, "coverage": {"reference": "Coverage/1"}}]}),
    ] {
        let rt = resource["resourceType"].clone();
        let response = app.create(&resource).await;
        assert_eq!(response.status(), 201, "{rt}");
    }
}
