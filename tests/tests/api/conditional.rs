//! Conditional interactions: create with `If-None-Exist`, reads with `If-None-Match` and
//! `If-Modified-Since`.

use std::time::{Duration, SystemTime};

use reqwest::{Method, Response};
use serde_json::{Value, json};
use telemed_tests::{TestApp, id_of, spawn_app};

fn patient_with_identifier(value: &str) -> Value {
    json!({"resourceType": "Patient",
           "identifier": [{"system": "http://example.org/mrn", "value": value}],
           "name": [{"family": "Chalmers"}]})
}

async fn create_if_none_exist(app: &TestApp, resource: &Value, query: &str) -> Response {
    app.request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", query)
        .body(resource.to_string())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn conditional_create_with_a_matching_identifier_returns_the_existing_resource() {
    let app = spawn_app().await;
    let existing = app.created(&patient_with_identifier("12345")).await;
    let response = create_if_none_exist(
        &app,
        &patient_with_identifier("12345"),
        "identifier=http://example.org/mrn|12345",
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body, existing);
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn conditional_create_without_a_match_creates() {
    let app = spawn_app().await;
    app.created(&patient_with_identifier("12345")).await;
    let response = create_if_none_exist(
        &app,
        &patient_with_identifier("67890"),
        "identifier=http://example.org/mrn|67890",
    )
    .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("JSON");
    assert_eq!(created["identifier"][0]["value"], "67890");
    assert_eq!(app.history_total("Patient").await, 2);
}

#[tokio::test]
async fn conditional_create_by_id_finds_the_existing_resource() {
    let app = spawn_app().await;
    let existing = app.created(&patient_with_identifier("12345")).await;
    let response = create_if_none_exist(
        &app,
        &patient_with_identifier("other"),
        &format!("_id={}", id_of(&existing)),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.history_total("Patient").await, 1);
}

/// FHIR R4 http.html#ccreate: several matches → 412 Precondition Failed.
#[tokio::test]
async fn conditional_create_with_several_matches_is_412() {
    let app = spawn_app().await;
    app.created(&patient_with_identifier("twin")).await;
    app.created(&patient_with_identifier("twin")).await;
    let response = create_if_none_exist(
        &app,
        &patient_with_identifier("twin"),
        "identifier=http://example.org/mrn|twin",
    )
    .await;
    assert_eq!(response.status(), 412);
    assert_eq!(app.history_total("Patient").await, 2);
}

async fn read_with(app: &TestApp, id: &str, header: &str, value: String) -> u16 {
    app.request(Method::GET, &format!("Patient/{id}"))
        .header(header, value)
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

#[tokio::test]
async fn if_none_match_with_the_current_version_is_304() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let status = read_with(&app, id_of(&created), "if-none-match", "W/\"1\"".into()).await;
    assert_eq!(status, 304);
}

#[tokio::test]
async fn if_none_match_with_an_older_version_is_200() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    assert_eq!(app.update(&created).await.status(), 200);
    let status = read_with(&app, id_of(&created), "if-none-match", "W/\"1\"".into()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn if_modified_since_after_the_last_update_is_304() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    let status = read_with(&app, id_of(&created), "if-modified-since", later).await;
    assert_eq!(status, 304);
}

#[tokio::test]
async fn if_modified_since_before_the_last_update_is_200() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let earlier = "Sat, 01 Jan 2000 00:00:00 GMT".to_owned();
    let status = read_with(&app, id_of(&created), "if-modified-since", earlier).await;
    assert_eq!(status, 200);
}
