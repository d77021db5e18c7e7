//! The audit trail: every request for patient data and every authorization event leaves an
//! AuditEvent that can be searched, cannot be written, and is hash-chained.

use serde_json::{Value, json};
use telemed_server::audit::{Verified, verify};
use telemed_server::store::Store;
use telemed_tests::{TestApp, audit_events, id_of, post_bundle, search, spawn_app};

/// A patient and an observation about them.
async fn patient_with_observation(app: &TestApp) -> (String, String) {
    let patient = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Audit"}]}))
        .await;
    let patient = id_of(&patient).to_owned();
    let observation = app
        .created(&json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "heart rate"},
            "subject": {"reference": format!("Patient/{patient}")},
        }))
        .await;
    (patient, id_of(&observation).to_owned())
}

#[tokio::test]
async fn a_read_is_audited_with_who_what_and_which_patient() {
    let app = spawn_app().await;
    let (patient, observation) = patient_with_observation(&app).await;
    assert_eq!(app.read("Observation", &observation).await.status(), 200);

    let events = audit_events(&app, &format!("patient={patient}&subtype=read")).await;
    let event = events
        .iter()
        .find(|e| {
            e["entity"].as_array().into_iter().flatten().any(|entity| {
                entity["what"]["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&format!("Observation/{observation}/")))
            })
        })
        .unwrap_or_else(|| panic!("no read of the observation in {events:?}"));
    assert_eq!(event["action"], "R");
    assert_eq!(event["outcome"], "0");
    assert_eq!(
        event["agent"][0]["who"]["identifier"]["value"],
        telemed_tests::BACKEND_CLIENT
    );
    assert_eq!(event["agent"][0]["network"]["address"], "127.0.0.1");
}

#[tokio::test]
async fn a_write_is_audited_with_the_patient_it_is_about() {
    let app = spawn_app().await;
    let (patient, observation) = patient_with_observation(&app).await;
    let events = audit_events(&app, &format!("patient={patient}&subtype=create")).await;
    assert!(
        events.iter().any(|e| e["action"] == "C"
            && e["entity"]
                .to_string()
                .contains(&format!("Observation/{observation}"))),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_request_without_a_token_is_audited_as_a_failure() {
    let app = spawn_app().await;
    let response = app
        .anonymous()
        .get(format!("{}/Patient/someone", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    let events = audit_events(&app, "outcome=4&subtype=read").await;
    let event = events
        .iter()
        .find(|e| e["entity"].to_string().contains("Patient/someone"))
        .unwrap_or_else(|| panic!("the refused read is not audited: {events:?}"));
    assert_eq!(event["agent"][0]["who"]["display"], "anonymous");
}

#[tokio::test]
async fn a_token_issued_is_audited() {
    let app = spawn_app().await;
    let events = audit_events(&app, "type=110114&subtype=token").await;
    assert!(
        events.iter().any(|e| e["outcome"] == "0"
            && e["agent"]
                .to_string()
                .contains(telemed_tests::BACKEND_CLIENT)),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_refused_token_request_is_audited() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(app.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("client_id", "nobody"),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    let events = audit_events(&app, "type=110114&subtype=token&outcome=4").await;
    assert!(
        events
            .iter()
            .any(|e| e["outcomeDesc"] == "invalid_client"
                && e["agent"].to_string().contains("nobody")),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_audit_trail_cannot_be_written() {
    let app = spawn_app().await;
    let event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100"},
        "recorded": "2024-05-01T10:00:00Z",
        "agent": [{"requestor": true}],
        "source": {"observer": {"display": "forger"}},
    });
    assert_eq!(app.create(&event).await.status(), 405);
    let some = audit_events(&app, "_count=1").await;
    let id = id_of(&some[0]).to_owned();
    let mut changed = some[0].clone();
    changed["outcome"] = json!("8");
    assert_eq!(app.update(&changed).await.status(), 405);
    assert_eq!(app.delete("AuditEvent", &id).await.status(), 405);
    let patch = app
        .patch(
            "AuditEvent",
            &id,
            &json!([{"op": "replace", "path": "/outcome", "value": "8"}]),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(patch.status(), 405);
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}],
    });
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), 405);
    assert_eq!(app.read_json("AuditEvent", &id).await, some[0]);
}

#[tokio::test]
async fn an_audit_event_reads_as_it_searches() {
    let app = spawn_app().await;
    let found = audit_events(&app, "_count=1").await;
    let id = id_of(&found[0]);
    assert_eq!(app.read_json("AuditEvent", id).await, found[0]);
    assert_eq!(app.vread("AuditEvent", id, "1").await.status(), 200);
    assert_eq!(app.vread("AuditEvent", id, "2").await.status(), 404);
}

#[tokio::test]
async fn audit_events_page_newest_first() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.get("Patient?name=nobody").await;
    }
    let first = search(&app, "AuditEvent?subtype=search-type&_count=2").await;
    let entries = first["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 2);
    let recorded = |e: &Value| e["resource"]["recorded"].as_str().unwrap_or("").to_owned();
    assert!(recorded(&entries[0]) >= recorded(&entries[1]));
    let next = telemed_tests::link(&first, "next").expect("a next page");
    let (status, second) = telemed_tests::get_url(&app, next).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = second["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(!ids.is_empty());
    for entry in entries {
        assert!(!ids.contains(&entry["resource"]["id"].as_str().unwrap_or("")));
    }
}

/// Newest first means by `recorded`, not by chain position: on SQLite a read's record joins
/// the chain from the audit journal after writes that came later.
#[tokio::test]
async fn audit_events_sort_by_when_they_happened_not_by_when_they_were_chained() {
    let app = spawn_app().await;
    let patient = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Order"}]}))
        .await;
    let id = id_of(&patient).to_owned();
    // A search of the trail moves every record so far; the read's record then waits in the
    // journal while the update commits its own at once.
    audit_events(&app, "_count=1").await;
    let mut read = app.read_json("Patient", &id).await;
    read["active"] = json!(true);
    assert_eq!(app.update(&read).await.status(), 200);

    // The interactions on the Patient, leaving out the searches of the trail itself.
    let interactions = |events: Vec<&Value>| -> Vec<String> {
        events
            .into_iter()
            .filter_map(|e| e["subtype"][0]["code"].as_str())
            .filter(|code| ["create", "read", "update"].contains(code))
            .map(str::to_owned)
            .collect()
    };
    let newest_first = audit_events(&app, &format!("patient={id}")).await;
    assert_eq!(
        interactions(newest_first.iter().collect()),
        ["update", "read", "create"],
        "{newest_first:?}"
    );
    let oldest_first = audit_events(&app, &format!("patient={id}&_sort=date")).await;
    assert_eq!(
        interactions(oldest_first.iter().collect()),
        ["create", "read", "update"]
    );

    // Paged one at a time, the pages follow the same order.
    let mut paged = Vec::new();
    let mut page = search(&app, &format!("AuditEvent?patient={id}&_count=1")).await;
    loop {
        let entries = page["entry"].as_array().cloned().unwrap_or_default();
        paged.extend(interactions(
            entries.iter().map(|e| &e["resource"]).collect(),
        ));
        let Some(next) = telemed_tests::link(&page, "next") else {
            break;
        };
        let (status, next) = telemed_tests::get_url(&app, next).await;
        assert_eq!(status, 200);
        page = next;
    }
    assert_eq!(paged, ["update", "read", "create"]);
}

/// `date=ge…&date=lt…` bounds the trail's records on both sides.
#[tokio::test]
async fn a_date_range_finds_the_records_within_it() {
    let app = spawn_app().await;
    let (patient, _) = patient_with_observation(&app).await;
    let within = |range: &str| {
        let (app, patient) = (&app, &patient);
        let range = range.to_owned();
        async move {
            audit_events(app, &format!("patient={patient}&{range}"))
                .await
                .len()
        }
    };
    assert!(within("date=ge2000-01-01&date=lt2100-01-01").await >= 2);
    assert_eq!(within("date=ge2100-01-01&date=lt2200-01-01").await, 0);
    assert_eq!(within("date=lt2000-01-01&date=ge2100-01-01").await, 0);
    assert_eq!(within("date=ge2000-01-01&date=lt2000-01-02").await, 0);
}

#[tokio::test]
async fn an_unknown_audit_search_parameter_is_refused_not_ignored() {
    let app = spawn_app().await;
    let (status, _) = telemed_tests::search_error(&app, "AuditEvent?site=somewhere").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_chain_of_a_busy_trail_verifies() {
    let app = spawn_app().await;
    let (_, observation) = patient_with_observation(&app).await;
    for _ in 0..5 {
        app.read("Observation", &observation).await;
    }
    let store = Store::open(&app.config.database_url, 2)
        .await
        .expect("the store");
    let verdict = verify(&store).await.expect("verified");
    store.close().await;
    match verdict {
        // Two creates, five reads and the token: eight at least.
        // The reads may still wait in the server's audit journal.
        Verified::Intact { chained, waiting } => {
            assert!(
                chained + waiting >= 8,
                "only {chained} and {waiting} records"
            );
        }
        broken => panic!("the fresh trail is broken: {broken:?}"),
    }
}

#[tokio::test]
async fn a_write_leaves_one_record() {
    let app = spawn_app().await;
    let (patient, observation) = patient_with_observation(&app).await;
    let events = audit_events(&app, &format!("patient={patient}&subtype=create")).await;
    let of_the_observation: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["entity"]
                .to_string()
                .contains(&format!("Observation/{observation}"))
        })
        .collect();
    assert_eq!(of_the_observation.len(), 1, "{events:?}");
}

#[tokio::test]
async fn a_refused_write_is_audited_as_a_failure() {
    let app = spawn_app().await;
    let (patient, observation) = patient_with_observation(&app).await;
    let mut stale = app.read_json("Observation", &observation).await;
    stale["status"] = json!("amended");
    let response = app
        .request(reqwest::Method::PUT, &format!("Observation/{observation}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"9\"")
        .body(stale.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 412);
    let events = audit_events(&app, &format!("patient={patient}&subtype=update")).await;
    assert!(
        events.iter().any(|e| e["outcome"] == "4"),
        "the refused update is not audited: {events:?}"
    );
    assert!(!events.iter().any(|e| e["outcome"] == "0"), "{events:?}");
}
