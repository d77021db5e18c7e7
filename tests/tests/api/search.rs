//! Search (FHIR R4 search.html) as a client uses it: the searchset Bundle and its paging, every
//! parameter type with its prefixes and modifiers, the common parameters, sorting, subsetting,
//! includes, chains, `_has`, errors, and the conditional interactions built on search.
//!
//! Each test makes its own data on a fresh server and compares the exact set of matches, so a
//! search that finds too much fails as surely as one that finds too little.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::{
    TestApp, assert_operation_outcome, entries, get_url, id_of, included, key, keys, link, matches,
    matches_in_order, post_bundle, search, search_error, search_ids, spawn_app,
};

const MRN: &str = "http://example.org/mrn";
const OTHER_SYSTEM: &str = "http://example.org/other";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Everything an OperationOutcome says where a client would look for what was wrong:
/// diagnostics, details, expressions and locations of every issue.
fn outcome_text(outcome: &Value) -> String {
    let mut text = Vec::new();
    for issue in outcome["issue"].as_array().into_iter().flatten() {
        for field in [&issue["diagnostics"], &issue["details"]["text"]] {
            text.extend(field.as_str().map(str::to_owned));
        }
        for list in [&issue["expression"], &issue["location"]] {
            let items = list.as_array().into_iter().flatten();
            text.extend(items.filter_map(|e| e.as_str().map(str::to_owned)));
        }
    }
    text.join(" | ")
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

/// `base` with the members of `extra` added (or replaced).
fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

fn patient(extra: Value) -> Value {
    merged(json!({"resourceType": "Patient"}), extra)
}

fn named(family: &str, given: &str) -> Value {
    patient(json!({"name": [{"family": family, "given": [given]}]}))
}

fn with_identifier(system: Option<&str>, value: &str) -> Value {
    let identifier = match system {
        Some(system) => json!({"system": system, "value": value}),
        None => json!({"value": value}),
    };
    patient(json!({"identifier": [identifier]}))
}

fn observation(extra: Value) -> Value {
    merged(
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "Test"}}),
        extra,
    )
}

fn observation_of(subject: &str) -> Value {
    observation(json!({"subject": {"reference": subject}}))
}

/// Commits `entries` in one transaction Bundle; panics unless the answer is 200.
async fn transaction(app: &TestApp, entries: Vec<Value>) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let response = post_bundle(app, &bundle).await;
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
}

/// A transaction entry that creates or updates `resource` at the id it carries.
fn put_entry(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap_or_default(),
        resource["id"].as_str().unwrap_or_default()
    );
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

fn encounter(extra: Value) -> Value {
    merged(
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": ACT_CODE, "code": "VR"}}),
        extra,
    )
}

fn encounter_between(start: &str, end: &str) -> Value {
    encounter(json!({"period": {"start": start, "end": end}}))
}

/// A booked Appointment; `actors` are its participants' references.
fn appointment(start: &str, end: &str, actors: &[&str]) -> Value {
    let participant: Vec<Value> = actors
        .iter()
        .map(|actor| json!({"actor": {"reference": actor}, "status": "accepted"}))
        .collect();
    json!({"resourceType": "Appointment", "status": "booked", "start": start, "end": end,
           "participant": participant})
}

/// An Observation whose valueQuantity is `value` (kept as written, e.g. `5.40`).
fn quantity(value: &str, system: &str, code: &str) -> Value {
    let value: Value = serde_json::from_str(value).expect("a decimal");
    observation(
        json!({"valueQuantity": {"value": value, "unit": code, "system": system,
                                         "code": code}}),
    )
}

/// Four Patients: `MRN|123`, `OTHER_SYSTEM|123`, `123` without a system, `MRN|999`.
async fn identified_patients(app: &TestApp) -> [Value; 4] {
    created_in_order(
        app,
        [
            with_identifier(Some(MRN), "123"),
            with_identifier(Some(OTHER_SYSTEM), "123"),
            with_identifier(None, "123"),
            with_identifier(Some(MRN), "999"),
        ],
    )
    .await
}

/// Four Encounters around 2024-01-10: before it, within it, spanning it (from the 9th to the
/// 11th), after it.
async fn visits_around_january_10(app: &TestApp) -> [Value; 4] {
    created_in_order(
        app,
        [
            encounter_between("2024-01-05T09:00:00Z", "2024-01-05T10:00:00Z"),
            encounter_between("2024-01-10T09:00:00Z", "2024-01-10T10:00:00Z"),
            encounter_between("2024-01-09T12:00:00Z", "2024-01-11T12:00:00Z"),
            encounter_between("2024-01-15T09:00:00Z", "2024-01-15T10:00:00Z"),
        ],
    )
    .await
}

/// Four Patients born 1979-12-31, 1980-05-03, 1980-06-01 and 1981-01-01.
async fn born_around_1980(app: &TestApp) -> [Value; 4] {
    created_in_order(
        app,
        ["1979-12-31", "1980-05-03", "1980-06-01", "1981-01-01"]
            .map(|date| patient(json!({"birthDate": date}))),
    )
    .await
}

/// Creates `resources` one after the other.
async fn created_in_order<const N: usize>(app: &TestApp, resources: [Value; N]) -> [Value; N] {
    let mut created = Vec::with_capacity(N);
    for resource in &resources {
        created.push(app.created(resource).await);
    }
    created.try_into().expect("N resources")
}

// ---------------------------------------------------------------------------------------------
// The searchset Bundle

#[tokio::test]
async fn search_answers_a_searchset_bundle_in_fhir_json() {
    let app = spawn_app().await;
    app.created(&named("Smith", "Anna")).await;
    let response = app.get("Patient?family=smith").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(
        content_type.starts_with("application/fhir+json"),
        "{content_type}"
    );
    let bundle: Value = response.json().await.expect("JSON");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
}

#[tokio::test]
async fn every_match_has_an_absolute_full_url_and_search_mode_match() {
    let app = spawn_app().await;
    let anna = app.created(&named("Smith", "Anna")).await;
    let bob = app.created(&named("Smith", "Bob")).await;
    let bundle = search(&app, "Patient?family=smith").await;
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{bundle}");
    for entry in entries {
        let id = id_of(&entry["resource"]);
        assert_eq!(
            entry["fullUrl"],
            format!("{}/Patient/{id}", app.base),
            "{entry}"
        );
        assert_eq!(entry["search"]["mode"], "match", "{entry}");
    }
    assert_eq!(matches(&bundle), keys(&[&anna, &bob]));
}

#[tokio::test]
async fn the_self_link_is_absolute_and_repeats_the_search() {
    let app = spawn_app().await;
    let smith = app.created(&named("Smith", "Anna")).await;
    app.created(&named("Jones", "Bob")).await;
    let bundle = search(&app, "Patient?family=smith").await;
    let url = link(&bundle, "self").expect("a self link");
    assert!(url.starts_with(&format!("{}/Patient", app.base)), "{url}");
    let (status, again) = get_url(&app, url).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(matches(&again), keys(&[&smith]));
}

#[tokio::test]
async fn total_accurate_counts_every_match_not_just_the_page() {
    let app = spawn_app().await;
    for given in ["Anna", "Bob", "Carol"] {
        app.created(&named("Smith", given)).await;
    }
    app.created(&named("Jones", "Dave")).await;
    let bundle = search(&app, "Patient?family=smith&_total=accurate&_count=1").await;
    assert_eq!(bundle["total"], 3, "{bundle}");
    assert_eq!(matches(&bundle).len(), 1, "{bundle}");
}

