//! Batch and transaction Bundles posted to the base (http://hl7.org/fhir/R4/http.html#transaction).

use reqwest::Response;
use serde_json::{Value, json};
use telemed_tests::{
    TestApp, assert_operation_outcome, expressions, search_total, spawn_app, spawn_app_with,
};

async fn post_bundle(app: &TestApp, bundle: &Value) -> Response {
    post_bundle_with(app, bundle, None).await
}

async fn post_bundle_with(app: &TestApp, bundle: &Value, prefer: Option<&str>) -> Response {
    let mut request = app
        .client
        .post(&app.base)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string());
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    request.send().await.expect("sent")
}

/// Posts a Bundle and returns the response Bundle; panics unless the answer is 200.
async fn processed(app: &TestApp, bundle: &Value) -> Value {
    let response = post_bundle(app, bundle).await;
    let status = response.status();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    body
}

/// Posts a Bundle that must fail as a whole with `status`; returns its OperationOutcome.
async fn rejected(app: &TestApp, bundle: &Value, status: u16) -> Value {
    let response = post_bundle(app, bundle).await;
    assert_eq!(response.status(), status);
    let outcome: Value = response.json().await.expect("JSON");
    assert_operation_outcome(&outcome);
    outcome
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn batch(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

fn post(full_url: &str, resource: Value) -> Value {
    let rt = resource["resourceType"]
        .as_str()
        .expect("a resource")
        .to_owned();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rt}})
}

fn patient(mrn: &str) -> Value {
    json!({"resourceType": "Patient",
           "identifier": [{"system": "http://example.org/mrn", "value": mrn}],
           "name": [{"family": "Chalmers", "given": ["Peter"]}]})
}

fn observation(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": subject}})
}

/// The `Type/id` that a response entry's location names.
fn location_of(entry: &Value) -> String {
    let location = entry["response"]["location"].as_str().expect("a location");
    let path = location.split("/_history/").next().expect("a path");
    let mut parts = path.rsplit('/');
    let id = parts.next().expect("an id");
    let rt = parts.next().expect("a type");
    format!("{rt}/{id}")
}

async fn read_reference(app: &TestApp, reference: &str) -> Value {
    let (rt, id) = reference.split_once('/').expect("Type/id");
    app.read_json(rt, id).await
}

#[tokio::test]
async fn a_transaction_creates_every_entry_and_rewrites_urn_uuid_links_everywhere() {
    let app = spawn_app().await;
    let patient_urn = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a";
    let mut obs = observation(patient_urn);
    obs["text"] = json!({"status": "generated",
        "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"{patient_urn}\">patient</a></div>")});
    obs["extension"] = json!([{"url": "http://example.org/about",
                               "valueReference": {"reference": patient_urn}}]);
    obs["contained"] = json!([{"resourceType": "Provenance", "id": "p1",
        "recorded": "2024-05-01T10:00:00Z",
        "target": [{"reference": patient_urn}],
        "agent": [{"who": {"reference": patient_urn}}]}]);
    let bundle = transaction(vec![
        post("urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059", obs),
        post(patient_urn, patient("tx-1")),
    ]);
    let response = processed(&app, &bundle).await;
    assert_eq!(response["resourceType"], "Bundle");
    assert_eq!(response["type"], "transaction-response");
    let entries = response["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "one response entry per request entry");
    for entry in entries {
        assert_eq!(entry["response"]["status"], "201 Created");
        assert!(
            entry["response"]["etag"]
                .as_str()
                .is_some_and(|e| e == "W/\"1\"")
        );
        assert!(entry["response"]["lastModified"].is_string());
        assert!(
            entry["response"]["location"]
                .as_str()
                .unwrap()
                .contains("/_history/1")
        );
    }
    // Entries answer in request order: the Observation first, the Patient second.
    let obs_ref = location_of(&entries[0]);
    let patient_ref = location_of(&entries[1]);
    assert!(obs_ref.starts_with("Observation/"));
    assert!(patient_ref.starts_with("Patient/"));

    let stored = read_reference(&app, &obs_ref).await;
    assert_eq!(stored["subject"]["reference"], patient_ref);
    assert_eq!(
        stored["extension"][0]["valueReference"]["reference"],
        patient_ref
    );
    assert_eq!(
        stored["contained"][0]["target"][0]["reference"],
        patient_ref
    );
    assert_eq!(
        stored["contained"][0]["agent"][0]["who"]["reference"],
        patient_ref
    );
    let div = stored["text"]["div"].as_str().unwrap();
    assert!(div.contains(&format!("href=\"{patient_ref}\"")), "{div}");
    assert!(!div.contains("urn:uuid"), "{div}");
    // The rewritten reference is indexed: search finds the Observation by its patient.
    let id = patient_ref.split('/').nth(1).unwrap();
    assert_eq!(
        search_total(&app, &format!("Observation?subject=Patient/{id}")).await,
        1
    );
    // The response carries the stored resources by default.
    assert_eq!(entries[0]["resource"], stored);
}

