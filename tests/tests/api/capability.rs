//! `GET /fhir/metadata`.

use serde_json::Value;
use telemed_tests::spawn_app;

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
    assert_eq!(resources.len(), 146);
    for rt in [
        "Patient",
        "Procedure",
        "Immunization",
        "ExplanationOfBenefit",
        "Encounter",
    ] {
        let resource = resources.iter().find(|r| r["type"] == rt).expect(rt);
        let codes: Vec<&str> = resource["interaction"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["code"].as_str())
            .collect();
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
            assert!(codes.contains(&code), "{rt} lacks {code}");
        }
    }
    assert_eq!(rest["interaction"][0]["code"], "history-system");
    assert_eq!(statement["implementation"]["url"], app.base);
}

/// What the statement claims must be true: a type it lists accepts a create.
#[tokio::test]
async fn every_listed_type_answers_on_its_type_history() {
    let app = spawn_app().await;
    let statement: Value = app.get("metadata").await.json().await.expect("JSON");
    for resource in statement["rest"][0]["resource"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let rt = resource["type"].as_str().expect("type");
        assert_eq!(
            app.get(&format!("{rt}/_history?_count=1")).await.status(),
            200,
            "{rt}"
        );
    }
}
