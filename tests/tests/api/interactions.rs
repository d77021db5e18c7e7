//! create, read, vread, update, patch, delete.

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::{TestApp, assert_operation_outcome, expressions, id_of, spawn_app};

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "birthDate": "1974-12-25"})
}

/// `PUT` of `body` to `path` with `If-Match: W/"{version}"`.
async fn put_if_match(app: &TestApp, path: &str, version: &str, body: &Value) -> u16 {
    app.request(Method::PUT, path)
        .header("content-type", "application/fhir+json")
        .header("if-match", format!("W/\"{version}\""))
        .body(body.to_string())
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

#[tokio::test]
async fn create_assigns_an_id_and_version_1_with_location_and_etag() {
    let app = spawn_app().await;
    let response = app.create(&patient()).await;
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    let body: Value = response.json().await.expect("JSON");
    let id = id_of(&body);
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(
        body["meta"]["lastUpdated"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert_eq!(body["name"], patient()["name"]);
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(
        headers["location"].to_str().expect("text"),
        format!("{}/Patient/{id}/_history/1", app.base)
    );
    assert!(httpdate::parse_http_date(headers["last-modified"].to_str().expect("text")).is_ok());
}

#[tokio::test]
async fn create_ignores_an_id_sent_by_the_client() {
    let app = spawn_app().await;
    let mut sent = patient();
    sent["id"] = json!("client-chosen");
    let created = app.created(&sent).await;
    assert_ne!(id_of(&created), "client-chosen");
    assert_eq!(app.read("Patient", "client-chosen").await.status(), 404);
}

#[tokio::test]
async fn responses_are_fhir_json_in_utf8() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    for response in [
        app.read("Patient", id_of(&created)).await,
        app.read("Patient", "missing").await,
        app.get("metadata").await,
    ] {
        assert_eq!(
            response.headers()["content-type"],
            "application/fhir+json; charset=utf-8",
            "{}",
            response.url()
        );
    }
}

#[tokio::test]
async fn read_returns_what_was_created() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let response = app.read("Patient", id_of(&created)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    let read: Value = response.json().await.expect("JSON");
    assert_eq!(read, created);
}

/// `Last-Modified` is `meta.lastUpdated` to the second (HTTP dates have no fractions).
#[tokio::test]
async fn last_modified_matches_meta_last_updated() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let response = app.read("Patient", id_of(&created)).await;
    let header = response.headers()["last-modified"]
        .to_str()
        .expect("text")
        .to_owned();
    let last_modified = httpdate::parse_http_date(&header).expect("an HTTP date");
    let last_updated = time::OffsetDateTime::parse(
        created["meta"]["lastUpdated"]
            .as_str()
            .expect("lastUpdated"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("an instant");
    assert_eq!(
        time::OffsetDateTime::from(last_modified).unix_timestamp(),
        last_updated.unix_timestamp(),
        "{header} vs {}",
        created["meta"]["lastUpdated"]
    );
}

#[tokio::test]
async fn reading_an_unknown_id_is_404_with_an_operation_outcome() {
    let app = spawn_app().await;
    let response = app.read("Patient", "does-not-exist").await;
    assert_eq!(response.status(), 404);
    let outcome: Value = response.json().await.expect("JSON");
    assert_operation_outcome(&outcome);
    assert_eq!(outcome["issue"][0]["code"], "not-found");
}

#[tokio::test]
async fn update_makes_version_2() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let mut changed = created.clone();
    changed["active"] = json!(true);
    let response = app.update(&changed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let updated: Value = response.json().await.expect("JSON");
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["active"], true);
    assert_eq!(app.read_json("Patient", id_of(&created)).await, updated);
}

#[tokio::test]
async fn vread_finds_an_older_version() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    let mut changed = created.clone();
    changed["active"] = json!(true);
    assert_eq!(app.update(&changed).await.status(), 200);
    let response = app.vread("Patient", id, "1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    let v1: Value = response.json().await.expect("JSON");
    assert_eq!(v1, created);
}

#[tokio::test]
async fn vread_of_an_unknown_version_is_404() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let response = app.vread("Patient", id_of(&created), "2").await;
    assert_eq!(response.status(), 404);
    assert_operation_outcome(&response.json().await.expect("JSON"));
    assert_eq!(
        app.vread("Patient", id_of(&created), "not-a-number")
            .await
            .status(),
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
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    let read = app.read_json("Patient", "chosen-by-client").await;
    assert_eq!(read["meta"]["versionId"], "1");
    assert_eq!(read["birthDate"], "1974-12-25");
}

#[tokio::test]
async fn update_with_an_id_other_than_the_url_is_400() {
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
    assert_operation_outcome(&outcome);
    assert_eq!(expressions(&outcome), "Patient.id");
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn update_without_an_id_in_the_body_is_400() {
    let app = spawn_app().await;
    let response = app
        .request(Method::PUT, "Patient/this-one")
        .header("content-type", "application/fhir+json")
        .body(patient().to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    assert_operation_outcome(&response.json().await.expect("JSON"));
    assert_eq!(app.history_total("Patient").await, 0);
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
    let read = app.read_json("Patient", id_of(&created)).await;
    assert_eq!(read["meta"], updated["meta"]);
}

#[tokio::test]
async fn if_match_with_a_stale_version_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let path = format!("Patient/{}", id_of(&created));
    let mut changed = created.clone();
    changed["active"] = json!(true);
    assert_eq!(put_if_match(&app, &path, "7", &changed).await, 412);
    assert_eq!(app.read_json("Patient", id_of(&created)).await, created);
}

#[tokio::test]
async fn if_match_with_the_current_version_updates() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let path = format!("Patient/{}", id_of(&created));
    assert_eq!(put_if_match(&app, &path, "1", &created).await, 200);
    let read = app.read_json("Patient", id_of(&created)).await;
    assert_eq!(read["meta"]["versionId"], "2");
}

#[tokio::test]
async fn json_patch_makes_a_new_version() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    let response = app
        .patch(
            "Patient",
            id,
            &json!([{"op": "add", "path": "/active", "value": true}]),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let patched: Value = response.json().await.expect("JSON");
    assert_eq!(patched["active"], true);
    assert_eq!(patched["meta"]["versionId"], "2");
    assert_eq!(patched["name"], created["name"]);
    assert_eq!(app.read_json("Patient", id).await, patched);
}

/// Sends a patch that must be refused; returns its status after checking the outcome and that
/// the resource is still at version 1.
async fn refused_patch(app: &TestApp, id: &str, ops: Value) -> (u16, Value) {
    let response = app.patch("Patient", id, &ops).send().await.expect("sent");
    let status = response.status().as_u16();
    let outcome: Value = response.json().await.expect("JSON");
    assert_operation_outcome(&outcome);
    let read = app.read_json("Patient", id).await;
    assert_eq!(read["meta"]["versionId"], "1", "{ops} was stored");
    (status, outcome)
}

#[tokio::test]
async fn a_patch_that_makes_the_resource_invalid_is_refused_naming_the_element() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let (status, outcome) = refused_patch(
        &app,
        id_of(&created),
        json!([{"op": "replace", "path": "/birthDate", "value": "soon"}]),
    )
    .await;
    assert!([400, 422].contains(&status), "{status}");
    assert_eq!(expressions(&outcome), "Patient.birthDate");
}

#[tokio::test]
async fn a_patch_that_changes_the_id_is_refused() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let (status, _) = refused_patch(
        &app,
        id_of(&created),
        json!([{"op": "replace", "path": "/id", "value": "other"}]),
    )
    .await;
    assert!([400, 409, 422].contains(&status), "{status}");
    assert_eq!(app.read("Patient", "other").await.status(), 404);
}

