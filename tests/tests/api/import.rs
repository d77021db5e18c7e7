//! `telemed import`: a folder of Bundle files loaded beside a running server, through the same
//! processing as `POST /fhir`.

use std::path::PathBuf;

use serde_json::{Value, json};
use telemed_server::import::import;
use telemed_server::startup::offline_state;
use telemed_tests::{audit_events, search, search_total, spawn_app};

/// A folder of its own under the system's temporary directory, removed when dropped.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("telemed-import-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(path.join("nested")).expect("a folder");
        Self(path)
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.0.join(name), content).expect("written");
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

fn patient_record(mrn: &str, observations: usize) -> Value {
    let patient = "urn:uuid:7d1a0c1e-0000-4000-8000-000000000001";
    let encounter = "urn:uuid:7d1a0c1e-0000-4000-8000-000000000002";
    let mut entries = vec![
        json!({"fullUrl": patient,
               "resource": {"resourceType": "Patient",
                            "identifier": [{"system": "http://example.org/mrn", "value": mrn}]},
               "request": {"method": "POST", "url": "Patient"}}),
        json!({"fullUrl": encounter,
               "resource": {"resourceType": "Encounter", "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                             "code": "AMB"},
                   "subject": {"reference": patient},
                   "participant": [{"individual":
                       {"reference": format!("Practitioner?identifier={NPI}|1234567893")}}]},
               "request": {"method": "POST", "url": "Encounter"}}),
    ];
    for i in 0..observations {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:7d1a0c1e-0000-4000-8000-1000000000{i:02}"),
            "resource": {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                         "subject": {"reference": patient},
                         "encounter": {"reference": encounter},
                         "valueQuantity": {"value": 60 + i, "unit": "/min"}},
            "request": {"method": "POST", "url": "Observation"}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[tokio::test]
async fn a_folder_of_bundles_loads_beside_the_server_and_failures_are_named() {
    let app = spawn_app().await;
    let folder = Folder::new();
    folder.write("patient-a.json", &patient_record("A", 3).to_string());
    folder.write("nested/patient-b.json", &patient_record("B", 5).to_string());
    // The practitioners the records refer to come last in path order: the records that need
    // them are tried again once they are in.
    folder.write(
        "z-practitioners.json",
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Practitioner",
                          "identifier": [{"system": NPI, "value": "1234567893"}]},
             "request": {"method": "POST", "url": "Practitioner"}}]})
        .to_string(),
    );
    let mut invalid = patient_record("C", 1);
    invalid["entry"][2]["resource"]["status"] = json!("not-a-status");
    folder.write("patient-c.json", &invalid.to_string());
    folder.write("broken.json", "{ not json");
    folder.write("README.txt", "not a bundle, not read");

    let state = offline_state(app.config.clone())
        .await
        .expect("the database opens");
    let report = import(&state, &folder.0, 2, indicatif::ProgressBar::hidden())
        .await
        .expect("the import runs");
    state.store.close().await;

    assert_eq!(report.files, 5, "README.txt is not a Bundle file");
    assert_eq!(report.loaded, 3);
    assert_eq!(report.resources, 1 + (2 + 3) + (2 + 5));
    let failed: Vec<String> = report
        .failures
        .iter()
        .map(|(path, why)| format!("{} {why}", path.file_name().unwrap().to_string_lossy()))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[0].starts_with("broken.json 400"), "{failed:?}");
    assert!(failed[1].starts_with("patient-c.json 400"), "{failed:?}");
    assert!(failed[1].contains("Bundle.entry[2]"), "{failed:?}");

    // What was loaded is there, linked and searchable, through the running server.
    assert_eq!(
        search_total(&app, "Patient?identifier=http://example.org/mrn|").await,
        2
    );
    assert_eq!(
        search_total(&app, "Patient?identifier=C").await,
        0,
        "the invalid record left nothing"
    );
    assert_eq!(search_total(&app, "Observation?code=8867-4").await, 8);
    assert_eq!(
        search_total(
            &app,
            &format!("Encounter?participant.identifier={NPI}|1234567893")
        )
        .await,
        2
    );
    assert_eq!(
        search_total(
            &app,
            "Observation?subject.identifier=http://example.org/mrn|B"
        )
        .await,
        5
    );
}

#[tokio::test]
async fn an_import_is_audited_as_the_command_and_its_user() {
    let app = spawn_app().await;
    let folder = Folder::new();
    folder.write(
        "patient-a.json",
        &patient_record("Audited-A", 2).to_string(),
    );
    folder.write(
        "practitioners.json",
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Practitioner",
                          "identifier": [{"system": NPI, "value": "1234567893"}]},
             "request": {"method": "POST", "url": "Practitioner"}}]})
        .to_string(),
    );
    folder.write("broken.json", "{ not json");

    let state = offline_state(app.config.clone())
        .await
        .expect("the database opens");
    let report = import(&state, &folder.0, 1, indicatif::ProgressBar::hidden())
        .await
        .expect("the import runs");
    state.store.close().await;
    assert_eq!(report.loaded, 2, "{:?}", report.failures);

    let found = search(&app, "Patient?identifier=http://example.org/mrn|Audited-A").await;
    let patient = found["entry"][0]["resource"]["id"]
        .as_str()
        .expect("the imported patient")
        .to_owned();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|name| !name.is_empty());
    let is_the_import = |event: &Value| {
        let who = &event["agent"][0];
        who["who"]["display"] == "telemed import"
            && who["requestor"] == true
            && user
                .as_ref()
                .map_or(who.get("altId").is_none(), |user| who["altId"] == *user)
            && who.get("network").is_none()
    };

    // The transaction: one record, about the patient it wrote, with every version it stored.
    let events = audit_events(&app, &format!("patient={patient}&subtype=transaction")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert!(is_the_import(event), "{event}");
    assert_eq!(event["action"], "E");
    assert_eq!(event["outcome"], "0");
    let written: Vec<&str> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entity| entity["what"]["reference"].as_str())
        .collect();
    assert!(
        written.contains(&format!("Patient/{patient}").as_str()),
        "{written:?}"
    );
    assert_eq!(
        written
            .iter()
            .filter(|r| r.starts_with("Observation/"))
            .count(),
        2,
        "{written:?}"
    );

    // The batch's entry runs through the router: recorded as the command's create.
    let creates = audit_events(&app, "subtype=create").await;
    assert!(
        creates.iter().any(|event| is_the_import(event)
            && event["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|entity| entity["what"]["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("Practitioner/")))),
        "{creates:?}"
    );

    // The file that is no Bundle: a failed attempt, the client's fault.
    let failed = audit_events(&app, "subtype=transaction&outcome=4").await;
    assert!(failed.iter().any(is_the_import), "{failed:?}");

    // The trail stays one unbroken chain with the server's own records.
    let store = telemed_server::store::Store::open(&app.config.database_url, 2)
        .await
        .expect("the store");
    let verdict = telemed_server::audit::verify(&store)
        .await
        .expect("verified");
    store.close().await;
    assert!(
        matches!(verdict, telemed_server::audit::Verified::Intact { .. }),
        "{verdict:?}"
    );
}
