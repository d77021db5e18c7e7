//! Bad input gets a clear 4xx with an OperationOutcome, and leaves nothing behind.

use reqwest::Method;
use serde_json::Value;
use telemed_tests::{TestApp, assert_operation_outcome, expressions, spawn_app, spawn_app_with};

async fn post(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let response = app
        .request(Method::POST, path)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let outcome: Value = response.json().await.expect("an OperationOutcome");
    assert_operation_outcome(&outcome);
    (status, outcome)
}

const FHIR: &str = "application/fhir+json";

#[tokio::test]
async fn schema_violations_are_400_and_name_the_element() {
    let app = spawn_app().await;
    for (body, at) in [
        (
            r#"{"resourceType":"Patient","birthDate":"not-a-date"}"#,
            "Patient.birthDate",
        ),
        (
            r#"{"resourceType":"Patient","gender":"dunno"}"#,
            "Patient.gender",
        ),
        (
            r#"{"resourceType":"Patient","name":[{"given":["a",5]}]}"#,
            "Patient.name[0].given[1]",
        ),
        (r#"{"resourceType":"Patient","foo":1}"#, "Patient"),
    ] {
        let (status, outcome) = post(&app, "Patient", FHIR, body).await;
        assert_eq!(status, 400, "{body}");
        assert!(expressions(&outcome).contains(at), "{body}: {outcome}");
    }
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn unknown_property_is_named_in_the_message() {
    let app = spawn_app().await;
    let (_, outcome) = post(
        &app,
        "Patient",
        FHIR,
        r#"{"resourceType":"Patient","foo":1}"#,
    )
    .await;
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("foo"))
    );
}