#[tokio::test]
async fn a_patch_that_changes_the_resource_type_is_refused() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let (status, _) = refused_patch(
        &app,
        id_of(&created),
        json!([{"op": "replace", "path": "/resourceType", "value": "Person"}]),
    )
    .await;
    assert!([400, 409, 422].contains(&status), "{status}");
    assert_eq!(app.history_total("Person").await, 0);
}

#[tokio::test]
async fn a_failing_test_operation_is_422() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let (status, _) = refused_patch(
        &app,
        id_of(&created),
        json!([{"op": "test", "path": "/birthDate", "value": "1900-01-01"},
               {"op": "add", "path": "/active", "value": true}]),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_body_that_is_not_a_json_patch_is_400() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let (status, _) = refused_patch(&app, id_of(&created), json!({"not": "a patch"})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn patch_honours_if_match() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    let ops = json!([{"op": "add", "path": "/active", "value": true}]);
    let stale = app
        .patch("Patient", id, &ops)
        .header("if-match", "W/\"2\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(stale.status(), 412);
    assert_eq!(app.read_json("Patient", id).await["meta"]["versionId"], "1");
    let current = app
        .patch("Patient", id, &ops)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(current.status(), 200);
}

#[tokio::test]
async fn patching_an_unknown_resource_is_404() {
    let app = spawn_app().await;
    let response = app
        .patch(
            "Patient",
            "nobody",
            &json!([{"op": "add", "path": "/active", "value": true}]),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 404);
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn patch_needs_the_json_patch_media_type() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let response = app
        .request(Method::PATCH, &format!("Patient/{}", id_of(&created)))
        .header("content-type", "application/fhir+json")
        .body("[]")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);
}

#[tokio::test]
async fn delete_succeeds_and_later_reads_are_410() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    let response = app.delete("Patient", id).await;
    assert!([200, 204].contains(&response.status().as_u16()));
    let response = app.read("Patient", id).await;
    assert_eq!(response.status(), 410);
    assert_operation_outcome(&response.json().await.expect("JSON"));
}

