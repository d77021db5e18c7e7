//! `Patient/{id}/$everything` (FHIR R4 patient-operation-everything.html) as a client uses it:
//! the Patient and its compartment as matches, what they refer to as includes, `_type`,
//! `_since`, `_count` with `next` links, `total`, and the errors.
//!
//! Each test builds a record for two patients on a fresh server and compares the exact sets
//! returned, so an answer with too much (the other patient's data) fails as surely as one with
//! too little.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::{
    TestApp, expressions, get_url, id_of, included, key, keys, link, matches, search, search_error,
    spawn_app,
};

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// `$everything` of `patient` with `query` appended; panics unless it is a searchset Bundle.
async fn everything(app: &TestApp, patient: &str, query: &str) -> Value {
    search(app, &format!("Patient/{patient}/$everything{query}")).await
}

/// The `next` link of a Bundle, if any.
fn next_link(bundle: &Value) -> Option<String> {
    link(bundle, "next").map(str::to_owned)
}

/// Two patients' records: `alice`'s is the one asked for, `bob`'s must never show.
struct Record {
    alice: String,
    /// `{type}/{id}` of every resource in Alice's compartment, Alice included.
    compartment: Vec<String>,
    /// `{type}/{id}` of what Alice's resources refer to outside the compartment.
    referenced: Vec<String>,
    /// `{type}/{id}` of Bob and his own resources.
    bobs: Vec<String>,
    observation: String,
    practitioner: String,
    medication: String,
}

async fn record(app: &TestApp) -> Record {
    let created = |resource: Value| async move { app.created(&resource).await };
    let organization = created(json!({"resourceType": "Organization", "name": "Clinic"})).await;
    let org_ref = key(&organization);
    let practitioner =
        created(json!({"resourceType": "Practitioner", "name": [{"family": "Who"}]})).await;
    let dr = key(&practitioner);
    let location = created(json!({"resourceType": "Location", "name": "Room 1"})).await;
    let medication =
        created(json!({"resourceType": "Medication", "code": {"text": "Amoxicillin"}})).await;
    let alice = created(
        json!({"resourceType": "Patient", "name": [{"family": "Alice"}],
        "managingOrganization": {"reference": org_ref}}),
    )
    .await;
    let bob = created(json!({"resourceType": "Patient", "name": [{"family": "Bob"}]})).await;
    let (a, b) = (key(&alice), key(&bob));

    let observation = created(json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "Weight"}, "subject": {"reference": a}, "performer": [{"reference": dr}]}))
    .await;
    let encounter = created(json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": ACT_CODE, "code": "VR"}, "subject": {"reference": a},
        "location": [{"location": {"reference": key(&location)}}]}))
    .await;
    // A visit with both patients: in both compartments, yet Bob never comes as an include.
    let appointment = created(json!({"resourceType": "Appointment", "status": "booked",
        "participant": [{"actor": {"reference": a}, "status": "accepted"},
                        {"actor": {"reference": b}, "status": "accepted"},
                        {"actor": {"reference": dr}, "status": "accepted"}]}))
    .await;
    let prescription = created(json!({"resourceType": "MedicationRequest",
        "status": "active", "intent": "order", "subject": {"reference": a},
        "requester": {"reference": dr}, "medicationReference": {"reference": key(&medication)}}))
    .await;
    let allergy = created(json!({"resourceType": "AllergyIntolerance",
        "patient": {"reference": a}, "code": {"text": "Penicillin"}}))
    .await;
    // Alice is performer, not subject: still in her compartment.
    let performed = created(json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "Self-reported"}, "subject": {"reference": b},
        "performer": [{"reference": a}]}))
    .await;

    let bobs_observation = created(json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "Weight"}, "subject": {"reference": b}, "performer": [{"reference": dr}]}))
    .await;
    let bobs_condition = created(json!({"resourceType": "Condition",
        "subject": {"reference": b}, "code": {"text": "Asthma"}}))
    .await;
    // A Medication no one of Alice's refers to.
    created(json!({"resourceType": "Medication", "code": {"text": "Unrelated"}})).await;

    Record {
        alice: id_of(&alice).to_owned(),
        compartment: keys(&[
            &alice,
            &observation,
            &encounter,
            &appointment,
            &prescription,
            &allergy,
            &performed,
        ]),
        referenced: keys(&[&organization, &practitioner, &location, &medication]),
        bobs: vec![b, key(&bobs_observation), key(&bobs_condition)],
        observation: id_of(&observation).to_owned(),
        practitioner: id_of(&practitioner).to_owned(),
        medication: id_of(&medication).to_owned(),
    }
}

