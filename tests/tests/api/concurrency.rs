//! Racing writes never lose an update.

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::{get_url, link, spawn_app};

const WRITERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_conditional_updates_let_exactly_one_win() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let request = app
            .request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(
                json!({"resourceType": "Patient", "id": id, "multipleBirthInteger": i}).to_string(),
            );
        tasks.push(tokio::spawn(async move {
            request.send().await.expect("sent").status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 409, 412].contains(s)),
        "{statuses:?}"
    );
    let read: Value = app
        .get(&format!("Patient/{id}"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["meta"]["versionId"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_plain_updates_each_make_a_version() {
    let app = spawn_app().await;
    let created = app.created(&json!({"resourceType": "Patient"})).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let request = app
            .request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType": "Patient", "id": id, "multipleBirthInteger": i}).to_string(),
            );
        tasks.push(tokio::spawn(async move {
            request.send().await.expect("sent").status().as_u16()
        }));
    }
    let mut successes = 0;
    for task in tasks {
        match task.await.expect("task") {
            200 => successes += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let read: Value = app
        .get(&format!("Patient/{id}"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["meta"]["versionId"], (1 + successes).to_string());
    let history: Value = app
        .get(&format!("Patient/{id}/_history?_count=100"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(history["total"], 1 + successes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_of_one_new_id_make_one_resource() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let request = app
            .request(Method::PUT, "Patient/contested")
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient","id":"contested"}"#);
        tasks.push(tokio::spawn(async move {
            request.send().await.expect("sent").status().as_u16()
        }));
    }
    let mut created = 0;
    let mut updated = 0;
    for task in tasks {
        match task.await.expect("task") {
            201 => created += 1,
            200 => updated += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 1);
    let read: Value = app
        .get("Patient/contested")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["meta"]["versionId"], (1 + updated).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_each_get_their_own_id() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let request = app
            .request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient"}"#);
        tasks.push(tokio::spawn(async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), 201);
            let body: Value = response.json().await.expect("JSON");
            body["id"].as_str().expect("id").to_owned()
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("task"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), WRITERS);
    assert_eq!(app.history_total("Patient").await, WRITERS as i64);
}

/// Each patch appends an identifier; a lost update would lose one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patches_lose_nothing() {
    let app = spawn_app().await;
    let created = app
        .created(&json!({"resourceType": "Patient", "identifier": [{"value": "first"}]}))
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let request = app.patch(
            "Patient",
            &id,
            &json!([{"op": "add", "path": "/identifier/-", "value": {"value": i.to_string()}}]),
        );
        tasks.push(tokio::spawn(async move {
            request.send().await.expect("sent").status().as_u16()
        }));
    }
    let mut successes = 0;
    for task in tasks {
        match task.await.expect("task") {
            200 => successes += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let read = app.read_json("Patient", &id).await;
    assert_eq!(read["meta"]["versionId"], (1 + successes).to_string());
    assert_eq!(
        read["identifier"].as_array().map(Vec::len),
        Some(1 + successes),
        "{read}"
    );
}

/// A reference written while the resource it names is being created, each by its own request
/// at the same moment, is followed by a chain all the same, however the two interleave: no
/// reference is left not knowing where it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn references_raced_with_the_creation_of_their_targets_are_followed() {
    const PAIRS: usize = 60;
    let app = spawn_app().await;
    let put = |resource: Value| {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        app.request(Method::PUT, &path)
            .header("content-type", "application/fhir+json")
            .body(resource.to_string())
    };
    let mut tasks = Vec::new();
    for i in 0..PAIRS {
        let encounter = json!({"resourceType": "Encounter", "id": format!("raced-{i}"),
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
            "subject": {"reference": format!("Patient/raced-{i}")}});
        let patient = json!({"resourceType": "Patient", "id": format!("raced-{i}"),
                             "name": [{"family": "Raced"}]});
        // The two in either order, so that each side is sometimes first.
        let (first, second) = if i % 2 == 0 {
            (encounter, patient)
        } else {
            (patient, encounter)
        };
        for request in [put(first), put(second)] {
            tasks.push(tokio::spawn(async move {
                request.send().await.expect("sent").status().as_u16()
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 201);
    }
    let mut found = Vec::new();
    let mut url = format!(
        "{}/Encounter?subject:Patient.family=raced&_count=100&_elements=id",
        app.base
    );
    loop {
        let (status, bundle) = get_url(&app, &url).await;
        assert_eq!(status, 200, "{bundle}");
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            found.push(
                entry["resource"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        match link(&bundle, "next") {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    found.sort();
    let mut expected: Vec<String> = (0..PAIRS).map(|i| format!("raced-{i}")).collect();
    expected.sort();
    assert_eq!(found, expected);
}
