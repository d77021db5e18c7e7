//! A search narrowed by the server (`SearchQuery::narrow`, an OR of filter groups that no
//! client parameter can express): resources written through the store with their real index
//! rows, then searched through `search::execute` as the FHIR handlers search.
//!
//! Runs on SQLite by default, on PostgreSQL when `TELEMED_TEST_DATABASE_URL` is set.

mod common;
mod stores;

use fhir_models::ResourceType;
use serde_json::{Value, json};
use stores::TestStore;
use telemed_server::search::execute::{self, Page, PlannerStats};
use telemed_server::search::query::{self, Filter, Limits, SearchQuery};

const BASE: &str = stores::BASE;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn observations(list: &[(&str, &str)]) -> SearchQuery {
    let limits = Limits {
        default_count: 50,
        max_count: 100,
    };
    query::parse(
        vec![ResourceType::Observation],
        &pairs(list),
        true,
        BASE,
        &limits,
    )
    .expect("the query parses")
}

fn group(list: &[(&str, &str)]) -> Vec<Filter> {
    query::parse_filters(&[ResourceType::Observation], &pairs(list), BASE)
        .expect("the filters parse")
}

/// The compartment of Patient `p` for Observations: its subject or a performer.
fn compartment(p: &str) -> Vec<Vec<Filter>> {
    let patient = format!("Patient/{p}");
    vec![
        group(&[("subject", &patient)]),
        group(&[("performer", &patient)]),
    ]
}

fn observation(id: &str, subject: &str, performer: Option<&str>, category: &str) -> Value {
    let mut resource = json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": category}]}],
        "code": {"text": "a measurement"},
        "subject": {"reference": format!("Patient/{subject}")}
    });
    if let Some(performer) = performer {
        resource["performer"] = json!([{"reference": format!("Patient/{performer}")}]);
    }
    resource
}

/// Patients 1 and 2; Observations: a (subject 1, lab), b (subject 2, performer 1, vitals),
/// c (subject 2, lab), d (subject 1, vitals).
async fn population() -> TestStore {
    let store = TestStore::new().await;
    for p in ["1", "2"] {
        store
            .put(json!({"resourceType": "Patient", "id": p, "active": true}))
            .await;
    }
    store.put(observation("a", "1", None, "laboratory")).await;
    store
        .put(observation("b", "2", Some("1"), "vital-signs"))
        .await;
    store.put(observation("c", "2", None, "laboratory")).await;
    store.put(observation("d", "1", None, "vital-signs")).await;
    store
}

fn ids(found: &[execute::Found]) -> Vec<String> {
    let mut ids: Vec<String> = found
        .iter()
        .map(|f| format!("{}/{}", f.version.resource_type, f.version.id))
        .collect();
    ids.sort();
    ids
}

async fn page(store: &TestStore, query: &SearchQuery) -> Page {
    execute::page(&store.store, &PlannerStats::default(), query)
        .await
        .expect("the search runs")
}

#[tokio::test]
async fn a_compartment_narrowing_finds_the_patients_resources_by_any_reference() {
    let store = population().await;
    let mut query = observations(&[]);
    query.narrow(compartment("1"));
    let found = page(&store, &query).await;
    assert_eq!(
        ids(&found.matches),
        ["Observation/a", "Observation/b", "Observation/d"]
    );
    assert_eq!(found.total, Some(3));
    store.drop_database().await;
}

#[tokio::test]
async fn a_narrowing_holds_beside_the_clients_parameters() {
    let store = population().await;
    let mut query = observations(&[("category", "laboratory"), ("_total", "accurate")]);
    query.narrow(compartment("1"));
    let found = page(&store, &query).await;
    assert_eq!(ids(&found.matches), ["Observation/a"]);
    assert_eq!(found.total, Some(1));
    let counted = execute::count(&store.store, &PlannerStats::default(), &query)
        .await
        .expect("the count runs");
    assert_eq!(counted, 1);
    store.drop_database().await;
}

#[tokio::test]
async fn scope_groups_narrow_as_an_or_of_ands() {
    let store = population().await;
    // `category=laboratory` OR `category=vital-signs&subject=Patient/1`.
    let mut query = observations(&[]);
    query.narrow(vec![
        group(&[("category", "laboratory")]),
        group(&[("category", "vital-signs"), ("subject", "Patient/1")]),
    ]);
    let found = page(&store, &query).await;
    assert_eq!(
        ids(&found.matches),
        ["Observation/a", "Observation/c", "Observation/d"]
    );
    store.drop_database().await;
}

#[tokio::test]
async fn a_narrowing_with_no_groups_finds_nothing() {
    let store = population().await;
    let mut query = observations(&[]);
    query.narrow(Vec::new());
    let found = page(&store, &query).await;
    assert!(found.matches.is_empty());
    assert_eq!(found.total, Some(0));
    store.drop_database().await;
}

#[tokio::test]
async fn includes_of_a_narrowed_search_come_back_apart_from_its_matches() {
    let store = population().await;
    let mut query = observations(&[("_include", "Observation:subject")]);
    query.narrow(compartment("1"));
    let found = page(&store, &query).await;
    assert_eq!(
        ids(&found.matches),
        ["Observation/a", "Observation/b", "Observation/d"]
    );
    // Observation b's subject is Patient 2: the narrowing does not reach includes, which a
    // caller filters in `Page::included`.
    assert_eq!(ids(&found.included), ["Patient/1", "Patient/2"]);
    store.drop_database().await;
}

#[test]
fn a_narrowing_refuses_a_parameter_it_does_not_know() {
    let error = query::parse_filters(
        &[ResourceType::Observation],
        &pairs(&[("no-such-parameter", "1")]),
        BASE,
    );
    assert!(error.is_err());
    let error = query::parse_filters(
        &[ResourceType::Observation],
        &pairs(&[("_count", "1")]),
        BASE,
    );
    assert!(error.is_err());
}