#[tokio::test]
async fn post_search_with_a_form_body_finds_what_get_finds() {
    let app = spawn_app().await;
    let anna = app
        .created(&merged(named("Smith", "Anna"), json!({"gender": "female"})))
        .await;
    app.created(&merged(named("Smith", "Bob"), json!({"gender": "male"})))
        .await;
    app.created(&merged(
        named("Jones", "Carol"),
        json!({"gender": "female"}),
    ))
    .await;
    let response = app
        .request(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=smi&gender=female")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.expect("JSON");
    assert_eq!(bundle["type"], "searchset", "{bundle}");
    assert_eq!(matches(&bundle), keys(&[&anna]));
    assert_eq!(
        search_ids(&app, "Patient?family=smi&gender=female").await,
        matches(&bundle)
    );
}

#[tokio::test]
async fn system_search_with_type_covers_exactly_the_named_types() {
    let app = spawn_app().await;
    let patient = app.created(&named("Smith", "Anna")).await;
    app.created(&named("Jones", "Bob")).await;
    let practitioner = app
        .created(&json!({"resourceType": "Practitioner", "name": [{"family": "Smith"}]}))
        .await;
    app.created(&json!({"resourceType": "Organization", "name": "Smith Clinic"}))
        .await;
    let (status, bundle) = get_url(
        &app,
        &format!("{}?_type=Patient,Practitioner&name=smith", app.base),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "searchset", "{bundle}");
    assert_eq!(matches(&bundle), keys(&[&patient, &practitioner]));
}

// ---------------------------------------------------------------------------------------------
// Paging

#[tokio::test]
async fn count_limits_the_page_and_links_to_the_next() {
    let app = spawn_app().await;
    for _ in 0..5 {
        app.created(&patient(json!({"active": true}))).await;
    }
    let bundle = search(&app, "Patient?_count=2").await;
    assert_eq!(matches(&bundle).len(), 2, "{bundle}");
    assert!(link(&bundle, "next").is_some(), "{bundle}");
}

#[tokio::test]
async fn following_next_links_visits_every_match_exactly_once() {
    let app = spawn_app().await;
    let mut expected = Vec::new();
    for _ in 0..5 {
        expected.push(key(&app.created(&patient(json!({"active": true}))).await));
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut url = format!("{}/Patient?_count=2", app.base);
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 20, "next links do not end");
        let (status, bundle) = get_url(&app, &url).await;
        assert_eq!(status, 200, "{url}: {bundle}");
        seen.extend(matches_in_order(&bundle));
        match link(&bundle, "next") {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn the_second_page_links_back_to_the_first() {
    let app = spawn_app().await;
    for _ in 0..5 {
        app.created(&patient(json!({"active": true}))).await;
    }
    let first = search(&app, "Patient?_count=2").await;
    let (_, second) = get_url(&app, link(&first, "next").expect("a next link")).await;
    let previous = link(&second, "previous")
        .or_else(|| link(&second, "prev"))
        .unwrap_or_else(|| panic!("no previous link: {second}"));
    let (status, back) = get_url(&app, previous).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(matches_in_order(&back), matches_in_order(&first));
}

/// A resource created while a client pages must neither repeat nor push out an original match.
#[tokio::test]
async fn paging_is_stable_when_a_match_is_created_between_pages() {
    let app = spawn_app().await;
    let mut originals = Vec::new();
    for given in ["A", "B", "C", "D", "E"] {
        originals.push(key(&app.created(&named("Smith", given)).await));
    }
    let mut seen = Vec::new();
    let mut url = format!("{}/Patient?family=smith&_count=2", app.base);
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 20, "next links do not end");
        let (status, bundle) = get_url(&app, &url).await;
        assert_eq!(status, 200, "{url}: {bundle}");
        seen.extend(matches_in_order(&bundle));
        if pages == 1 {
            app.created(&named("Smith", "Late")).await;
        }
        match link(&bundle, "next") {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "seen twice: {seen:?}");
    for original in &originals {
        assert!(seen.contains(original), "{original} skipped: {seen:?}");
    }
}

/// Every match of `query`, page by page through the `next` links, in order, and the pages.
async fn every_page(app: &TestApp, query: &str) -> (Vec<String>, Vec<Value>) {
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut url = format!("{}/{query}", app.base);
    loop {
        assert!(pages.len() < 20, "next links do not end");
        let (status, bundle) = get_url(app, &url).await;
        assert_eq!(status, 200, "{url}: {bundle}");
        seen.extend(matches_in_order(&bundle));
        let next = link(&bundle, "next").map(str::to_owned);
        pages.push(bundle);
        match next {
            Some(next) => url = next,
            None => break,
        }
    }
    (seen, pages)
}

/// The matches of the pages before `page`, through the `previous` links back to the first, in
/// order.
async fn pages_before(app: &TestApp, page: &Value) -> Vec<String> {
    let mut back = Vec::new();
    let mut url = link(page, "previous").map(str::to_owned);
    while let Some(previous) = url {
        assert!(back.len() < 20, "previous links do not end");
        let (status, bundle) = get_url(app, &previous).await;
        assert_eq!(status, 200, "{previous}: {bundle}");
        back.push(matches_in_order(&bundle));
        url = link(&bundle, "previous").map(str::to_owned);
    }
    back.into_iter().rev().flatten().collect()
}

/// A search by one name pages in the order of the names matched (a patient by the first of
/// its names that matches, once however many do), then of creation.
#[tokio::test]
async fn a_name_search_pages_in_the_order_of_the_names_it_matched() {
    let app = spawn_app().await;
    let [smoot_smith, smith, smalls, smith_smith, jones_smit] = created_in_order(
        &app,
        [
            named("Smoot", "Smith"),
            named("Smith", "Ann"),
            named("Smalls", "Bo"),
            named("Smith", "Smith"),
            named("Jones", "Smit"),
        ],
    )
    .await;
    app.created(&named("Jones", "Ann")).await;
    // "smalls" < "smit" < "smith" (three of them, in the order they were created).
    let expected = [&smalls, &jones_smit, &smoot_smith, &smith, &smith_smith].map(key);
    let (seen, pages) = every_page(&app, "Patient?name=sm&_count=2").await;
    assert_eq!(seen, expected);
    assert_eq!(pages.len(), 3);
    // Back from the last page, one page at a time, to the first.
    let mut back = Vec::new();
    let mut page = pages.last().cloned().expect("a page");
    while let Some(previous) = link(&page, "previous").map(str::to_owned) {
        assert!(back.len() < 20, "previous links do not end");
        let (status, bundle) = get_url(&app, &previous).await;
        assert_eq!(status, 200, "{bundle}");
        back.splice(0..0, matches_in_order(&bundle));
        page = bundle;
    }
    assert_eq!(back, expected[..4]);
}

/// The resource a page ended with marks where the next starts, even when it changed by then:
/// renamed (matching still or no longer) or deleted, it is where it was.
#[tokio::test]
async fn paging_by_name_goes_on_after_the_last_match_of_a_page_is_renamed_or_deleted() {
    for change in ["Zimmer", "Aaron", "Axel", "delete"] {
        let app = spawn_app().await;
        let all = created_in_order(
            &app,
            ["Adams", "Abbott", "Ames", "Allen", "Avery"].map(|family| named(family, "Jo")),
        )
        .await;
        // abbott, adams, allen | ames, avery
        let first = search(&app, "Patient?name=a&_count=3").await;
        assert_eq!(
            matches_in_order(&first),
            [&all[1], &all[0], &all[3]].map(key)
        );
        let next = link(&first, "next").expect("a next link").to_owned();
        let allen = &all[3];
        match change {
            "delete" => assert_eq!(app.delete("Patient", id_of(allen)).await.status(), 200),
            family => {
                let renamed = merged(allen.clone(), json!({"name": [{"family": family}]}));
                assert_eq!(app.update(&renamed).await.status(), 200);
            }
        }
        let (status, second) = get_url(&app, &next).await;
        assert_eq!(status, 200, "{change}: {second}");
        // Renamed to a name further on, it is found again there.
        let mut expected = vec![key(&all[2]), key(&all[4])];
        if change == "Axel" {
            expected.push(key(allen));
        }
        assert_eq!(matches_in_order(&second), expected, "{change}");
    }
}

#[tokio::test]
async fn a_count_above_the_server_maximum_is_capped_not_rejected() {
    let app = spawn_app().await;
    let all = created_in_order(
        &app,
        [
            named("Smith", "A"),
            named("Smith", "B"),
            named("Smith", "C"),
        ],
    )
    .await;
    let bundle = search(&app, "Patient?_count=5000").await;
    assert!(
        bundle["entry"].as_array().map_or(0, Vec::len) <= 1000,
        "a page larger than the server maximum"
    );
    assert_eq!(matches(&bundle), keys(&[&all[0], &all[1], &all[2]]));
}

// ---------------------------------------------------------------------------------------------
// token

#[tokio::test]
async fn token_system_and_value_matches_only_that_system() {
    let app = spawn_app().await;
    let [mrn_123, _other_123, _bare_123, _mrn_999] = identified_patients(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Patient?identifier={MRN}|123")).await,
        keys(&[&mrn_123])
    );
}

#[tokio::test]
async fn token_value_alone_matches_any_system() {
    let app = spawn_app().await;
    let [mrn_123, other_123, bare_123, _mrn_999] = identified_patients(&app).await;
    assert_eq!(
        search_ids(&app, "Patient?identifier=123").await,
        keys(&[&mrn_123, &other_123, &bare_123])
    );
}

#[tokio::test]
async fn token_with_an_empty_system_matches_only_codes_without_a_system() {
    let app = spawn_app().await;
    let [_mrn_123, _other_123, bare_123, _mrn_999] = identified_patients(&app).await;
    assert_eq!(
        search_ids(&app, "Patient?identifier=|123").await,
        keys(&[&bare_123])
    );
}

#[tokio::test]
async fn token_system_alone_matches_every_value_in_it() {
    let app = spawn_app().await;
    let [mrn_123, _other_123, _bare_123, mrn_999] = identified_patients(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Patient?identifier={MRN}|")).await,
        keys(&[&mrn_123, &mrn_999])
    );
}

#[tokio::test]
async fn token_on_a_code_matches_gender() {
    let app = spawn_app().await;
    let female = app.created(&patient(json!({"gender": "female"}))).await;
    app.created(&patient(json!({"gender": "male"}))).await;
    app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?gender=female").await,
        keys(&[&female])
    );
}

#[tokio::test]
async fn not_modifier_includes_resources_without_the_element() {
    let app = spawn_app().await;
    let female = app.created(&patient(json!({"gender": "female"}))).await;
    app.created(&patient(json!({"gender": "male"}))).await;
    let unknown = app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?gender:not=male").await,
        keys(&[&female, &unknown])
    );
}