#[tokio::test]
async fn resource_type_must_match_the_url() {
    let app = spawn_app().await;
    let (status, outcome) = post(&app, "Patient", FHIR, r#"{"resourceType":"Observation"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(expressions(&outcome), "Patient.resourceType");
    let (status, _) = post(&app, "Patient", FHIR, r#"{"name":[]}"#).await;
    assert_eq!(status, 400);
    assert_eq!(app.history_total("Patient").await, 0);
    assert_eq!(app.history_total("Observation").await, 0);
}

#[tokio::test]
async fn malformed_json_and_non_objects_are_400() {
    let app = spawn_app().await;
    for body in [r#"{"resourceType":"#, "[1,2,3]", "\"Patient\"", ""] {
        let (status, _) = post(&app, "Patient", FHIR, body).await;
        assert_eq!(status, 400, "{body:?}");
    }
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn invalid_utf8_is_400() {
    let app = spawn_app().await;
    let mut body = br#"{"resourceType":"Patient","name":[{"family":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}]}"#);
    let (status, _) = post(&app, "Patient", FHIR, body).await;
    assert_eq!(status, 400);
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn deep_nesting_is_400_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let body = format!(
        r#"{{"resourceType":"Patient","extension":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (status, _) = post(&app, "Patient", FHIR, body).await;
    assert_eq!(status, 400);
    assert_eq!(app.get("metadata").await.status(), 200);
    assert_eq!(
        app.create(&serde_json::json!({"resourceType": "Patient"}))
            .await
            .status(),
        201
    );
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(|config| config.max_body_bytes = 4096).await;
    let body = format!(
        r#"{{"resourceType":"Patient","id":"x","text":"{}"}}"#,
        "a".repeat(8192)
    );
    let (status, _) = post(&app, "Patient", FHIR, body).await;
    assert_eq!(status, 413);
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn a_body_just_under_the_limit_is_accepted() {
    let app = spawn_app_with(|config| config.max_body_bytes = 4096).await;
    let body = format!(
        r#"{{"resourceType":"Patient","name":[{{"family":"{}"}}]}}"#,
        "a".repeat(3000)
    );
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", FHIR)
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
}

/// Without a Content-Length the limit must still hold while the body streams in.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app_with(|config| config.max_body_bytes = 4096).await;
    let authority = app
        .base
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .expect("an http base URL")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect");
    let mut request = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {FHIR}\r\n\
         Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.token
    );
    let body = format!(
        r#"{{"resourceType":"Patient","name":[{{"family":"{}"}}]}}"#,
        "a".repeat(8192)
    );
    for chunk in body.as_bytes().chunks(1000) {
        request.push_str(&format!("{:x}\r\n", chunk.len()));
        request.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before it has read everything; that is its right.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn a_non_json_media_type_is_415() {
    let app = spawn_app().await;
    for content_type in [
        "text/plain",
        "application/fhir+xml",
        "application/x-www-form-urlencoded",
    ] {
        let (status, _) = post(
            &app,
            "Patient",
            content_type,
            r#"{"resourceType":"Patient"}"#,
        )
        .await;
        assert_eq!(status, 415, "{content_type}");
    }
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn an_update_with_a_non_json_media_type_is_415() {
    let app = spawn_app().await;
    let response = app
        .request(Method::PUT, "Patient/p")
        .header("content-type", "application/xml")
        .body(r#"{"resourceType":"Patient","id":"p"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);
    assert_operation_outcome(&response.json().await.expect("JSON"));
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn an_invalid_update_changes_nothing() {
    let app = spawn_app().await;
    let created = app
        .created(&serde_json::json!({"resourceType": "Patient", "gender": "male"}))
        .await;
    let id = created["id"].as_str().expect("id");
    let response = app
        .request(Method::PUT, &format!("Patient/{id}"))
        .header("content-type", FHIR)
        .body(format!(
            r#"{{"resourceType":"Patient","id":"{id}","gender":"dunno"}}"#
        ))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let outcome: Value = response.json().await.expect("JSON");
    assert!(
        expressions(&outcome).contains("Patient.gender"),
        "{outcome}"
    );
    assert_eq!(app.read_json("Patient", id).await, created);
}

#[tokio::test]
async fn an_unknown_type_is_404() {
    let app = spawn_app().await;
    let (status, _) = post(&app, "Foo", FHIR, r#"{"resourceType":"Foo"}"#).await;
    assert_eq!(status, 404);
    assert_eq!(app.get("Foo/1").await.status(), 404);
    assert_eq!(app.get("Foo/_history").await.status(), 404);
    assert_eq!(app.get("patient/1").await.status(), 404);
    let response = app
        .request(Method::PUT, "Foo/1")
        .header("content-type", FHIR)
        .body(r#"{"resourceType":"Foo","id":"1"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 404);
    assert_operation_outcome(&response.json().await.expect("JSON"));
}

/// Abstract types and data types are not resource types one can write.
#[tokio::test]
async fn abstract_and_data_types_are_404() {
    let app = spawn_app().await;
    for rt in ["Resource", "DomainResource", "HumanName", "Extension"] {
        let (status, _) = post(&app, rt, FHIR, format!(r#"{{"resourceType":"{rt}"}}"#)).await;
        assert_eq!(status, 404, "{rt}");
    }
}

#[tokio::test]
async fn an_unsupported_interaction_is_405_with_an_operation_outcome() {
    let app = spawn_app().await;
    let (status, _) = post(&app, "Patient/123", FHIR, r#"{"resourceType":"Patient"}"#).await;
    assert_eq!(status, 405);
    let response = app
        .request(Method::PATCH, "Patient")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 405);
    let outcome: Value = response.json().await.expect("JSON");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn an_invalid_id_in_an_update_url_is_400() {
    let app = spawn_app().await;
    let response = app
        .request(Method::PUT, "Patient/has%20space")
        .header("content-type", FHIR)
        .body(r#"{"resourceType":"Patient","id":"has space"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_bad_contained_resource_is_named_by_its_path() {
    let app = spawn_app().await;
    let (status, outcome) = post(
        &app,
        "Patient",
        FHIR,
        r#"{"resourceType":"Patient","contained":[{"resourceType":"Organization","id":"o","active":"yes"}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    let at = expressions(&outcome);
    assert!(
        at.split(", ").all(|e| e == "Patient.contained[0].active"),
        "{at}"
    );
}

/// The schema cannot bound an integer; the typed model can (FHIR integers are 32-bit).
#[tokio::test]
async fn an_integer_out_of_range_is_400_naming_the_element() {
    let app = spawn_app().await;
    let (status, outcome) = post(
        &app,
        "Patient",
        FHIR,
        r#"{"resourceType":"Patient","multipleBirthInteger":3000000000}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(expressions(&outcome), "Patient.multipleBirthInteger");
    assert_eq!(app.history_total("Patient").await, 0);
}