#[tokio::test]
async fn everything_returns_the_patient_and_its_compartment_as_matches() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let bundle = everything(&app, &record.alice, "").await;
    assert_eq!(matches(&bundle), record.compartment, "{bundle}");
    assert_eq!(bundle["total"], record.compartment.len(), "{bundle}");
}

#[tokio::test]
async fn resources_the_compartment_refers_to_come_as_includes() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let bundle = everything(&app, &record.alice, "").await;
    assert_eq!(included(&bundle), record.referenced, "{bundle}");
}

#[tokio::test]
async fn another_patients_resources_are_never_returned() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let bundle = everything(&app, &record.alice, "").await;
    let returned: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| key(&entry["resource"]))
        .collect();
    for bobs in &record.bobs {
        assert!(!returned.contains(bobs), "{bobs} returned: {returned:?}");
    }
}

#[tokio::test]
async fn entries_have_full_urls_and_links_point_at_the_operation() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let bundle = everything(&app, &record.alice, "").await;
    for entry in bundle["entry"].as_array().expect("entries") {
        let expected = format!("{}/{}", app.base, key(&entry["resource"]));
        assert_eq!(entry["fullUrl"], expected.as_str());
    }
    let this = bundle["link"][0]["url"].as_str().unwrap_or_default();
    assert!(
        this.starts_with(&format!(
            "{}/Patient/{}/$everything?",
            app.base, record.alice
        )),
        "{this}"
    );
}

#[tokio::test]
async fn deleted_resources_are_left_out() {
    let app = spawn_app().await;
    let record = record(&app).await;
    assert_eq!(
        app.delete("Observation", &record.observation)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.delete("Medication", &record.medication).await.status(),
        200
    );
    let bundle = everything(&app, &record.alice, "").await;
    let deleted_observation = format!("Observation/{}", record.observation);
    let expected: Vec<String> = record
        .compartment
        .iter()
        .filter(|k| **k != deleted_observation)
        .cloned()
        .collect();
    assert_eq!(matches(&bundle), expected, "{bundle}");
    assert_eq!(bundle["total"], expected.len());
    let includes = included(&bundle);
    assert!(
        !includes.contains(&format!("Medication/{}", record.medication)),
        "{includes:?}"
    );
    // The Practitioner is still referred to by the Appointment and the MedicationRequest.
    assert!(includes.contains(&format!("Practitioner/{}", record.practitioner)));
}

#[tokio::test]
async fn type_limits_matches_and_includes_to_the_types_named() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let bundle = everything(&app, &record.alice, "?_type=Observation,Practitioner").await;
    let observations: Vec<String> = record
        .compartment
        .iter()
        .filter(|k| k.starts_with("Observation/"))
        .cloned()
        .collect();
    assert_eq!(observations.len(), 2);
    assert_eq!(matches(&bundle), observations, "{bundle}");
    assert_eq!(
        included(&bundle),
        [format!("Practitioner/{}", record.practitioner)]
    );
    assert_eq!(bundle["total"], 2);
}

#[tokio::test]
async fn since_keeps_only_resources_updated_at_or_after_it() {
    let app = spawn_app().await;
    let record = record(&app).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = app
        .created(
            &json!({"resourceType": "Condition", "code": {"text": "Flu"},
                         "subject": {"reference": format!("Patient/{}", record.alice)}}),
        )
        .await;
    let since = later["meta"]["lastUpdated"].as_str().expect("lastUpdated");
    let query = format!("?_since={}", since.replace('+', "%2B"));
    let bundle = everything(&app, &record.alice, &query).await;
    assert_eq!(matches(&bundle), [key(&later)], "{bundle}");
    assert_eq!(bundle["total"], 1);
}