#[tokio::test]
async fn text_modifier_searches_codeable_concept_text_and_coding_display() {
    let app = spawn_app().await;
    let by_display = app
        .created(&observation(json!({"code": {"coding": [{
            "system": LOINC, "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}]}})))
        .await;
    let by_text = app
        .created(&observation(json!({"code": {"text": "Glucose, fasting"}})))
        .await;
    app.created(&observation(json!({"code": {"text": "Hemoglobin A1c"}})))
        .await;
    assert_eq!(
        search_ids(&app, "Observation?code:text=glucose").await,
        keys(&[&by_display, &by_text])
    );
}

#[tokio::test]
async fn of_type_modifier_matches_the_identifier_type_and_value() {
    let app = spawn_app().await;
    let typed = |code: &str| {
        patient(json!({"identifier": [{
            "type": {"coding": [{"system": V2_0203, "code": code}]},
            "system": MRN, "value": "12345"}]}))
    };
    let medical_record = app.created(&typed("MR")).await;
    app.created(&typed("SS")).await;
    assert_eq!(
        search_ids(
            &app,
            &format!("Patient?identifier:of-type={V2_0203}|MR|12345")
        )
        .await,
        keys(&[&medical_record])
    );
}

#[tokio::test]
async fn token_on_a_boolean_matches_active() {
    let app = spawn_app().await;
    let active = app.created(&patient(json!({"active": true}))).await;
    app.created(&patient(json!({"active": false}))).await;
    app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?active=true").await,
        keys(&[&active])
    );
}

#[tokio::test]
async fn a_comma_between_values_is_or() {
    let app = spawn_app().await;
    let male = app.created(&patient(json!({"gender": "male"}))).await;
    let female = app.created(&patient(json!({"gender": "female"}))).await;
    app.created(&patient(json!({"gender": "other"}))).await;
    app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?gender=male,female").await,
        keys(&[&male, &female])
    );
}

#[tokio::test]
async fn a_repeated_parameter_is_and() {
    let app = spawn_app().await;
    let both = app
        .created(&patient(json!({"identifier": [
            {"system": MRN, "value": "1"}, {"system": OTHER_SYSTEM, "value": "2"}]})))
        .await;
    app.created(&with_identifier(Some(MRN), "1")).await;
    app.created(&with_identifier(Some(OTHER_SYSTEM), "2")).await;
    assert_eq!(
        search_ids(
            &app,
            &format!("Patient?identifier={MRN}|1&identifier={OTHER_SYSTEM}|2")
        )
        .await,
        keys(&[&both])
    );
}

#[tokio::test]
async fn phone_matches_only_phone_contact_points() {
    let app = spawn_app().await;
    let phone = app
        .created(&patient(
            json!({"telecom": [{"system": "phone", "value": "555-0100"}]}),
        ))
        .await;
    app.created(&patient(
        json!({"telecom": [{"system": "fax", "value": "555-0100"}]}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Patient?phone=555-0100").await,
        keys(&[&phone])
    );
}

#[tokio::test]
async fn telecom_matches_any_contact_point() {
    let app = spawn_app().await;
    let phone = app
        .created(&patient(
            json!({"telecom": [{"system": "phone", "value": "555-0100"}]}),
        ))
        .await;
    let fax = app
        .created(&patient(
            json!({"telecom": [{"system": "fax", "value": "555-0100"}]}),
        ))
        .await;
    app.created(&patient(
        json!({"telecom": [{"system": "phone", "value": "555-0199"}]}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Patient?telecom=555-0100").await,
        keys(&[&phone, &fax])
    );
}

#[tokio::test]
async fn email_matches_an_email_address() {
    let app = spawn_app().await;
    let anna = app
        .created(&patient(
            json!({"telecom": [{"system": "email", "value": "anna@example.org"}]}),
        ))
        .await;
    app.created(&patient(
        json!({"telecom": [{"system": "email", "value": "bob@example.org"}]}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Patient?email=anna@example.org").await,
        keys(&[&anna])
    );
}

#[tokio::test]
async fn observation_category_matches_a_coding() {
    let app = spawn_app().await;
    let category = |code: &str| {
        observation(json!({"category": [{"coding": [
            {"system": OBSERVATION_CATEGORY, "code": code}]}]}))
    };
    let vital = app.created(&category("vital-signs")).await;
    app.created(&category("laboratory")).await;
    assert_eq!(
        search_ids(
            &app,
            &format!("Observation?category={OBSERVATION_CATEGORY}|vital-signs")
        )
        .await,
        keys(&[&vital])
    );
}

#[tokio::test]
async fn observation_status_matches_a_code() {
    let app = spawn_app().await;
    let preliminary = app
        .created(&observation(json!({"status": "preliminary"})))
        .await;
    app.created(&observation(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Observation?status=preliminary").await,
        keys(&[&preliminary])
    );
}

#[tokio::test]
async fn combo_code_matches_the_code_or_a_component_code() {
    let app = spawn_app().await;
    let systolic = json!({"coding": [{"system": LOINC, "code": "8480-6"}]});
    let as_code = app.created(&observation(json!({"code": systolic}))).await;
    let as_component = app
        .created(&observation(json!({
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "component": [{"code": systolic, "valueString": "120"}]})))
        .await;
    app.created(&observation(
        json!({"code": {"coding": [{"system": LOINC, "code": "8867-4"}]}}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, &format!("Observation?combo-code={LOINC}|8480-6")).await,
        keys(&[&as_code, &as_component])
    );
}

#[tokio::test]
async fn encounter_class_matches_a_coding() {
    let app = spawn_app().await;
    let virtual_visit = app.created(&encounter(json!({}))).await;
    app.created(&encounter(
        json!({"class": {"system": ACT_CODE, "code": "AMB"}}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, &format!("Encounter?class={ACT_CODE}|VR")).await,
        keys(&[&virtual_visit])
    );
}

#[tokio::test]
async fn encounter_status_matches_a_code() {
    let app = spawn_app().await;
    let ongoing = app
        .created(&encounter(json!({"status": "in-progress"})))
        .await;
    app.created(&encounter(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Encounter?status=in-progress").await,
        keys(&[&ongoing])
    );
}

// ---------------------------------------------------------------------------------------------
// string

#[tokio::test]
async fn string_search_is_case_insensitive_and_matches_the_start() {
    let app = spawn_app().await;
    let smith = app.created(&named("Smith", "Anna")).await;
    app.created(&named("Goldsmith", "Bob")).await;
    app.created(&named("Jones", "Carol")).await;
    assert_eq!(search_ids(&app, "Patient?name=SMI").await, keys(&[&smith]));
}

#[tokio::test]
async fn string_search_ignores_accents() {
    let app = spawn_app().await;
    let rene = app.created(&named("Dupont", "René")).await;
    app.created(&named("Dupont", "Marc")).await;
    assert_eq!(search_ids(&app, "Patient?name=rene").await, keys(&[&rene]));
}

#[tokio::test]
async fn exact_modifier_is_case_sensitive_and_whole() {
    let app = spawn_app().await;
    let exact = app.created(&named("Smith", "Anna")).await;
    app.created(&named("smith", "Bob")).await;
    app.created(&named("Smithers", "Carol")).await;
    assert_eq!(
        search_ids(&app, "Patient?family:exact=Smith").await,
        keys(&[&exact])
    );
}

#[tokio::test]
async fn contains_modifier_matches_anywhere_in_the_string() {
    let app = spawn_app().await;
    let smith = app.created(&named("Smith", "Anna")).await;
    let goldsmith = app.created(&named("Goldsmith", "Bob")).await;
    app.created(&named("Jones", "Carol")).await;
    assert_eq!(
        search_ids(&app, "Patient?family:contains=MIT").await,
        keys(&[&smith, &goldsmith])
    );
}

#[tokio::test]
async fn name_matches_given_names_too() {
    let app = spawn_app().await;
    let peter = app.created(&named("Chalmers", "Peter")).await;
    app.created(&named("Jones", "Anna")).await;
    assert_eq!(search_ids(&app, "Patient?name=pet").await, keys(&[&peter]));
}

#[tokio::test]
async fn family_searches_only_the_family_name() {
    let app = spawn_app().await;
    app.created(&named("Chalmers", "Peter")).await;
    let peterson = app.created(&named("Peterson", "Anna")).await;
    assert_eq!(
        search_ids(&app, "Patient?family=peter").await,
        keys(&[&peterson])
    );
}

#[tokio::test]
async fn given_searches_only_given_names() {
    let app = spawn_app().await;
    let peter = app.created(&named("Chalmers", "Peter")).await;
    app.created(&named("Peterson", "Anna")).await;
    assert_eq!(
        search_ids(&app, "Patient?given=peter").await,
        keys(&[&peter])
    );
}

#[tokio::test]
async fn address_city_matches_the_start_of_the_city() {
    let app = spawn_app().await;
    let boston = app
        .created(&patient(json!({"address": [{"city": "Boston"}]})))
        .await;
    app.created(&patient(json!({"address": [{"city": "Chicago"}]})))
        .await;
    assert_eq!(
        search_ids(&app, "Patient?address-city=bos").await,
        keys(&[&boston])
    );
}

#[tokio::test]
async fn value_string_matches_an_observation_string_value() {
    let app = spawn_app().await;
    let positive = app
        .created(&observation(
            json!({"valueString": "Positive for influenza A"}),
        ))
        .await;
    app.created(&observation(json!({"valueString": "Negative"})))
        .await;
    assert_eq!(
        search_ids(&app, "Observation?value-string=positive").await,
        keys(&[&positive])
    );
}

#[tokio::test]
async fn organization_name_matches_the_start_of_the_name() {
    let app = spawn_app().await;
    let boston = app
        .created(&json!({"resourceType": "Organization", "name": "Boston Clinic"}))
        .await;
    app.created(&json!({"resourceType": "Organization", "name": "Chicago Clinic"}))
        .await;
    assert_eq!(
        search_ids(&app, "Organization?name=boston").await,
        keys(&[&boston])
    );
}

#[tokio::test]
async fn practitioner_family_matches_the_family_name() {
    let app = spawn_app().await;
    let smith = app
        .created(&json!({"resourceType": "Practitioner",
                         "name": [{"family": "Smith", "given": ["Jane"]}]}))
        .await;
    app.created(&json!({"resourceType": "Practitioner",
                        "name": [{"family": "Jones", "given": ["Smitty"]}]}))
        .await;
    assert_eq!(
        search_ids(&app, "Practitioner?family=smi").await,
        keys(&[&smith])
    );
}

#[tokio::test]
async fn location_name_matches_the_start_of_the_name() {
    let app = spawn_app().await;
    let main_street = app
        .created(&json!({"resourceType": "Location", "name": "Main Street Clinic"}))
        .await;
    app.created(&json!({"resourceType": "Location", "name": "Harbor Clinic"}))
        .await;
    assert_eq!(
        search_ids(&app, "Location?name=main").await,
        keys(&[&main_street])
    );
}

// ---------------------------------------------------------------------------------------------
// date

#[tokio::test]
async fn a_year_matches_every_date_in_it() {
    let app = spawn_app().await;
    let [_, may_3, june_1, _] = born_around_1980(&app).await;
    assert_eq!(
        search_ids(&app, "Patient?birthdate=1980").await,
        keys(&[&may_3, &june_1])
    );
}

#[tokio::test]
async fn a_month_matches_every_date_in_it() {
    let app = spawn_app().await;
    let [_, may_3, _, _] = born_around_1980(&app).await;
    assert_eq!(
        search_ids(&app, "Patient?birthdate=1980-05").await,
        keys(&[&may_3])
    );
}

#[tokio::test]
async fn a_day_matches_that_date() {
    let app = spawn_app().await;
    let [_, may_3, _, _] = born_around_1980(&app).await;
    assert_eq!(
        search_ids(&app, "Patient?birthdate=1980-05-03").await,
        keys(&[&may_3])
    );
}

/// `lt1980` is below the whole year 1980, so a date inside 1980 does not match.
#[tokio::test]
async fn lt_a_year_excludes_dates_in_that_year() {
    let app = spawn_app().await;
    let [new_years_eve, _, _, _] = born_around_1980(&app).await;
    assert_eq!(
        search_ids(&app, "Patient?birthdate=lt1980").await,
        keys(&[&new_years_eve])
    );
}

#[tokio::test]
async fn ge_a_month_includes_dates_in_that_month() {
    let app = spawn_app().await;
    let [_, may_3, june_1, next_year] = born_around_1980(&app).await;
    assert_eq!(
        search_ids(&app, "Patient?birthdate=ge1980-05").await,
        keys(&[&may_3, &june_1, &next_year])
    );
}

/// eq: the day contains the whole period, so a period that spills over it does not match.
#[tokio::test]
async fn eq_matches_periods_inside_the_day() {
    let app = spawn_app().await;
    let [_before, within, _spanning, _after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=eq2024-01-10").await,
        keys(&[&within])
    );
}

#[tokio::test]
async fn ne_matches_periods_not_inside_the_day() {
    let app = spawn_app().await;
    let [before, _within, spanning, after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=ne2024-01-10").await,
        keys(&[&before, &spanning, &after])
    );
}

#[tokio::test]
async fn gt_matches_periods_that_reach_beyond_the_day() {
    let app = spawn_app().await;
    let [_before, _within, spanning, after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=gt2024-01-10").await,
        keys(&[&spanning, &after])
    );
}

#[tokio::test]
async fn lt_matches_periods_that_reach_before_the_day() {
    let app = spawn_app().await;
    let [before, _within, spanning, _after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=lt2024-01-10").await,
        keys(&[&before, &spanning])
    );
}

#[tokio::test]
async fn ge_matches_periods_in_or_reaching_beyond_the_day() {
    let app = spawn_app().await;
    let [_before, within, spanning, after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=ge2024-01-10").await,
        keys(&[&within, &spanning, &after])
    );
}

#[tokio::test]
async fn le_matches_periods_in_or_reaching_before_the_day() {
    let app = spawn_app().await;
    let [before, within, spanning, _after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=le2024-01-10").await,
        keys(&[&before, &within, &spanning])
    );
}

/// sa: starts after the day, without overlapping it.
#[tokio::test]
async fn sa_matches_only_periods_wholly_after_the_day() {
    let app = spawn_app().await;
    let [_before, _within, _spanning, after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=sa2024-01-10").await,
        keys(&[&after])
    );
}

/// eb: ends before the day, without overlapping it.
#[tokio::test]
async fn eb_matches_only_periods_wholly_before_the_day() {
    let app = spawn_app().await;
    let [before, _within, _spanning, _after] = visits_around_january_10(&app).await;
    assert_eq!(
        search_ids(&app, "Encounter?date=eb2024-01-10").await,
        keys(&[&before])
    );
}

/// ap is approximate by the server's own measure; the same day matches and decades away does not.
#[tokio::test]
async fn ap_matches_the_same_day_and_not_decades_away() {
    let app = spawn_app().await;
    let same_day = app
        .created(&observation(
            json!({"effectiveDateTime": "2024-01-10T12:00:00Z"}),
        ))
        .await;
    app.created(&observation(
        json!({"effectiveDateTime": "1990-01-10T12:00:00Z"}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Observation?date=ap2024-01-10").await,
        keys(&[&same_day])
    );
}

#[tokio::test]
async fn observation_date_matches_effective_date_time() {
    let app = spawn_app().await;
    let march_1 = app
        .created(&observation(
            json!({"effectiveDateTime": "2024-03-01T12:00:00Z"}),
        ))
        .await;
    app.created(&observation(
        json!({"effectiveDateTime": "2024-03-02T12:00:00Z"}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Observation?date=2024-03-01").await,
        keys(&[&march_1])
    );
}

/// A Period without an end is still going on: it reaches any later date.
#[tokio::test]
async fn a_period_without_an_end_is_open_ended() {
    let app = spawn_app().await;
    let ongoing = app
        .created(&encounter(json!({"status": "in-progress",
                                   "period": {"start": "2024-01-10T09:00:00Z"}})))
        .await;
    app.created(&encounter_between(
        "2024-01-10T09:00:00Z",
        "2024-01-10T10:00:00Z",
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Encounter?date=gt2030-01-01").await,
        keys(&[&ongoing])
    );
}

#[tokio::test]
async fn two_date_parameters_make_a_range() {
    let app = spawn_app().await;
    let at = |instant: &str| observation(json!({"effectiveDateTime": instant}));
    let [_, january, _] = created_in_order(
        &app,
        [
            at("2023-12-31T12:00:00Z"),
            at("2024-01-15T12:00:00Z"),
            at("2024-02-01T12:00:00Z"),
        ],
    )
    .await;
    assert_eq!(
        search_ids(&app, "Observation?date=ge2024-01-01&date=lt2024-02-01").await,
        keys(&[&january])
    );
}

/// `date` of Appointment (its start) and of Encounter (its period) has one row a resource, and
/// the repeats of a range are tested together on it: exactly what lies in the range is found,
/// its edges as the prefixes say, counted the same.
#[tokio::test]
async fn a_range_on_a_date_of_one_value_finds_what_lies_in_it() {
    let app = spawn_app().await;
    let doctor = key(&app.created(&json!({"resourceType": "Practitioner"})).await);
    let other = key(&app.created(&json!({"resourceType": "Practitioner"})).await);
    let at = |start: &str, who: &str| appointment(start, start, &[who]);
    let [_, first, middle, _, _] = created_in_order(
        &app,
        [
            at("2025-02-28T23:59:59Z", &doctor),
            at("2025-03-01T00:00:00Z", &doctor),
            at("2025-03-15T10:00:00Z", &doctor),
            at("2025-04-01T00:00:00Z", &doctor),
            at("2025-03-15T10:00:00Z", &other),
        ],
    )
    .await;
    let march = format!("Appointment?practitioner={doctor}&date=ge2025-03-01&date=lt2025-04-01");
    assert_eq!(search_ids(&app, &march).await, keys(&[&first, &middle]));
    let counted = search(&app, &format!("{march}&_total=accurate")).await;
    assert_eq!(counted["total"], 2, "{counted}");
    let counted = search(&app, &format!("{march}&_summary=count")).await;
    assert_eq!(counted["total"], 2, "{counted}");
    // A third bound on the same row, and bounds that no one start meets.
    assert_eq!(
        search_ids(&app, &format!("{march}&date=ne2025-03-01")).await,
        keys(&[&middle])
    );
    assert!(
        search_ids(
            &app,
            &format!("Appointment?practitioner={doctor}&date=lt2025-03-01&date=gt2025-03-31")
        )
        .await
        .is_empty()
    );

    // A period is one range: the encounter that spans the day and the one inside it.
    let [spanning, inside, _] = created_in_order(
        &app,
        [
            encounter_between("2024-01-09T08:00:00Z", "2024-01-11T08:00:00Z"),
            encounter_between("2024-01-10T09:00:00Z", "2024-01-10T10:00:00Z"),
            encounter_between("2024-01-12T09:00:00Z", "2024-01-12T10:00:00Z"),
        ],
    )
    .await;
    assert_eq!(
        search_ids(&app, "Encounter?date=ge2024-01-10&date=le2024-01-10").await,
        keys(&[&spanning, &inside])
    );
    assert_eq!(
        search_ids(&app, "Encounter?date=sa2024-01-09&date=eb2024-01-11").await,
        keys(&[&inside])
    );
}

/// A date a resource has several values of (a Timing's events) is not one row: each repeat of
/// a range may hold on a different value.
#[tokio::test]
async fn the_repeats_of_a_date_of_several_values_may_each_hold_on_its_own() {
    let app = spawn_app().await;
    let twice = app
        .created(&observation(json!({
            "effectiveTiming": {"event": ["2022-06-01T10:00:00Z", "2025-06-01T10:00:00Z"]}
        })))
        .await;
    app.created(&observation(
        json!({"effectiveDateTime": "2022-06-01T10:00:00Z"}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Observation?date=lt2023-01-01&date=gt2025-01-01").await,
        keys(&[&twice])
    );
}

#[tokio::test]
async fn appointment_date_matches_the_start() {
    let app = spawn_app().await;
    let doctor = key(&app.created(&json!({"resourceType": "Practitioner"})).await);
    let february_1 = app
        .created(&appointment(
            "2024-02-01T10:00:00Z",
            "2024-02-01T10:30:00Z",
            &[&doctor],
        ))
        .await;
    app.created(&appointment(
        "2024-02-02T10:00:00Z",
        "2024-02-02T10:30:00Z",
        &[&doctor],
    ))
    .await;
    assert_eq!(
        search_ids(&app, "Appointment?date=2024-02-01").await,
        keys(&[&february_1])
    );
}

// ---------------------------------------------------------------------------------------------
// reference

/// A Patient, an Observation of theirs, and an Observation of another Patient.
async fn observations_of_two_patients(app: &TestApp) -> (Value, Value) {
    let patient = app.created(&named("Smith", "Anna")).await;
    let other = app.created(&named("Jones", "Bob")).await;
    let theirs = app.created(&observation_of(&key(&patient))).await;
    app.created(&observation_of(&key(&other))).await;
    (patient, theirs)
}

/// Patient/shared and Group/shared, and an Observation of each; returns the Patient's.
async fn observations_of_a_patient_and_a_group_with_one_id(app: &TestApp) -> Value {
    let patient = app
        .update(&json!({"resourceType": "Patient", "id": "shared"}))
        .await;
    assert_eq!(patient.status(), 201);
    let group = app
        .update(
            &json!({"resourceType": "Group", "id": "shared", "type": "person",
                        "actual": true}),
        )
        .await;
    assert_eq!(group.status(), 201);
    app.created(&observation_of("Group/shared")).await;
    app.created(&observation_of("Patient/shared")).await
}

#[tokio::test]
async fn reference_by_type_and_id() {
    let app = spawn_app().await;
    let (patient, theirs) = observations_of_two_patients(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Observation?subject={}", key(&patient))).await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn reference_by_id_alone() {
    let app = spawn_app().await;
    let (patient, theirs) = observations_of_two_patients(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Observation?subject={}", id_of(&patient))).await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn reference_by_absolute_url_on_this_server() {
    let app = spawn_app().await;
    let (patient, theirs) = observations_of_two_patients(&app).await;
    let query = format!("Observation?subject={}/{}", app.base, key(&patient));
    assert_eq!(search_ids(&app, &query).await, keys(&[&theirs]));
}

#[tokio::test]
async fn patient_parameter_matches_the_subject_patient() {
    let app = spawn_app().await;
    let theirs = observations_of_a_patient_and_a_group_with_one_id(&app).await;
    assert_eq!(
        search_ids(&app, "Observation?patient=shared").await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn type_modifier_restricts_the_target_type() {
    let app = spawn_app().await;
    let theirs = observations_of_a_patient_and_a_group_with_one_id(&app).await;
    assert_eq!(
        search_ids(&app, "Observation?subject:Patient=shared").await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn a_reference_to_another_type_with_the_same_id_does_not_match() {
    let app = spawn_app().await;
    let theirs = observations_of_a_patient_and_a_group_with_one_id(&app).await;
    assert_eq!(
        search_ids(&app, "Observation?subject=Patient/shared").await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn identifier_modifier_matches_a_reference_by_identifier() {
    let app = spawn_app().await;
    let by_identifier = |value: &str| {
        observation(json!({"subject": {"identifier": {"system": MRN, "value": value}}}))
    };
    let theirs = app.created(&by_identifier("123")).await;
    app.created(&by_identifier("456")).await;
    assert_eq!(
        search_ids(&app, &format!("Observation?subject:identifier={MRN}|123")).await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn general_practitioner_matches_the_patients_practitioner() {
    let app = spawn_app().await;
    let doctor = app.created(&json!({"resourceType": "Practitioner"})).await;
    let other = app.created(&json!({"resourceType": "Practitioner"})).await;
    let theirs = app
        .created(&patient(
            json!({"generalPractitioner": [{"reference": key(&doctor)}]}),
        ))
        .await;
    app.created(&patient(
        json!({"generalPractitioner": [{"reference": key(&other)}]}),
    ))
    .await;
    assert_eq!(
        search_ids(
            &app,
            &format!("Patient?general-practitioner={}", key(&doctor))
        )
        .await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn organization_matches_the_managing_organization() {
    let app = spawn_app().await;
    let clinic = app
        .created(&json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    let other = app
        .created(&json!({"resourceType": "Organization", "name": "Other"}))
        .await;
    let theirs = app
        .created(&patient(
            json!({"managingOrganization": {"reference": key(&clinic)}}),
        ))
        .await;
    app.created(&patient(
        json!({"managingOrganization": {"reference": key(&other)}}),
    ))
    .await;
    assert_eq!(
        search_ids(&app, &format!("Patient?organization={}", id_of(&clinic))).await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn encounter_practitioner_matches_a_participant() {
    let app = spawn_app().await;
    let doctor = app.created(&json!({"resourceType": "Practitioner"})).await;
    let other = app.created(&json!({"resourceType": "Practitioner"})).await;
    let with = |practitioner: &Value| {
        encounter(json!({"participant": [{"individual": {"reference": key(practitioner)}}]}))
    };
    let theirs = app.created(&with(&doctor)).await;
    app.created(&with(&other)).await;
    assert_eq!(
        search_ids(&app, &format!("Encounter?practitioner={}", id_of(&doctor))).await,
        keys(&[&theirs])
    );
}

#[tokio::test]
async fn appointment_practitioner_and_patient_match_participants() {
    let app = spawn_app().await;
    let doctor = app.created(&json!({"resourceType": "Practitioner"})).await;
    let anna = app.created(&named("Smith", "Anna")).await;
    let bob = app.created(&named("Jones", "Bob")).await;
    let (start, end) = ("2024-02-01T10:00:00Z", "2024-02-01T10:30:00Z");
    let annas = app
        .created(&appointment(start, end, &[&key(&doctor), &key(&anna)]))
        .await;
    app.created(&appointment(start, end, &[&key(&doctor), &key(&bob)]))
        .await;
    let query = format!(
        "Appointment?practitioner={}&patient={}",
        id_of(&doctor),
        id_of(&anna)
    );
    assert_eq!(search_ids(&app, &query).await, keys(&[&annas]));
}

#[tokio::test]
async fn appointment_slot_matches_the_booked_slot() {
    let app = spawn_app().await;
    let doctor = app.created(&json!({"resourceType": "Practitioner"})).await;
    let schedule = app
        .created(&json!({"resourceType": "Schedule",
                         "actor": [{"reference": key(&doctor)}]}))
        .await;
    let (start, end) = ("2024-02-01T10:00:00Z", "2024-02-01T10:30:00Z");
    let slot = |status: &str| {
        json!({"resourceType": "Slot", "schedule": {"reference": key(&schedule)},
               "status": status, "start": start, "end": end})
    };
    let booked = app.created(&slot("busy")).await;
    let free = app.created(&slot("free")).await;
    let in_slot = |slot: &Value| {
        merged(
            appointment(start, end, &[&key(&doctor)]),
            json!({"slot": [{"reference": key(slot)}]}),
        )
    };
    let theirs = app.created(&in_slot(&booked)).await;
    app.created(&in_slot(&free)).await;
    assert_eq!(
        search_ids(&app, &format!("Appointment?slot={}", key(&booked))).await,
        keys(&[&theirs])
    );
}

// ---------------------------------------------------------------------------------------------
// quantity and number

#[tokio::test]
async fn quantity_with_system_and_code_matches_only_that_unit() {
    let app = spawn_app().await;
    let [milligrams, ..] = created_in_order(
        &app,
        [
            quantity("5.4", UCUM, "mg"),
            quantity("5.4", UCUM, "g"),
            quantity("5.4", "http://example.org/units", "mg"),
            quantity("5.5", UCUM, "mg"),
        ],
    )
    .await;
    assert_eq!(
        search_ids(&app, &format!("Observation?value-quantity=5.4|{UCUM}|mg")).await,
        keys(&[&milligrams])
    );
}

#[tokio::test]
async fn quantity_without_units_matches_any_unit() {
    let app = spawn_app().await;
    let [milligrams, grams, _] = created_in_order(
        &app,
        [
            quantity("5.4", UCUM, "mg"),
            quantity("5.4", UCUM, "g"),
            quantity("5.5", UCUM, "mg"),
        ],
    )
    .await;
    assert_eq!(
        search_ids(&app, "Observation?value-quantity=5.4").await,
        keys(&[&milligrams, &grams])
    );
}

#[tokio::test]
async fn quantity_with_a_code_and_no_system_matches_the_code_in_any_system() {
    let app = spawn_app().await;
    let [ucum, local, _] = created_in_order(
        &app,
        [
            quantity("5.4", UCUM, "mg"),
            quantity("5.4", "http://example.org/units", "mg"),
            quantity("5.4", UCUM, "g"),
        ],
    )
    .await;
    assert_eq!(
        search_ids(&app, "Observation?value-quantity=5.4||mg").await,
        keys(&[&ucum, &local])
    );
}

/// `5.4` stands for [5.35, 5.45): 5.40 and 5.43 are equal to it, 5.46 and 5.3 are not.
#[tokio::test]
async fn quantity_equality_uses_the_precision_of_the_search_value() {
    let app = spawn_app().await;
    let [trailing_zero, within, _, _] = created_in_order(
        &app,
        [
            quantity("5.40", UCUM, "mg"),
            quantity("5.43", UCUM, "mg"),
            quantity("5.46", UCUM, "mg"),
            quantity("5.3", UCUM, "mg"),
        ],
    )
    .await;
    assert_eq!(
        search_ids(&app, &format!("Observation?value-quantity=5.4|{UCUM}|mg")).await,
        keys(&[&trailing_zero, &within])
    );
}

/// Three milligram Observations: 4.9, 5.4 and 5.5.
async fn three_doses(app: &TestApp) -> [Value; 3] {
    created_in_order(
        app,
        [
            quantity("4.9", UCUM, "mg"),
            quantity("5.4", UCUM, "mg"),
            quantity("5.5", UCUM, "mg"),
        ],
    )
    .await
}

#[tokio::test]
async fn quantity_gt() {
    let app = spawn_app().await;
    let [_, five_four, five_five] = three_doses(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Observation?value-quantity=gt5|{UCUM}|mg")).await,
        keys(&[&five_four, &five_five])
    );
}

#[tokio::test]
async fn quantity_lt() {
    let app = spawn_app().await;
    let [four_nine, _, _] = three_doses(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Observation?value-quantity=lt5|{UCUM}|mg")).await,
        keys(&[&four_nine])
    );
}

#[tokio::test]
async fn quantity_ge_includes_the_value_itself() {
    let app = spawn_app().await;
    let [_, five_four, five_five] = three_doses(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Observation?value-quantity=ge5.4|{UCUM}|mg")).await,
        keys(&[&five_four, &five_five])
    );
}

#[tokio::test]
async fn quantity_le_includes_the_value_itself() {
    let app = spawn_app().await;
    let [four_nine, five_four, _] = three_doses(&app).await;
    assert_eq!(
        search_ids(&app, &format!("Observation?value-quantity=le5.4|{UCUM}|mg")).await,
        keys(&[&four_nine, &five_four])
    );
}

async fn risk_assessments(app: &TestApp, probabilities: [&str; 3]) -> [Value; 3] {
    let subject = key(&app.created(&patient(json!({}))).await);
    created_in_order(
        app,
        probabilities.map(|p| {
            let probability: Value = serde_json::from_str(p).expect("a decimal");
            json!({"resourceType": "RiskAssessment", "status": "final",
                   "subject": {"reference": subject},
                   "prediction": [{"probabilityDecimal": probability}]})
        }),
    )
    .await
}

#[tokio::test]
async fn number_gt() {
    let app = spawn_app().await;
    let [_, likely, _] = risk_assessments(&app, ["0.3", "0.8", "0.5"]).await;
    assert_eq!(
        search_ids(&app, "RiskAssessment?probability=gt0.5").await,
        keys(&[&likely])
    );
}

/// `0.8` stands for [0.75, 0.85): 0.83 is equal to it, 0.9 is not.
#[tokio::test]
async fn number_equality_uses_the_precision_of_the_search_value() {
    let app = spawn_app().await;
    let [exact, close, _] = risk_assessments(&app, ["0.8", "0.83", "0.9"]).await;
    assert_eq!(
        search_ids(&app, "RiskAssessment?probability=0.8").await,
        keys(&[&exact, &close])
    );
}

// ---------------------------------------------------------------------------------------------
// uri

#[tokio::test]
async fn uri_matches_the_whole_url_exactly() {
    let app = spawn_app().await;
    let value_set = |url: &str| json!({"resourceType": "ValueSet", "status": "active", "url": url});
    let colors = app
        .created(&value_set("http://example.org/fhir/ValueSet/colors"))
        .await;
    app.created(&value_set(
        "http://example.org/fhir/ValueSet/colors-extended",
    ))
    .await;
    app.created(&value_set("http://example.org/fhir/ValueSet/Colors"))
        .await;
    assert_eq!(
        search_ids(&app, "ValueSet?url=http://example.org/fhir/ValueSet/colors").await,
        keys(&[&colors])
    );
}

// ---------------------------------------------------------------------------------------------
// :missing

#[tokio::test]
async fn missing_true_on_a_token_matches_resources_without_it() {
    let app = spawn_app().await;
    app.created(&patient(json!({"gender": "female"}))).await;
    let unknown = app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?gender:missing=true").await,
        keys(&[&unknown])
    );
}

#[tokio::test]
async fn missing_false_on_a_token_matches_resources_with_it() {
    let app = spawn_app().await;
    let female = app.created(&patient(json!({"gender": "female"}))).await;
    app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?gender:missing=false").await,
        keys(&[&female])
    );
}

#[tokio::test]
async fn missing_true_on_a_string() {
    let app = spawn_app().await;
    app.created(&named("Smith", "Anna")).await;
    let given_only = app
        .created(&patient(json!({"name": [{"given": ["Bob"]}]})))
        .await;
    let nameless = app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?family:missing=true").await,
        keys(&[&given_only, &nameless])
    );
}

#[tokio::test]
async fn missing_true_on_a_date() {
    let app = spawn_app().await;
    app.created(&patient(json!({"birthDate": "1980-05-03"})))
        .await;
    let undated = app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?birthdate:missing=true").await,
        keys(&[&undated])
    );
}

#[tokio::test]
async fn missing_true_on_a_reference() {
    let app = spawn_app().await;
    let doctor = app.created(&json!({"resourceType": "Practitioner"})).await;
    app.created(&patient(
        json!({"generalPractitioner": [{"reference": key(&doctor)}]}),
    ))
    .await;
    let without = app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?general-practitioner:missing=true").await,
        keys(&[&without])
    );
}

// ---------------------------------------------------------------------------------------------
// Parameters for all resources

#[tokio::test]
async fn id_matches_one_resource() {
    let app = spawn_app().await;
    let [first, _, _] = created_in_order(
        &app,
        [patient(json!({})), patient(json!({})), patient(json!({}))],
    )
    .await;
    assert_eq!(
        search_ids(&app, &format!("Patient?_id={}", id_of(&first))).await,
        keys(&[&first])
    );
}

#[tokio::test]
async fn id_with_a_comma_matches_either() {
    let app = spawn_app().await;
    let [first, _, third] = created_in_order(
        &app,
        [patient(json!({})), patient(json!({})), patient(json!({}))],
    )
    .await;
    let query = format!("Patient?_id={},{}", id_of(&first), id_of(&third));
    assert_eq!(search_ids(&app, &query).await, keys(&[&first, &third]));
}

#[tokio::test]
async fn last_updated_gt_matches_later_writes_only() {
    let app = spawn_app().await;
    let earlier = app.created(&patient(json!({}))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let later = app.created(&patient(json!({}))).await;
    let since = earlier["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated")
        .replace('+', "%2B");
    assert_eq!(
        search_ids(&app, &format!("Patient?_lastUpdated=gt{since}")).await,
        keys(&[&later])
    );
}

#[tokio::test]
async fn tag_matches_meta_tag() {
    let app = spawn_app().await;
    let tagged = |code: &str| {
        patient(json!({"meta": {"tag": [{"system": "http://example.org/tags", "code": code}]}}))
    };
    let vip = app.created(&tagged("vip")).await;
    app.created(&tagged("other")).await;
    app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, "Patient?_tag=http://example.org/tags|vip").await,
        keys(&[&vip])
    );
}

#[tokio::test]
async fn profile_matches_meta_profile() {
    let app = spawn_app().await;
    let profile = "http://example.org/fhir/StructureDefinition/vip-patient";
    let claimed = app
        .created(&patient(json!({"meta": {"profile": [profile]}})))
        .await;
    app.created(&patient(json!({}))).await;
    assert_eq!(
        search_ids(&app, &format!("Patient?_profile={profile}")).await,
        keys(&[&claimed])
    );
}

#[tokio::test]
async fn security_matches_meta_security() {
    let app = spawn_app().await;
    let labelled = |code: &str| {
        patient(json!({"meta": {"security": [{"system": CONFIDENTIALITY, "code": code}]}}))
    };
    let restricted = app.created(&labelled("R")).await;
    app.created(&labelled("N")).await;
    assert_eq!(
        search_ids(&app, &format!("Patient?_security={CONFIDENTIALITY}|R")).await,
        keys(&[&restricted])
    );
}

// ---------------------------------------------------------------------------------------------
// _sort

async fn born_out_of_order(app: &TestApp) -> [Value; 3] {
    created_in_order(
        app,
        ["1990-01-01", "1970-01-01", "1980-01-01"].map(|d| patient(json!({"birthDate": d}))),
    )
    .await
}

#[tokio::test]
async fn sort_ascending() {
    let app = spawn_app().await;
    let [p1990, p1970, p1980] = born_out_of_order(&app).await;
    let bundle = search(&app, "Patient?_sort=birthdate").await;
    assert_eq!(matches_in_order(&bundle), [&p1970, &p1980, &p1990].map(key));
}

#[tokio::test]
async fn sort_descending() {
    let app = spawn_app().await;
    let [p1990, p1970, p1980] = born_out_of_order(&app).await;
    let bundle = search(&app, "Patient?_sort=-birthdate").await;
    assert_eq!(matches_in_order(&bundle), [&p1990, &p1980, &p1970].map(key));
}

#[tokio::test]
async fn sort_by_several_keys() {
    let app = spawn_app().await;
    let [smith_bob, adams_zoe, smith_alice] = created_in_order(
        &app,
        [
            named("Smith", "Bob"),
            named("Adams", "Zoe"),
            named("Smith", "Alice"),
        ],
    )
    .await;
    let bundle = search(&app, "Patient?_sort=family,given").await;
    assert_eq!(
        matches_in_order(&bundle),
        [&adams_zoe, &smith_alice, &smith_bob].map(key)
    );
}

#[tokio::test]
async fn sort_by_last_updated() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(app.created(&patient(json!({}))).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.update(&created[0]).await.status(), 200);
    let bundle = search(&app, "Patient?_sort=_lastUpdated").await;
    assert_eq!(
        matches_in_order(&bundle),
        [&created[1], &created[2], &created[0]].map(key)
    );
}

// ---------------------------------------------------------------------------------------------
// _summary and _elements

#[tokio::test]
async fn summary_count_gives_the_total_and_no_entries() {
    let app = spawn_app().await;
    for given in ["Anna", "Bob", "Carol"] {
        app.created(&named("Smith", given)).await;
    }
    app.created(&named("Jones", "Dave")).await;
    let bundle = search(&app, "Patient?family=smith&_summary=count").await;
    assert_eq!(bundle["total"], 3, "{bundle}");
    assert_eq!(entries(&bundle, "match").count(), 0, "{bundle}");
}

#[tokio::test]
async fn summary_true_gives_subsetted_summaries() {
    let app = spawn_app().await;
    app.created(&patient(
        json!({"name": [{"family": "Chalmers"}], "gender": "male",
                                 "photo": [{"contentType": "image/png"}]}),
    ))
    .await;
    let bundle = search(&app, "Patient?_summary=true").await;
    let found: Vec<&Value> = entries(&bundle, "match").map(|e| &e["resource"]).collect();
    assert_eq!(found.len(), 1, "{bundle}");
    assert_eq!(found[0]["gender"], "male");
    assert!(found[0].get("photo").is_none(), "{}", found[0]);
    assert!(is_subsetted(found[0]), "{}", found[0]);
}

#[tokio::test]
async fn elements_keeps_only_the_named_elements() {
    let app = spawn_app().await;
    let created = app
        .created(&merged(
            with_identifier(Some(MRN), "123"),
            json!({"name": [{"family": "Chalmers"}], "gender": "male"}),
        ))
        .await;
    let bundle = search(&app, "Patient?_elements=identifier").await;
    let found: Vec<&Value> = entries(&bundle, "match").map(|e| &e["resource"]).collect();
    assert_eq!(found.len(), 1, "{bundle}");
    assert_eq!(found[0]["identifier"], created["identifier"]);
    let mut members: Vec<&str> = found[0]
        .as_object()
        .expect("a resource")
        .keys()
        .map(String::as_str)
        .collect();
    members.sort_unstable();
    assert_eq!(members, ["id", "identifier", "meta", "resourceType"]);
    assert!(is_subsetted(found[0]), "{}", found[0]);
}

// ---------------------------------------------------------------------------------------------
// _include and _revinclude

/// A Patient with two Encounters, and another Patient with one; returns the first Patient and
/// their Encounters.
async fn two_visits_of_one_patient(app: &TestApp) -> (Value, Value, Value) {
    let anna = app.created(&named("Smith", "Anna")).await;
    let bob = app.created(&named("Jones", "Bob")).await;
    let of = |p: &Value| encounter(json!({"subject": {"reference": key(p)}}));
    let first = app.created(&of(&anna)).await;
    let second = app.created(&of(&anna)).await;
    app.created(&of(&bob)).await;
    (anna, first, second)
}

#[tokio::test]
async fn include_adds_each_referenced_resource_once() {
    let app = spawn_app().await;
    let (anna, first, second) = two_visits_of_one_patient(&app).await;
    let query = format!(
        "Encounter?patient={}&_include=Encounter:patient",
        id_of(&anna)
    );
    let bundle = search(&app, &query).await;
    assert_eq!(matches(&bundle), keys(&[&first, &second]));
    assert_eq!(included(&bundle), keys(&[&anna]));
}

#[tokio::test]
async fn included_resources_do_not_count_in_the_total() {
    let app = spawn_app().await;
    let (anna, _, _) = two_visits_of_one_patient(&app).await;
    let query = format!(
        "Encounter?patient={}&_include=Encounter:patient&_total=accurate",
        id_of(&anna)
    );
    let bundle = search(&app, &query).await;
    assert_eq!(bundle["total"], 2, "{bundle}");
}

#[tokio::test]
async fn revinclude_adds_the_resources_that_refer_to_the_matches() {
    let app = spawn_app().await;
    let anna = app.created(&named("Smith", "Anna")).await;
    let bob = app.created(&named("Jones", "Bob")).await;
    let first = app.created(&observation_of(&key(&anna))).await;
    let second = app.created(&observation_of(&key(&anna))).await;
    app.created(&observation_of(&key(&bob))).await;
    let query = format!(
        "Patient?_id={}&_revinclude=Observation:subject",
        id_of(&anna)
    );
    let bundle = search(&app, &query).await;
    assert_eq!(matches(&bundle), keys(&[&anna]));
    assert_eq!(included(&bundle), keys(&[&first, &second]));
}

#[tokio::test]
async fn include_star_follows_every_reference() {
    let app = spawn_app().await;
    let anna = app.created(&named("Smith", "Anna")).await;
    let clinic = app
        .created(&json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    let visit = app
        .created(&encounter(json!({"subject": {"reference": key(&anna)},
                                   "serviceProvider": {"reference": key(&clinic)}})))
        .await;
    let bundle = search(&app, &format!("Encounter?_id={}&_include=*", id_of(&visit))).await;
    assert_eq!(matches(&bundle), keys(&[&visit]));
    assert_eq!(included(&bundle), keys(&[&anna, &clinic]));
}

/// A MedicationRequest for a Patient whose general practitioner is a Practitioner.
async fn prescription_chain(app: &TestApp) -> (Value, Value, Value) {
    let doctor = app
        .created(&json!({"resourceType": "Practitioner", "name": [{"family": "House"}]}))
        .await;
    let anna = app
        .created(&merged(
            named("Smith", "Anna"),
            json!({"generalPractitioner": [{"reference": key(&doctor)}]}),
        ))
        .await;
    let prescription = app
        .created(
            &json!({"resourceType": "MedicationRequest", "status": "active",
                         "intent": "order", "medicationCodeableConcept": {"text": "Aspirin"},
                         "subject": {"reference": key(&anna)}}),
        )
        .await;
    (prescription, anna, doctor)
}

#[tokio::test]
async fn include_iterate_follows_references_of_included_resources() {
    let app = spawn_app().await;
    let (prescription, anna, doctor) = prescription_chain(&app).await;
    let bundle = search(
        &app,
        "MedicationRequest?_include=MedicationRequest:patient\
         &_include:iterate=Patient:general-practitioner",
    )
    .await;
    assert_eq!(matches(&bundle), keys(&[&prescription]));
    assert_eq!(included(&bundle), keys(&[&anna, &doctor]));
}

#[tokio::test]
async fn include_without_iterate_applies_only_to_the_matches() {
    let app = spawn_app().await;
    let (_, anna, _) = prescription_chain(&app).await;
    let bundle = search(
        &app,
        "MedicationRequest?_include=MedicationRequest:patient\
         &_include=Patient:general-practitioner",
    )
    .await;
    assert_eq!(included(&bundle), keys(&[&anna]));
}

// ---------------------------------------------------------------------------------------------
// Chains and _has

#[tokio::test]
async fn chain_one_level() {
    let app = spawn_app().await;
    let practitioner =
        |family: &str| json!({"resourceType": "Practitioner", "name": [{"family": family}]});
    let smith = key(&app.created(&practitioner("Smith")).await);
    let jones = key(&app.created(&practitioner("Jones")).await);
    let (start, end) = ("2024-02-01T10:00:00Z", "2024-02-01T10:30:00Z");
    let with_smith = app.created(&appointment(start, end, &[&smith])).await;
    app.created(&appointment(start, end, &[&jones])).await;
    assert_eq!(
        search_ids(&app, "Appointment?actor:Practitioner.name=smith").await,
        keys(&[&with_smith])
    );
}

#[tokio::test]
async fn chain_two_levels() {
    let app = spawn_app().await;
    let mut expected = Vec::new();
    for family in ["Smith", "Jones"] {
        let doctor = app
            .created(&json!({"resourceType": "Practitioner", "name": [{"family": family}]}))
            .await;
        let patient = app
            .created(&patient(
                json!({"generalPractitioner": [{"reference": key(&doctor)}]}),
            ))
            .await;
        expected.push(app.created(&observation_of(&key(&patient))).await);
    }
    assert_eq!(
        search_ids(
            &app,
            "Observation?subject:Patient.general-practitioner:Practitioner.family=smith"
        )
        .await,
        keys(&[&expected[0]])
    );
}

#[tokio::test]
async fn chain_on_a_token() {
    let app = spawn_app().await;
    let anna = app.created(&with_identifier(Some(MRN), "123")).await;
    let bob = app.created(&with_identifier(Some(MRN), "456")).await;
    let of = |p: &Value| encounter(json!({"subject": {"reference": key(p)}}));
    let annas = app.created(&of(&anna)).await;
    app.created(&of(&bob)).await;
    assert_eq!(
        search_ids(&app, &format!("Encounter?patient.identifier={MRN}|123")).await,
        keys(&[&annas])
    );
}

#[tokio::test]
async fn has_matches_resources_referred_to_by_matching_resources() {
    let app = spawn_app().await;
    let anna = app.created(&named("Smith", "Anna")).await;
    let bob = app.created(&named("Jones", "Bob")).await;
    app.created(&named("Brown", "Carol")).await;
    let coded = |p: &Value, code: &str| {
        observation(json!({"subject": {"reference": key(p)},
                           "code": {"coding": [{"system": LOINC, "code": code}]}}))
    };
    app.created(&coded(&anna, "1234-5")).await;
    app.created(&coded(&bob, "9999-9")).await;
    assert_eq!(
        search_ids(
            &app,
            &format!("Patient?_has:Observation:patient:code={LOINC}|1234-5")
        )
        .await,
        keys(&[&anna])
    );
}

/// A deleted resource no longer makes what it referred to match `_has`, whether its test is of
/// its index (a code, a code it has not) or of its row (when it was last updated).
#[tokio::test]
async fn has_follows_only_resources_not_deleted() {
    let app = spawn_app().await;
    let anna = app.created(&named("Smith", "Anna")).await;
    let reading = app
        .created(&observation(json!({"subject": {"reference": key(&anna)},
                   "code": {"coding": [{"system": LOINC, "code": "1234-5"}]}})))
        .await;
    let queries = [
        format!("Patient?_has:Observation:patient:code={LOINC}|1234-5"),
        format!("Patient?_has:Observation:patient:code:not={LOINC}|9999-9"),
        "Patient?_has:Observation:patient:_lastUpdated=gt2000-01-01".to_owned(),
    ];
    for query in &queries {
        assert_eq!(search_ids(&app, query).await, keys(&[&anna]), "{query}");
    }
    assert_eq!(
        app.delete("Observation", id_of(&reading)).await.status(),
        200
    );
    for query in &queries {
        assert_eq!(
            search_ids(&app, query).await,
            Vec::<String>::new(),
            "{query}"
        );
    }
}

/// A reference may be written before the resource it names exists. Chains and `_has` follow it
/// once that resource is created, whether later, or later in the same transaction, and again
/// after it is deleted and created anew.
#[tokio::test]
async fn chains_has_and_includes_follow_references_written_before_what_they_name() {
    let app = spawn_app().await;
    let coded = observation(json!({"subject": {"reference": "Patient/later"},
                                   "code": {"coding": [{"system": LOINC, "code": "1234-5"}]}}));
    let observation = app.created(&coded).await;
    let chain = "Observation?subject:Patient.general-practitioner:Practitioner.family=late";
    let has = format!("Patient?_has:Observation:patient:code={LOINC}|1234-5");
    assert_eq!(search_ids(&app, chain).await, Vec::<String>::new());
    // The patient, then its practitioner, in one transaction.
    let doctor = json!({"resourceType": "Practitioner", "id": "late-doctor",
                        "name": [{"family": "Late"}]});
    transaction(
        &app,
        vec![
            put_entry(patient(json!({"id": "later",
                "generalPractitioner": [{"reference": "Practitioner/late-doctor"}]}))),
            put_entry(doctor.clone()),
        ],
    )
    .await;
    assert_eq!(search_ids(&app, chain).await, keys(&[&observation]));
    assert_eq!(
        search_ids(&app, &has).await,
        vec!["Patient/later".to_owned()]
    );
    assert_eq!(
        search_ids(
            &app,
            "Practitioner?_has:Patient:general-practitioner:_id=later"
        )
        .await,
        vec!["Practitioner/late-doctor".to_owned()]
    );
    // `_include` and `_revinclude` follow the same references.
    let included_patient = search(
        &app,
        &format!(
            "Observation?_id={}&_include=Observation:subject",
            id_of(&observation)
        ),
    )
    .await;
    assert_eq!(
        included(&included_patient),
        vec!["Patient/later".to_owned()]
    );
    let referrers = search(&app, "Patient?_id=later&_revinclude=Observation:subject").await;
    assert_eq!(included(&referrers), keys(&[&observation]));
    assert_eq!(
        app.delete("Practitioner", "late-doctor").await.status(),
        200
    );
    assert_eq!(search_ids(&app, chain).await, Vec::<String>::new());
    assert_eq!(app.update(&doctor).await.status(), 201);
    assert_eq!(search_ids(&app, chain).await, keys(&[&observation]));
}

/// The server keeps a search's estimates for a while, to plan it again without counting; what
/// a search finds is never kept: matches created or deleted between two identical searches are
/// found or missed at once, and so counted.
#[tokio::test]
async fn an_identical_search_again_finds_what_changed_since() {
    let app = spawn_app().await;
    let query = "Observation?subject=Patient/kept&status=final";
    assert_eq!(search_ids(&app, query).await, Vec::<String>::new());
    let first = app.created(&observation_of("Patient/kept")).await;
    assert_eq!(search_ids(&app, query).await, keys(&[&first]));
    let second = app.created(&observation_of("Patient/kept")).await;
    assert_eq!(search_ids(&app, query).await, keys(&[&first, &second]));
    for gone in [&first, &second] {
        assert_eq!(app.delete("Observation", id_of(gone)).await.status(), 200);
    }
    assert_eq!(search_ids(&app, query).await, Vec::<String>::new());
    let counted = search(&app, &format!("{query}&_total=accurate")).await;
    assert_eq!(counted["total"], 0, "{counted}");
}

/// A search by one coded value with its system, or by a reference to one resource, reads its
/// pages straight from that value's index in `rid` order, without counting its matches first:
/// every page holds the matches in order, the pages link back, and the totals count them all.
#[tokio::test]
async fn a_search_by_one_code_or_reference_pages_through_every_match_in_order() {
    let app = spawn_app().await;
    let observations = 260;
    let mut entries = Vec::new();
    for i in 0..observations {
        let (code, subject) = if i % 2 == 0 {
            ("8310-5", "Patient/even")
        } else {
            ("8302-2", "Patient/odd")
        };
        entries.push(put_entry(observation(json!({"id": format!("obs-{i:03}"),
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": subject}}))));
    }
    // The same code in another code system, about someone else.
    entries.push(put_entry(observation(json!({"id": "other-system",
        "code": {"coding": [{"system": "http://example.org/codes", "code": "8310-5"}]},
        "subject": {"reference": "Patient/other"}}))));
    transaction(&app, entries).await;
    let expected: Vec<String> = (0..observations)
        .step_by(2)
        .map(|i| format!("Observation/obs-{i:03}"))
        .collect();
    for query in [
        "Observation?code=http://loinc.org|8310-5",
        "Observation?subject=Patient/even",
        "Observation?subject:Patient=even",
    ] {
        let (seen, pages) = every_page(&app, &format!("{query}&_count=25")).await;
        assert_eq!(seen, expected, "{query}");
        assert_eq!(pages.len(), 6, "{query}");
        assert_eq!(
            pages_before(&app, &pages[5]).await,
            expected[..125],
            "{query}"
        );
        let counted = search(&app, &format!("{query}&_total=accurate&_count=1")).await;
        assert_eq!(counted["total"], 130, "{query}");
        let summary = search(&app, &format!("{query}&_summary=count")).await;
        assert_eq!(summary["total"], 130, "{query}");
    }
}

/// A chain that matches more than a page can be found from (past the estimate's cap) is
/// found by walking the searched type in order and testing where each resource leads; on
/// PostgreSQL the walk reads the chain's references from their own index. Every page of it
/// holds the matches in order, skips the resources that lead elsewhere, and pages back.
#[tokio::test]
async fn a_common_chain_pages_through_every_match_in_order() {
    let app = spawn_app().await;
    let mut entries = Vec::new();
    for (doctor, family, patient_id) in [
        ("walker", "Walker", "walked"),
        ("other", "Other", "elsewhere"),
    ] {
        entries.push(put_entry(
            json!({"resourceType": "Practitioner", "id": doctor,
                                "name": [{"family": family}]}),
        ));
        entries.push(put_entry(patient(json!({"id": patient_id,
            "generalPractitioner": [{"reference": format!("Practitioner/{doctor}")}]}))));
    }
    // Alternately the patient whose practitioner matches and the other.
    let visits = 260;
    for i in 0..visits {
        let subject = if i % 2 == 0 { "walked" } else { "elsewhere" };
        entries.push(put_entry(encounter(json!({"id": format!("visit-{i:03}"),
            "subject": {"reference": format!("Patient/{subject}")}}))));
    }
    transaction(&app, entries).await;
    let expected: Vec<String> = (0..visits)
        .step_by(2)
        .map(|i| format!("Encounter/visit-{i:03}"))
        .collect();
    let chain = "Encounter?subject:Patient.general-practitioner:Practitioner.family=walker";
    let (seen, pages) = every_page(&app, &format!("{chain}&_count=25")).await;
    assert_eq!(seen, expected);
    assert_eq!(pages.len(), 6);
    // Back from the last page, through the `previous` links, to the first.
    assert_eq!(pages_before(&app, &pages[5]).await, expected[..125]);
    let counted = search(&app, &format!("{chain}&_total=accurate&_count=1")).await;
    assert_eq!(counted["total"], 130);
    // With a second filter on the resources walked.
    let (finished, _) = every_page(&app, &format!("{chain}&status=finished&_count=100")).await;
    assert_eq!(finished, expected);
    assert_eq!(
        search_ids(&app, &format!("{chain}&_id=visit-004,visit-005,visit-006")).await,
        vec![
            "Encounter/visit-004".to_owned(),
            "Encounter/visit-006".to_owned()
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Location near

#[tokio::test]
async fn near_matches_locations_within_the_distance() {
    let app = spawn_app().await;
    let at = |name: &str, latitude: f64| {
        json!({"resourceType": "Location", "name": name,
               "position": {"latitude": latitude, "longitude": -83.694}})
    };
    // 0.034 degrees of latitude is about 3.8 km, 0.45 about 50 km.
    let [here, close, _far] = created_in_order(
        &app,
        [at("Here", 42.256), at("Close", 42.29), at("Far", 42.706)],
    )
    .await;
    assert_eq!(
        search_ids(&app, "Location?near=42.256|-83.694|10|km").await,
        keys(&[&here, &close])
    );
}

// ---------------------------------------------------------------------------------------------
// Errors, and what search sees of writes

#[tokio::test]
async fn an_unknown_parameter_is_ignored() {
    let app = spawn_app().await;
    let smith = app.created(&named("Smith", "Anna")).await;
    app.created(&named("Jones", "Bob")).await;
    assert_eq!(
        search_ids(&app, "Patient?family=smith&not-a-search-param=1").await,
        keys(&[&smith])
    );
}

#[tokio::test]
async fn an_unknown_parameter_is_reported_in_an_outcome_entry() {
    let app = spawn_app().await;
    app.created(&named("Smith", "Anna")).await;
    let bundle = search(&app, "Patient?family=smith&not-a-search-param=1").await;
    let outcomes: Vec<&Value> = entries(&bundle, "outcome")
        .map(|e| &e["resource"])
        .collect();
    assert_eq!(outcomes.len(), 1, "{bundle}");
    assert_operation_outcome(outcomes[0]);
    assert!(
        outcomes[0]["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|issue| issue["severity"] == "warning"),
        "{}",
        outcomes[0]
    );
    let text = outcome_text(outcomes[0]);
    assert!(text.contains("not-a-search-param"), "{text}");
}

#[tokio::test]
async fn an_unknown_parameter_under_strict_handling_is_400() {
    let app = spawn_app().await;
    let response = app
        .request(Method::GET, "Patient?family=smith&not-a-search-param=1")
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let outcome: Value = response.json().await.expect("JSON");
    assert_operation_outcome(&outcome);
    let text = outcome_text(&outcome);
    assert!(text.contains("not-a-search-param"), "{text}");
}

#[tokio::test]
async fn a_malformed_date_is_400_naming_the_parameter() {
    let app = spawn_app().await;
    let (status, outcome) = search_error(&app, "Patient?birthdate=19800-13").await;
    assert_eq!(status, 400);
    let text = outcome_text(&outcome);
    assert!(text.contains("birthdate"), "{text}");
}

#[tokio::test]
async fn an_unknown_prefix_is_400() {
    let app = spawn_app().await;
    let (status, outcome) = search_error(&app, "Patient?birthdate=xx1980").await;
    assert_eq!(status, 400);
    let text = outcome_text(&outcome);
    assert!(text.contains("birthdate"), "{text}");
}

#[tokio::test]
async fn an_unknown_modifier_is_400() {
    let app = spawn_app().await;
    let (status, outcome) = search_error(&app, "Patient?family:nonsense=smith").await;
    assert_eq!(status, 400);
    let text = outcome_text(&outcome);
    assert!(text.contains("family"), "{text}");
}

#[tokio::test]
async fn a_deleted_resource_is_not_found() {
    let app = spawn_app().await;
    let smith = app.created(&named("Smith", "Anna")).await;
    let other = app.created(&named("Smith", "Bob")).await;
    assert!(
        app.delete("Patient", id_of(&smith))
            .await
            .status()
            .is_success()
    );
    assert_eq!(
        search_ids(&app, "Patient?family=smith").await,
        keys(&[&other])
    );
}

#[tokio::test]
async fn an_updated_resource_is_found_by_its_new_value_only() {
    let app = spawn_app().await;
    let created = app.created(&named("Smith", "Anna")).await;
    let mut renamed = created.clone();
    renamed["name"] = json!([{"family": "Jones", "given": ["Anna"]}]);
    assert_eq!(app.update(&renamed).await.status(), 200);
    assert_eq!(
        search_ids(&app, "Patient?family=jones").await,
        keys(&[&created])
    );
    assert_eq!(search_ids(&app, "Patient?family=smith").await, keys(&[]));
}

// ---------------------------------------------------------------------------------------------
// Conditional update and delete

/// `PUT Patient?identifier=MRN|{value}` of a Patient with that identifier and `family`.
async fn conditional_update(app: &TestApp, value: &str, family: &str) -> reqwest::Response {
    let body = merged(
        with_identifier(Some(MRN), value),
        json!({"name": [{"family": family}]}),
    );
    app.request(Method::PUT, &format!("Patient?identifier={MRN}|{value}"))
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn conditional_update_with_one_match_updates_it() {
    let app = spawn_app().await;
    let existing = app.created(&with_identifier(Some(MRN), "c1")).await;
    app.created(&with_identifier(Some(MRN), "c2")).await;
    let response = conditional_update(&app, "c1", "Updated").await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.expect("JSON");
    assert_eq!(updated["id"], existing["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    let read = app.read_json("Patient", id_of(&existing)).await;
    assert_eq!(read["name"][0]["family"], "Updated");
}

#[tokio::test]
async fn conditional_update_without_a_match_creates() {
    let app = spawn_app().await;
    app.created(&with_identifier(Some(MRN), "c2")).await;
    let response = conditional_update(&app, "c1", "New").await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("JSON");
    assert_eq!(
        search_ids(&app, &format!("Patient?identifier={MRN}|c1")).await,
        keys(&[&created])
    );
}

#[tokio::test]
async fn conditional_update_with_several_matches_is_412() {
    let app = spawn_app().await;
    app.created(&with_identifier(Some(MRN), "twin")).await;
    app.created(&with_identifier(Some(MRN), "twin")).await;
    let response = conditional_update(&app, "twin", "Which").await;
    assert_eq!(response.status(), 412);
    assert_eq!(app.history_total("Patient").await, 2);
}

#[tokio::test]
async fn conditional_delete_removes_the_match_and_nothing_else() {
    let app = spawn_app().await;
    app.created(&with_identifier(Some(MRN), "c1")).await;
    let other = app.created(&with_identifier(Some(MRN), "c2")).await;
    let response = app
        .request(Method::DELETE, &format!("Patient?identifier={MRN}|c1"))
        .send()
        .await
        .expect("sent");
    assert!(
        [200, 204].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    assert_eq!(
        search_ids(&app, &format!("Patient?identifier={MRN}|c1")).await,
        keys(&[])
    );
    assert_eq!(search_ids(&app, "Patient").await, keys(&[&other]));
}
