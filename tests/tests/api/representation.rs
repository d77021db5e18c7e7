//! What comes back: Prefer, _summary, _elements, _pretty, _format, fidelity.

use reqwest::{Method, Response};
use serde_json::{Value, json};
use telemed_tests::{TestApp, assert_operation_outcome, id_of, spawn_app};

async fn post_preferring(app: &TestApp, prefer: &str) -> Response {
    app.request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", prefer)
        .body(r#"{"resourceType":"Patient","active":true}"#)
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn prefer_return_minimal_gives_an_empty_body() {
    let app = spawn_app().await;
    let response = post_preferring(&app, "return=minimal").await;
    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("location"));
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert!(response.text().await.expect("body").is_empty());
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn prefer_return_operation_outcome_gives_an_operation_outcome() {
    let app = spawn_app().await;
    let response = post_preferring(&app, "return=OperationOutcome").await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("JSON");
    assert_operation_outcome(&body);
}

#[tokio::test]
async fn prefer_return_representation_is_the_default() {
    let app = spawn_app().await;
    for prefer in ["return=representation", "respond-async-is-not-a-thing"] {
        let response = post_preferring(&app, prefer).await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["resourceType"], "Patient", "{prefer}");
        assert_eq!(body["active"], true, "{prefer}");
    }
}

#[tokio::test]
async fn prefer_return_minimal_applies_to_update() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let response = app
        .request(Method::PUT, &format!("Patient/{}", id_of(&created)))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(created.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    assert!(response.text().await.expect("body").is_empty());
}

fn is_subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            t["code"] == "SUBSETTED"
                && t["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
        })
}

async fn stored_patient(app: &TestApp) -> Value {
    app.created(
        &json!({"resourceType": "Patient", "gender": "male", "birthDate": "1974-12-25",
                        "name": [{"family": "Chalmers"}],
                        "photo": [{"contentType": "image/png"}]}),
    )
    .await
}

#[tokio::test]
async fn summary_true_keeps_only_summary_elements_and_is_tagged() {
    let app = spawn_app().await;
    let created = stored_patient(&app).await;
    let summary: Value = app
        .get(&format!("Patient/{}?_summary=true", id_of(&created)))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(summary["gender"], "male");
    assert_eq!(summary["name"], created["name"]);
    assert!(summary.get("photo").is_none(), "{summary}");
    assert!(is_subsetted(&summary), "{summary}");
}

#[tokio::test]
async fn elements_keeps_the_named_elements_and_is_tagged() {
    let app = spawn_app().await;
    let created = stored_patient(&app).await;
    let elements: Value = app
        .get(&format!(
            "Patient/{}?_elements=name,birthDate",
            id_of(&created)
        ))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(elements["birthDate"], "1974-12-25");
    assert_eq!(elements["name"], created["name"]);
    assert_eq!(elements["id"], created["id"]);
    assert_eq!(elements["resourceType"], "Patient");
    assert!(elements.get("gender").is_none(), "{elements}");
    assert!(elements.get("photo").is_none(), "{elements}");
    assert!(is_subsetted(&elements), "{elements}");
}

#[tokio::test]
async fn summary_text_keeps_text_and_mandatory_elements_only() {
    let app = spawn_app().await;
    let created = app
        .created(
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "text": {"status": "generated",
                                  "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                         "valueString": "secret"}),
        )
        .await;
    let summary: Value = app
        .get(&format!("Observation/{}?_summary=text", id_of(&created)))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(summary["text"], created["text"]);
    assert_eq!(summary["status"], "final");
    assert_eq!(summary["code"], created["code"]);
    assert!(summary.get("valueString").is_none(), "{summary}");
    assert!(is_subsetted(&summary), "{summary}");
}

#[tokio::test]
async fn summary_data_drops_the_text() {
    let app = spawn_app().await;
    let created = app
        .created(&json!({"resourceType": "Patient", "gender": "male",
                         "text": {"status": "generated",
                                  "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}}))
        .await;
    let summary: Value = app
        .get(&format!("Patient/{}?_summary=data", id_of(&created)))
        .await
        .json()
        .await
        .expect("JSON");
    assert!(summary.get("text").is_none(), "{summary}");
    assert_eq!(summary["gender"], "male");
    assert!(is_subsetted(&summary), "{summary}");
}

#[tokio::test]
async fn a_full_read_is_not_tagged_subsetted() {
    let app = spawn_app().await;
    let created = stored_patient(&app).await;
    let read = app.read_json("Patient", id_of(&created)).await;
    assert!(!is_subsetted(&read));
}

#[tokio::test]
async fn pretty_output_is_indented() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{}", id_of(&created));
    let pretty = app
        .get(&format!("{path}?_pretty=true"))
        .await
        .text()
        .await
        .expect("text");
    assert!(pretty.contains("\n  \"resourceType\""), "{pretty}");
    let compact = app.get(&path).await.text().await.expect("text");
    assert!(!compact.contains('\n'), "{compact}");
}

/// A searchset is compact unless `_pretty` asks for it indented, and holds the same entries,
/// each resource as it was stored, either way.
#[tokio::test]
async fn a_searchset_is_compact_or_pretty_with_the_same_entries() {
    let app = spawn_app().await;
    let created = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Ölçer \"Q\""}]}))
        .await;
    let query = format!("Patient?_id={}", id_of(&created));
    let compact = app.get(&query).await.text().await.expect("text");
    let pretty = app
        .get(&format!("{query}&_pretty=true"))
        .await
        .text()
        .await
        .expect("text");
    assert!(!compact.contains('\n'), "{compact}");
    assert!(
        pretty.contains("\n  \"resourceType\": \"Bundle\""),
        "{pretty}"
    );
    let entries = |text: &str| {
        let bundle: Value = serde_json::from_str(text).expect("JSON");
        bundle["entry"].clone()
    };
    assert_eq!(entries(&compact), entries(&pretty));
    assert_eq!(entries(&compact)[0]["resource"], created);
}