#[tokio::test]
async fn delete_is_a_version_in_history_and_older_versions_stay_readable() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    app.delete("Patient", id).await;
    let v1 = app.vread("Patient", id, "1").await;
    assert_eq!(v1.status(), 200);
    assert_eq!(v1.json::<Value>().await.expect("JSON"), created);
    assert_eq!(app.vread("Patient", id, "2").await.status(), 410);
    let history: Value = app
        .get(&format!("Patient/{id}/_history"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(history["total"], 2);
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert!(history["entry"][0].get("resource").is_none());
    assert_eq!(history["entry"][0]["response"]["etag"], "W/\"2\"");
}

#[tokio::test]
async fn delete_honours_if_match() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    let stale = app
        .request(Method::DELETE, &format!("Patient/{id}"))
        .header("if-match", "W/\"5\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(stale.status(), 412);
    assert_eq!(app.read("Patient", id).await.status(), 200);
    let current = app
        .request(Method::DELETE, &format!("Patient/{id}"))
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .expect("sent");
    assert!([200, 204].contains(&current.status().as_u16()));
    assert_eq!(app.read("Patient", id).await.status(), 410);
}

#[tokio::test]
async fn ids_follow_the_fhir_id_rules() {
    let app = spawn_app().await;
    let longest = "A-z.0".repeat(13)[..64].to_owned();
    let too_long = format!("{longest}x");
    for (id, expected) in [
        (longest.as_str(), 201),
        (too_long.as_str(), 400),
        ("a_b", 400),
    ] {
        let response = app
            .request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "id": id}).to_string())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), expected, "{id}");
    }
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn deleting_what_does_not_exist_is_2xx_or_404_and_makes_no_version() {
    let app = spawn_app().await;
    let response = app.delete("Patient", "never-was").await;
    assert!(
        [200, 204, 404].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    assert_eq!(app.history_total("Patient").await, 0);
}

/// R4 http.html#delete: deleting what is already deleted has no effect.
#[tokio::test]
async fn deleting_twice_makes_one_delete_version() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    app.delete("Patient", id).await;
    let again = app.delete("Patient", id).await;
    assert!(
        [200, 204].contains(&again.status().as_u16()),
        "{}",
        again.status()
    );
    assert_eq!(app.history_total("Patient").await, 2);
}

#[tokio::test]
async fn ids_are_scoped_by_type() {
    let app = spawn_app().await;
    for rt in ["Patient", "Organization"] {
        let response = app.update(&json!({"resourceType": rt, "id": "same"})).await;
        assert_eq!(response.status(), 201, "{rt}");
    }
    app.delete("Organization", "same").await;
    assert_eq!(app.read("Patient", "same").await.status(), 200);
    assert_eq!(app.read("Organization", "same").await.status(), 410);
}

#[tokio::test]
async fn a_deleted_resource_can_be_recreated_by_update() {
    let app = spawn_app().await;
    let created = app.created(&patient()).await;
    let id = id_of(&created);
    app.delete("Patient", id).await;
    let response = app.update(&created).await;
    assert_eq!(response.status(), 201);
    let read = app.read_json("Patient", id).await;
    assert_eq!(read["meta"]["versionId"], "3");
    assert_eq!(read["birthDate"], "1974-12-25");
}

#[tokio::test]
async fn resource_types_beyond_patient_can_be_created() {
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
        json!({"resourceType": "Basic", "code": {"text": "thing"}}),
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="}),
    ] {
        let rt = resource["resourceType"].as_str().expect("type").to_owned();
        let response = app.create(&resource).await;
        assert_eq!(response.status(), 201, "{rt}");
        let created: Value = response.json().await.expect("JSON");
        assert_eq!(app.read_json(&rt, id_of(&created)).await, created, "{rt}");
    }
}
