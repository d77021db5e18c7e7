//! Racing writes never lose an update.

use reqwest::Method;
use serde_json::{Value, json};
use telemed_tests::{TestApp, get_url, id_of, link, search_ids, spawn_app};

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

/// Sends `WRITERS` copies of one request at once; their statuses and bodies.
async fn race(request: impl Fn() -> reqwest::RequestBuilder) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let request = request();
            tokio::spawn(async move {
                let response = request.send().await.expect("sent");
                let status = response.status().as_u16();
                (status, response.json().await.expect("JSON"))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

/// [`race`] for a request answered with a resource, 200 or 201: the statuses and the ids.
async fn race_resources(request: impl Fn() -> reqwest::RequestBuilder) -> Vec<(u16, String)> {
    race(request)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert!([200, 201].contains(&status), "{status}: {body}");
            (status, id_of(&body).to_owned())
        })
        .collect()
}

const RETRIED: &str = "identifier=http://example.org/mrn|retried";

fn retried_patient() -> String {
    json!({"resourceType": "Patient",
        "identifier": [{"system": "http://example.org/mrn", "value": "retried"}]})
    .to_string()
}

/// Of the answers to copies of one conditional request that found nothing, exactly one
/// created; the others found what it created: the id of each answer is the one Patient's.
async fn assert_one_patient_created(app: &TestApp, answers: &[(u16, String)], created: u16) {
    let ids = search_ids(app, &format!("Patient?{RETRIED}")).await;
    assert_eq!(ids.len(), 1, "{ids:?} {answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|(status, _)| *status == created)
            .count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(_, id)| format!("Patient/{id}") == ids[0]),
        "{answers:?}"
    );
}

/// Clients retry a conditional create when its answer is slow to come, so one `If-None-Exist`
/// often arrives several times at once: exactly one copy creates, and the others answer with
/// what it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_conditional_creates_with_one_condition_create_one_resource() {
    let app = spawn_app().await;
    let answers = race_resources(|| {
        app.request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", RETRIED)
            .body(retried_patient())
    })
    .await;
    assert_one_patient_created(&app, &answers, 201).await;
    assert_eq!(app.history_total("Patient").await, 1);
}

/// The same for a conditional update that matches nothing yet: one copy creates, the others
/// update what it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_conditional_updates_that_find_nothing_create_one_resource() {
    let app = spawn_app().await;
    let answers = race_resources(|| {
        app.request(Method::PUT, &format!("Patient?{RETRIED}"))
            .header("content-type", "application/fhir+json")
            .body(retried_patient())
    })
    .await;
    assert_one_patient_created(&app, &answers, 201).await;
}

/// And for transactions whose entry creates with `ifNoneExist`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_transactions_with_one_if_none_exist_create_one_resource() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:0b8f4c55-6c3d-4a2e-9f43-1f8e3c1a7d10",
        "resource": serde_json::from_str::<Value>(&retried_patient()).expect("JSON"),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": RETRIED}}]});
    let answers = race(|| {
        app.client
            .post(&app.base)
            .header("content-type", "application/fhir+json")
            .body(bundle.to_string())
    })
    .await;
    let answers: Vec<(u16, String)> = answers
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 200, "{body}");
            let response = &body["entry"][0]["response"];
            let status = response["status"].as_str().unwrap_or_default();
            let id = response["location"]
                .as_str()
                .and_then(|l| l.split('/').skip_while(|s| *s != "Patient").nth(1))
                .unwrap_or_default();
            (status[..3].parse().unwrap_or(0), id.to_owned())
        })
        .collect();
    assert_one_patient_created(&app, &answers, 201).await;
    assert_eq!(app.history_total("Patient").await, 1);
}

/// Several servers may share one PostgreSQL database: a condition one of them holds is held
/// against the others too, until it lets go. (A SQLite database has one server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_sharing_a_postgresql_database_hold_a_condition_against_each_other() {
    use telemed_server::store::{Store, condition_key};
    let app = spawn_app().await;
    if !app.config.database_url.starts_with("postgres") {
        return;
    }
    let one = Store::open(&app.config.database_url, 4)
        .await
        .expect("open");
    let other = Store::open(&app.config.database_url, 4)
        .await
        .expect("open");
    let key = condition_key(
        fhir_models::ResourceType::Patient,
        &[("identifier".to_owned(), "x|1".to_owned())],
    );
    let held = one.lock_conditions(vec![key]).await.expect("locked");
    let waiting = tokio::spawn(async move {
        let guard = other.lock_conditions(vec![key]).await.map(drop);
        (guard, other)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the other server took a condition that was held"
    );
    drop(held);
    let (guard, _other) = waiting.await.expect("task");
    guard.expect("locked once released");
}