#[tokio::test]
async fn a_failure_in_the_last_entry_rolls_the_whole_transaction_back() {
    let app = spawn_app().await;
    let existing = app.created(&patient("existing")).await;
    let id = existing["id"].as_str().unwrap();
    let mut stale = existing.clone();
    stale["active"] = json!(true);
    let bundle = transaction(vec![
        post(
            "urn:uuid:00000000-0000-4000-8000-000000000001",
            patient("a"),
        ),
        post(
            "urn:uuid:00000000-0000-4000-8000-000000000002",
            observation("urn:uuid:00000000-0000-4000-8000-000000000001"),
        ),
        json!({"resource": stale,
               "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"7\""}}),
    ]);
    let outcome = rejected(&app, &bundle, 412).await;
    let text = outcome.to_string();
    assert!(text.contains("Bundle.entry[2]"), "{text}");
    assert_eq!(app.history_total("Patient").await, 1, "nothing was stored");
    assert_eq!(
        app.history_total("Observation").await,
        0,
        "nothing was stored"
    );
    assert_eq!(app.read_json("Patient", id).await, existing);
}

#[tokio::test]
async fn an_invalid_resource_rejects_the_transaction_naming_the_entry_and_element() {
    let app = spawn_app().await;
    let mut bad = patient("bad");
    bad["birthDate"] = json!("not a date");
    let bundle = transaction(vec![
        post(
            "urn:uuid:00000000-0000-4000-8000-000000000001",
            patient("ok"),
        ),
        post("urn:uuid:00000000-0000-4000-8000-000000000002", bad),
    ]);
    let outcome = rejected(&app, &bundle, 400).await;
    let at = expressions(&outcome);
    assert!(at.contains("Bundle.entry[1].resource.birthDate"), "{at}");
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn a_reference_to_a_urn_outside_the_bundle_is_refused() {
    let app = spawn_app().await;
    let bundle = transaction(vec![post(
        "urn:uuid:00000000-0000-4000-8000-000000000002",
        observation("urn:uuid:00000000-0000-4000-8000-00000000dead"),
    )]);
    let outcome = rejected(&app, &bundle, 400).await;
    assert!(outcome.to_string().contains("00000000dead"), "{outcome}");
    assert_eq!(app.history_total("Observation").await, 0);
}

#[tokio::test]
async fn two_entries_on_one_resource_are_refused() {
    let app = spawn_app().await;
    let mut one = patient("x");
    one["id"] = json!("same");
    let entry = json!({"resource": one, "request": {"method": "PUT", "url": "Patient/same"}});
    let outcome = rejected(&app, &transaction(vec![entry.clone(), entry]), 400).await;
    assert!(outcome.to_string().contains("Patient/same"), "{outcome}");
    assert_eq!(app.history_total("Patient").await, 0);

    // An ifNoneExist that finds the resource another entry updates is the same resource twice.
    let existing = app.created(&patient("dup")).await;
    let id = existing["id"].as_str().unwrap();
    let conditional = json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
        "resource": patient("dup"),
        "request": {"method": "POST", "url": "Patient",
                    "ifNoneExist": "identifier=http://example.org/mrn|dup"}});
    let update = json!({"resource": existing.clone(),
                        "request": {"method": "PUT", "url": format!("Patient/{id}")}});
    rejected(&app, &transaction(vec![conditional, update]), 400).await;
    assert_eq!(app.history_total("Patient").await, 1);
}