#[tokio::test]
async fn format_json_is_accepted_and_answers_fhir_json() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{}", id_of(&created));
    for format in ["json", "application/fhir%2Bjson", "application/json"] {
        let response = app.get(&format!("{path}?_format={format}")).await;
        assert_eq!(response.status(), 200, "{format}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body, created, "{format}");
    }
}

#[tokio::test]
async fn format_xml_is_406() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let response = app
        .get(&format!("Patient/{}?_format=xml", id_of(&created)))
        .await;
    assert_eq!(response.status(), 406);
}

#[tokio::test]
async fn plain_application_json_is_accepted_both_ways() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(r#"{"resourceType":"Patient","active":true}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["active"], true);
}

/// PUTs `sent` (which must start with `{"resourceType":"{rt}",`) as `{rt}/{id}` and returns the
/// raw text of a read, together with what the read should say byte for byte.
async fn round_trip(app: &TestApp, rt: &str, id: &str, sent: &str) -> (String, String) {
    let prefix = format!("{{\"resourceType\":\"{rt}\",");
    assert!(sent.starts_with(&prefix));
    let response = app
        .request(Method::PUT, &format!("{rt}/{id}"))
        .header("content-type", "application/fhir+json")
        .body(sent.replacen(&prefix, &format!("{prefix}\"id\":\"{id}\","), 1))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let read = app.read(rt, id).await.text().await.expect("text");
    let version: Value = serde_json::from_str(&read).expect("JSON");
    let meta = serde_json::to_string(&version["meta"]).expect("meta");
    let expected = sent.replacen(
        &prefix,
        &format!("{prefix}\"id\":\"{id}\",\"meta\":{meta},"),
        1,
    );
    (read, expected)
}

/// Primitive extensions, nulls in `_given`, extensions, contained resources and key order come
/// back exactly as sent, plus id and meta.
#[tokio::test]
async fn primitive_extensions_and_nulls_round_trip_to_the_byte() {
    let app = spawn_app().await;
    let sent = r##"{"resourceType":"Patient","extension":[{"url":"http://example.org/e","valueString":"x"}],"modifierExtension":[{"url":"http://example.org/m","valueBoolean":true}],"name":[{"given":["A","B"],"_given":[null,{"extension":[{"url":"http://example.org/x","valueString":"y"}]}],"family":"Z"}],"birthDate":"1970-03-30","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-03-30T13:25:00+01:00"}]},"gender":"other"}"##;
    let (read, expected) = round_trip(&app, "Patient", "exact", sent).await;
    assert_eq!(read, expected);
}

#[tokio::test]
async fn contained_resources_and_decimals_round_trip_to_the_byte() {
    let app = spawn_app().await;
    let sent = r##"{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"p1","name":[{"family":"Q"}]}],"extension":[{"url":"http://example.org/e","valueDecimal":1.000}],"status":"final","code":{"text":"weight"},"subject":{"reference":"#p1"},"effectiveDateTime":"2024-05-01","_effectiveDateTime":{"extension":[{"url":"http://example.org/d","valueCode":"approx"}]},"valueQuantity":{"value":1.50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}"##;
    let (read, expected) = round_trip(&app, "Observation", "exact", sent).await;
    assert!(read.contains("\"value\":1.50"), "{read}");
    assert_eq!(read, expected);
}

#[tokio::test]
async fn large_and_tiny_decimals_keep_every_digit() {
    let app = spawn_app().await;
    let sent = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"component":[{"code":{"text":"a"},"valueQuantity":{"value":12345678901234567890.123456789}},{"code":{"text":"b"},"valueQuantity":{"value":0.000000000000000000001}},{"code":{"text":"c"},"valueQuantity":{"value":-0.0}}]}"#;
    let (read, expected) = round_trip(&app, "Observation", "digits", sent).await;
    assert_eq!(read, expected);
}

/// FHIR decimals may use an exponent; the literal, not just the number, comes back.
#[tokio::test]
#[ignore = "not yet: serde_json writes exponents as e+N; the value and precision survive, the spelling does not"]
async fn decimals_in_exponent_form_come_back_as_sent() {
    let app = spawn_app().await;
    let sent = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"component":[{"code":{"text":"a"},"valueQuantity":{"value":1.5e3}},{"code":{"text":"b"},"valueQuantity":{"value":2.50E-3}}]}"#;
    let (read, expected) = round_trip(&app, "Observation", "exponents", sent).await;
    assert_eq!(read, expected);
}
