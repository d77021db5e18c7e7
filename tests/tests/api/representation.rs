//! What comes back: Prefer, conditional reads, _summary, _elements, _pretty, _format, fidelity.

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::spawn_app;

#[tokio::test]
async fn prefer_return_minimal_and_operation_outcome() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("location"));
    assert!(response.text().await.expect("body").is_empty());
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn if_none_match_and_if_modified_since_give_304() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{}", created["id"].as_str().expect("id"));
    let response = app
        .request(Method::GET, &path)
        .header("if-none-match", "W/\"1\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 304);
    let response = app
        .request(Method::GET, &path)
        .header("if-none-match", "W/\"2\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let later =
        httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
    let response = app
        .request(Method::GET, &path)
        .header("if-modified-since", later)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 304);
    let response = app
        .request(Method::GET, &path)
        .header("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn summary_and_elements_return_a_tagged_subset() {
    let app = spawn_app().await;
    let created = app
        .created(
            &json!({"resourceType": "Patient", "gender": "male", "birthDate": "1974-12-25",
                          "photo": [{"contentType": "image/png"}]}),
        )
        .await;
    let path = format!("Patient/{}", created["id"].as_str().expect("id"));
    let summary: Value = app
        .get(&format!("{path}?_summary=true"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(summary["gender"], "male");
    assert!(summary.get("photo").is_none());
    assert_eq!(summary["meta"]["tag"][0]["code"], "SUBSETTED");
    let elements: Value = app
        .get(&format!("{path}?_elements=birthDate"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(elements["birthDate"], "1974-12-25");
    assert!(elements.get("gender").is_none());
    assert_eq!(elements["id"], created["id"]);
}

#[tokio::test]
async fn pretty_output_is_indented_and_format_json_is_accepted() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{}", created["id"].as_str().expect("id"));
    let pretty = app
        .get(&format!("{path}?_pretty=true&_format=json"))
        .await
        .text()
        .await
        .expect("text");
    assert!(pretty.contains("\n  \"resourceType\""), "{pretty}");
    let response = app
        .get(&format!("{path}?_format=application/fhir%2Bjson"))
        .await;
    assert_eq!(response.status(), 200);
    let response = app.get(&format!("{path}?_format=xml")).await;
    assert_eq!(response.status(), 406);
}

#[tokio::test]
async fn plain_application_json_is_accepted_both_ways() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
}

/// Primitive extensions, nulls in `_given`, extensions, contained resources, decimal precision
/// and key order come back exactly as sent, plus id and meta.
#[tokio::test]
async fn a_resource_round_trips_to_the_byte() {
    let app = spawn_app().await;
    let sent = r##"{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"p1","name":[{"given":["A","B"],"_given":[null,{"extension":[{"url":"http://example.org/x","valueString":"y"}]}]}]}],"extension":[{"url":"http://example.org/e","valueDecimal":1.50}],"modifierExtension":[{"url":"http://example.org/m","valueBoolean":true}],"status":"final","code":{"text":"weight"},"subject":{"reference":"#p1"},"effectiveDateTime":"2024-05-01","_effectiveDateTime":{"extension":[{"url":"http://example.org/d","valueCode":"approx"}]},"valueQuantity":{"value":72.50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}"##;
    let response = app
        .request(Method::PUT, "Observation/exact")
        .header("content-type", "application/fhir+json")
        .body(sent.replacen(
            "{\"resourceType\":\"Observation\",",
            "{\"resourceType\":\"Observation\",\"id\":\"exact\",",
            1,
        ))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let read = app
        .get("Observation/exact")
        .await
        .text()
        .await
        .expect("text");
    let version: Value = serde_json::from_str(&read).expect("JSON");
    let meta = serde_json::to_string(&version["meta"]).expect("meta");
    let expected = sent.replacen(
        "{\"resourceType\":\"Observation\",",
        &format!("{{\"resourceType\":\"Observation\",\"id\":\"exact\",\"meta\":{meta},"),
        1,
    );
    assert_eq!(read, expected);
    assert!(read.contains("\"value\":72.50"));
}