#[tokio::test]
async fn if_none_exist_links_the_fullurl_to_the_existing_resource() {
    let app = spawn_app().await;
    let existing = app.created(&patient("known")).await;
    let id = existing["id"].as_str().unwrap();
    let urn = "urn:uuid:00000000-0000-4000-8000-000000000001";
    let bundle = transaction(vec![
        json!({"fullUrl": urn, "resource": patient("known"),
               "request": {"method": "POST", "url": "Patient",
                           "ifNoneExist": "identifier=http://example.org/mrn|known"}}),
        post(
            "urn:uuid:00000000-0000-4000-8000-000000000002",
            observation(urn),
        ),
    ]);
    let response = processed(&app, &bundle).await;
    assert_eq!(response["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(location_of(&response["entry"][0]), format!("Patient/{id}"));
    let obs = read_reference(&app, &location_of(&response["entry"][1])).await;
    assert_eq!(obs["subject"]["reference"], format!("Patient/{id}"));
    assert_eq!(
        app.history_total("Patient").await,
        1,
        "nothing new was created"
    );

    // Two matches: the transaction fails with 412.
    app.created(&patient("known")).await;
    rejected(&app, &bundle, 412).await;
}

#[tokio::test]
async fn conditional_references_resolve_to_exactly_one_match_or_fail_with_412() {
    let app = spawn_app().await;
    let practitioner = app
        .created(&json!({"resourceType": "Practitioner",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999999"}]}))
        .await;
    let pid = practitioner["id"].as_str().unwrap();
    let encounter = |reference: &str| {
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
               "participant": [{"individual": {"reference": reference}}]})
    };
    let by_npi = "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999";
    let bundle = transaction(vec![post(
        "urn:uuid:00000000-0000-4000-8000-000000000001",
        encounter(by_npi),
    )]);
    let response = processed(&app, &bundle).await;
    let stored = read_reference(&app, &location_of(&response["entry"][0])).await;
    assert_eq!(
        stored["participant"][0]["individual"]["reference"],
        format!("Practitioner/{pid}")
    );

    let nobody = "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|0000000000";
    let outcome = rejected(
        &app,
        &transaction(vec![post(
            "urn:uuid:00000000-0000-4000-8000-000000000001",
            encounter(nobody),
        )]),
        412,
    )
    .await;
    assert!(
        outcome.to_string().contains("matches no resource"),
        "{outcome}"
    );
    assert!(
        outcome
            .to_string()
            .contains("Bundle.entry[0] (POST Encounter)"),
        "{outcome}"
    );

    app.created(&json!({"resourceType": "Practitioner",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999999"}]}))
        .await;
    rejected(&app, &bundle, 412).await;
    assert_eq!(app.history_total("Encounter").await, 1);
}

#[tokio::test]
async fn entries_run_in_the_specified_order_delete_post_put_get() {
    let app = spawn_app().await;
    let old = app.created(&patient("order")).await;
    let old_id = old["id"].as_str().unwrap();
    // Listed backwards: the GET first, the DELETE last.
    let bundle = transaction(vec![
        json!({"request": {"method": "GET", "url": "Patient?identifier=http://example.org/mrn|order"}}),
        json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
               "resource": patient("order"),
               "request": {"method": "POST", "url": "Patient",
                           "ifNoneExist": "identifier=http://example.org/mrn|order"}}),
        json!({"request": {"method": "DELETE", "url": format!("Patient/{old_id}")}}),
    ]);
    let response = processed(&app, &bundle).await;
    let entries = response["entry"].as_array().unwrap();
    // The DELETE ran first, so the conditional create found nothing and created.
    assert_eq!(entries[2]["response"]["status"], "204 No Content");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    let new_ref = location_of(&entries[1]);
    assert_ne!(new_ref, format!("Patient/{old_id}"));
    // The GET ran last and sees the new resource only.
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    let found = &entries[0]["resource"];
    assert_eq!(found["type"], "searchset");
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        found["entry"][0]["resource"]["id"],
        new_ref.split('/').nth(1).unwrap()
    );
    assert_eq!(app.read("Patient", old_id).await.status(), 410);
}

#[tokio::test]
async fn conditional_update_patch_and_conditional_delete_in_a_transaction() {
    let app = spawn_app().await;
    let kept = app.created(&patient("keep")).await;
    let gone = app.created(&patient("remove")).await;
    let mut update = patient("keep");
    update["active"] = json!(true);
    let patch = json!([{"op": "add", "path": "/gender", "value": "female"}]);
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
    let practitioner = app.created(&json!({"resourceType": "Practitioner"})).await;
    let bundle = transaction(vec![
        json!({"resource": update,
               "request": {"method": "PUT", "url": "Patient?identifier=http://example.org/mrn|keep"}}),
        json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                            "data": data},
               "request": {"method": "PATCH",
                           "url": format!("Practitioner/{}", practitioner["id"].as_str().unwrap())}}),
        json!({"request": {"method": "DELETE",
                           "url": "Patient?identifier=http://example.org/mrn|remove"}}),
    ]);
    let response = processed(&app, &bundle).await;
    assert_eq!(response["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(response["entry"][0]["response"]["etag"], "W/\"2\"");
    assert_eq!(response["entry"][1]["response"]["status"], "200 OK");
    let kept_now = app.read_json("Patient", kept["id"].as_str().unwrap()).await;
    assert_eq!(kept_now["active"], true);
    let patched = app
        .read_json("Practitioner", practitioner["id"].as_str().unwrap())
        .await;
    assert_eq!(patched["gender"], "female");
    assert_eq!(
        app.read("Patient", gone["id"].as_str().unwrap())
            .await
            .status(),
        410
    );
}

#[tokio::test]
async fn prefer_return_shapes_the_response_entries() {
    let app = spawn_app().await;
    let bundle = transaction(vec![post(
        "urn:uuid:00000000-0000-4000-8000-000000000001",
        patient("prefer"),
    )]);
    let minimal: Value = post_bundle_with(&app, &bundle, Some("return=minimal"))
        .await
        .json()
        .await
        .unwrap();
    let entry = &minimal["entry"][0];
    assert!(entry.get("resource").is_none(), "{entry}");
    assert_eq!(entry["response"]["status"], "201 Created");
    assert!(entry["response"]["location"].is_string());

    let outcome: Value = post_bundle_with(&app, &bundle, Some("return=OperationOutcome"))
        .await
        .json()
        .await
        .unwrap();
    let entry = &outcome["entry"][0];
    assert!(entry.get("resource").is_none(), "{entry}");
    assert_eq!(
        entry["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
}

#[tokio::test]
async fn too_many_entries_is_413() {
    let app = spawn_app_with(|config| config.max_bundle_entries = 2).await;
    let entries = (0..3)
        .map(|i| {
            post(
                &format!("urn:uuid:00000000-0000-4000-8000-00000000000{i}"),
                patient("n"),
            )
        })
        .collect();
    let outcome = rejected(&app, &transaction(entries), 413).await;
    assert!(outcome.to_string().contains("at most 2"), "{outcome}");
    assert_eq!(app.history_total("Patient").await, 0);
}

#[tokio::test]
async fn only_batch_and_transaction_bundles_are_processed() {
    let app = spawn_app().await;
    let collection = json!({"resourceType": "Bundle", "type": "collection"});
    let outcome = rejected(&app, &collection, 400).await;
    assert_eq!(expressions(&outcome), "Bundle.type");
    rejected(&app, &patient("not a bundle"), 400).await;
    let no_request = json!({"resourceType": "Bundle", "type": "transaction",
                            "entry": [{"resource": patient("x")}]});
    let outcome = rejected(&app, &no_request, 400).await;
    assert_eq!(expressions(&outcome), "Bundle.entry[0].request");
    let wrong_type = transaction(vec![json!({"resource": patient("x"),
        "request": {"method": "POST", "url": "Observation"}})]);
    rejected(&app, &wrong_type, 400).await;
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let app = spawn_app().await;
    let existing = app.created(&patient("batch")).await;
    let id = existing["id"].as_str().unwrap();
    let mut bad = patient("bad");
    bad["gender"] = json!(42);
    let bundle = batch(vec![
        json!({"resource": patient("b1"), "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": bad, "request": {"method": "POST", "url": "Patient"}}),
        json!({"request": {"method": "GET", "url": format!("Patient/{id}")}}),
        json!({"request": {"method": "GET", "url": format!("Patient/{id}"),
                           "ifNoneMatch": "W/\"1\""}}),
        json!({"request": {"method": "GET", "url": "Patient/does-not-exist"}}),
        json!({"request": {"method": "GET", "url": format!("Patient/{id}"),
                           "ifModifiedSince": "Fri, 01 Jan 2100 00:00:00 GMT"}}),
        // A nested batch is not processed.
        json!({"resource": {"resourceType": "Bundle", "type": "batch"},
               "request": {"method": "POST", "url": "/"}}),
    ]);
    let response = processed(&app, &bundle).await;
    assert_eq!(response["type"], "batch-response");
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "400 Bad Request");
    assert_operation_outcome(&entries[1]["response"]["outcome"]);
    assert_eq!(entries[2]["response"]["status"], "200 OK");
    assert_eq!(entries[2]["resource"], existing);
    assert_eq!(entries[2]["response"]["etag"], "W/\"1\"");
    assert_eq!(entries[3]["response"]["status"], "304 Not Modified");
    assert_eq!(entries[4]["response"]["status"], "404 Not Found");
    assert_eq!(entries[5]["response"]["status"], "304 Not Modified");
    assert_eq!(entries[6]["response"]["status"], "400 Bad Request");
    assert_eq!(
        app.history_total("Patient").await,
        2,
        "the good POST stands"
    );
}

#[tokio::test]
async fn the_base_url_with_a_trailing_slash_takes_bundles_and_system_searches() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Slash"}]},
         "request": {"method": "POST", "url": "Patient"}}]});
    let response = app
        .client
        .post(format!("{}/", app.base))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["type"], "transaction-response", "{answer}");
    assert!(
        answer["entry"][0]["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("201")),
        "{answer}"
    );

    let response = app
        .client
        .get(format!("{}/?_type=Patient&name=Slash", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let found: Value = response.json().await.expect("JSON");
    assert_eq!(found["type"], "searchset", "{found}");
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");

    // A batch entry can search the whole system too: its URL is the base's query.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "?_type=Patient&name=Slash"}},
        {"request": {"method": "GET", "url": format!("{}/?_type=Patient&name=Slash", app.base)}}]});
    let answer = processed(&app, &batch).await;
    for entry in answer["entry"].as_array().expect("entries") {
        assert_eq!(entry["response"]["status"], "200 OK", "{answer}");
        assert_eq!(entry["resource"]["type"], "searchset", "{answer}");
        assert_eq!(
            entry["resource"]["entry"].as_array().map(Vec::len),
            Some(1),
            "{answer}"
        );
    }
}