#[tokio::test]
async fn next_links_visit_every_resource_once_even_when_one_is_added_between_pages() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let first = everything(&app, &record.alice, "?_count=2").await;
    assert_eq!(matches(&first).len(), 2);
    assert_eq!(first["total"], record.compartment.len());
    let added = app
        .created(&json!({"resourceType": "Observation", "status": "final",
                         "code": {"text": "Added"},
                         "subject": {"reference": format!("Patient/{}", record.alice)}}))
        .await;

    let mut seen: Vec<String> = matches(&first);
    let mut next = next_link(&first);
    let mut pages = 1;
    while let Some(url) = next {
        pages += 1;
        assert!(pages < 20, "next links do not end");
        let (status, page) = get_url(&app, &url).await;
        assert_eq!(status, 200, "{url}");
        let matches = matches(&page);
        assert!(matches.len() <= 2, "{page}");
        assert_eq!(page["total"], record.compartment.len() + 1, "{page}");
        seen.extend(matches);
        next = next_link(&page);
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a resource came twice: {seen:?}");
    let mut expected = record.compartment.clone();
    expected.push(key(&added));
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn count_caps_a_page_and_summary_count_gives_the_total_alone() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let page = everything(&app, &record.alice, "?_count=3").await;
    assert_eq!(matches(&page).len(), 3);
    assert!(next_link(&page).is_some_and(|url| url.contains("_count=3")));
    let count = everything(&app, &record.alice, "?_summary=count").await;
    assert_eq!(count["total"], record.compartment.len());
    assert!(count.get("entry").is_none(), "{count}");
}

/// `POST Patient/{patient}/$everything` with `parameters` as its body, or none.
async fn post_everything(app: &TestApp, patient: &str, parameters: Option<&Value>) -> Value {
    let mut request = app.request(Method::POST, &format!("Patient/{patient}/$everything"));
    if let Some(parameters) = parameters {
        request = request
            .header("content-type", "application/fhir+json")
            .body(parameters.to_string());
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

#[tokio::test]
async fn post_with_parameters_works_like_get() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueCode": "AllergyIntolerance,MedicationRequest"},
        {"name": "_count", "valueInteger": 10}]});
    let bundle = post_everything(&app, &record.alice, Some(&parameters)).await;
    let expected: Vec<String> = record
        .compartment
        .iter()
        .filter(|k| k.starts_with("AllergyIntolerance/") || k.starts_with("MedicationRequest/"))
        .cloned()
        .collect();
    assert_eq!(matches(&bundle), expected, "{bundle}");
}

#[tokio::test]
async fn post_without_a_body_returns_everything() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let bundle = post_everything(&app, &record.alice, None).await;
    assert_eq!(matches(&bundle), record.compartment, "{bundle}");
}

#[tokio::test]
async fn an_unknown_patient_is_404_and_a_deleted_one_410() {
    let app = spawn_app().await;
    let (status, _) = search_error(&app, "Patient/nobody/$everything").await;
    assert_eq!(status, 404);
    let patient = app.created(&json!({"resourceType": "Patient"})).await;
    assert_eq!(app.delete("Patient", id_of(&patient)).await.status(), 200);
    let (status, _) = search_error(&app, &format!("Patient/{}/$everything", id_of(&patient))).await;
    assert_eq!(status, 410);
}

#[tokio::test]
async fn a_bad_type_since_or_count_is_400_naming_the_parameter() {
    let app = spawn_app().await;
    let patient = app.created(&json!({"resourceType": "Patient"})).await;
    for (query, parameter) in [
        ("_type=Observation,Nonsense", "_type"),
        ("_since=yesterday", "_since"),
        ("_count=many", "_count"),
    ] {
        let path = format!("Patient/{}/$everything?{query}", id_of(&patient));
        let (status, outcome) = search_error(&app, &path).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(expressions(&outcome), parameter, "{query}");
    }
}

#[tokio::test]
async fn everything_is_an_operation_on_patient_only() {
    let app = spawn_app().await;
    let observation = app
        .created(&json!({"resourceType": "Observation", "status": "final",
                         "code": {"text": "Weight"}}))
        .await;
    let (status, _) = search_error(
        &app,
        &format!("Observation/{}/$everything", id_of(&observation)),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_capability_statement_lists_everything_on_patient() {
    let app = spawn_app().await;
    let statement: Value = app.get("metadata").await.json().await.expect("JSON");
    let patient = statement["rest"][0]["resource"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["type"] == "Patient")
        .cloned()
        .expect("Patient is listed");
    assert_eq!(patient["operation"][0]["name"], "everything");
    assert_eq!(
        patient["operation"][0]["definition"],
        "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    );
}
