//! `GET /fhir/metadata`.

use serde_json::Value;
use telemed_tests::spawn_app;

/// Every concrete resource type of R4, from the official JSON schema's discriminator (146).
fn r4_resource_types() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/fhir.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the vendored R4 schema"))
            .expect("JSON");
    let mut types: Vec<String> = schema["discriminator"]["mapping"]
        .as_object()
        .expect("a discriminator mapping")
        .keys()
        .cloned()
        .collect();
    types.sort_unstable();
    assert_eq!(types.len(), 146);
    types
}

#[tokio::test]
async fn the_capability_statement_lists_every_type_and_interaction() {
    let app = spawn_app().await;
    let response = app.get("metadata").await;
    assert_eq!(response.status(), 200);
    let statement: Value = response.json().await.expect("JSON");
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["kind"], "instance");
    assert!(
        statement["format"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "json"))
    );
    let rest = &statement["rest"][0];
    assert_eq!(rest["mode"], "server");
    let resources = rest["resource"].as_array().expect("resources");
    let mut listed: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, r4_resource_types());
    for rt in [
        "Patient",
        "Procedure",
        "Immunization",
        "ExplanationOfBenefit",
        "Binary",
        "Bundle",
    ] {
        assert!(resources.iter().any(|r| r["type"] == rt), "{rt} is missing");
    }
    for resource in resources {
        let codes: Vec<&str> = resource["interaction"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["code"].as_str())
            .collect();
        if resource["type"] == "AuditEvent" {
            // The audit trail is read and searched, never written.
            assert_eq!(codes, ["read", "vread", "search-type"]);
            continue;
        }
        for code in [
            "read",
            "vread",
            "update",
            "patch",
            "delete",
            "history-instance",
            "history-type",
            "create",
        ] {
            assert!(codes.contains(&code), "{} lacks {code}", resource["type"]);
        }
    }
    assert!(
        rest["interaction"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["code"] == "history-system"),
        "{}",
        rest["interaction"]
    );
    assert_eq!(statement["implementation"]["url"], app.base);
}

/// What the statement claims must be true: a type that lists `history-type` answers it.
#[tokio::test]
async fn every_listed_type_answers_on_its_type_history() {
    let app = spawn_app().await;
    let statement: Value = app.get("metadata").await.json().await.expect("JSON");
    for resource in statement["rest"][0]["resource"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|resource| {
            resource["interaction"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| i["code"] == "history-type")
        })
    {
        let rt = resource["type"].as_str().expect("type");
        assert_eq!(
            app.get(&format!("{rt}/_history?_count=1")).await.status(),
            200,
            "{rt}"
        );
    }
}
