//! The deny matrix: a token for patient A (`patient/*.cruds`) never reaches patient B's data,
//! whatever the interaction: read, vread, search (`_id` too), `_include` and `_revinclude`,
//! history, `$everything`, update, patch, delete, create, conditional writes, and the same
//! inside batches and transactions. B's data is unchanged afterwards. A practitioner reaches
//! the patients whose care they take part in, and another only by breaking the glass.
//!
//! Each patient has one resource of every type below, each in the patient's compartment
//! (R4 Patient CompartmentDefinition), so a type that leaks fails by name.

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use telemed_tests::{AppLaunch, TestApp, id_of, included, key, matches, spawn_app};

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// One resource of each type a virtual-care record holds, in the compartment of `p`
/// (`Patient/{id}`); `practitioner` is a Practitioner reference.
fn compartment_resources(p: &str, practitioner: &str) -> Vec<Value> {
    let subject = json!({"reference": p});
    let code = |text: &str| json!({"text": text});
    vec![
        json!({"resourceType": "Observation", "status": "final", "code": code("Weight"),
            "subject": subject}),
        json!({"resourceType": "Condition", "subject": subject, "code": code("Asthma")}),
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": ACT_CODE, "code": "VR"}, "subject": subject}),
        json!({"resourceType": "Appointment", "status": "booked",
            "participant": [{"actor": subject, "status": "accepted"}]}),
        json!({"resourceType": "AppointmentResponse", "appointment": {"reference": "Appointment/none"},
            "actor": subject, "participantStatus": "accepted"}),
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": code("Amoxicillin"), "subject": subject}),
        json!({"resourceType": "MedicationStatement", "status": "active",
            "medicationCodeableConcept": code("Ibuprofen"), "subject": subject}),
        json!({"resourceType": "MedicationAdministration", "status": "completed",
            "medicationCodeableConcept": code("Ibuprofen"), "subject": subject,
            "effectiveDateTime": "2024-05-01T10:00:00Z"}),
        json!({"resourceType": "MedicationDispense", "status": "completed",
            "medicationCodeableConcept": code("Ibuprofen"), "subject": subject}),
        json!({"resourceType": "Communication", "status": "completed", "subject": subject,
            "payload": [{"contentString": "Hello"}]}),
        json!({"resourceType": "CommunicationRequest", "status": "active", "subject": subject}),
        json!({"resourceType": "AllergyIntolerance", "patient": subject,
            "code": code("Penicillin")}),
        json!({"resourceType": "DocumentReference", "status": "current", "subject": subject,
            "content": [{"attachment": {"contentType": "text/plain", "data": "SGVsbG8="}}]}),
        json!({"resourceType": "Procedure", "status": "completed", "subject": subject,
            "code": code("Check-up")}),
        json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": subject}),
        json!({"resourceType": "CareTeam", "status": "active", "subject": subject,
            "participant": [{"member": {"reference": practitioner}}]}),
        json!({"resourceType": "DiagnosticReport", "status": "final", "code": code("Panel"),
            "subject": subject}),
        json!({"resourceType": "Immunization", "status": "completed",
            "vaccineCode": code("Flu"), "patient": subject,
            "occurrenceDateTime": "2024-01-01"}),
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": subject, "code": code("Lab")}),
        json!({"resourceType": "QuestionnaireResponse", "status": "completed",
            "subject": subject}),
        json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": code("Walk daily"), "subject": subject}),
        json!({"resourceType": "Flag", "status": "active", "code": code("Fall risk"),
            "subject": subject}),
        json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                "code": "patient-privacy"}]},
            "category": [code("Privacy")], "patient": subject}),
        json!({"resourceType": "Coverage", "status": "active", "beneficiary": subject,
            "payor": [subject]}),
        json!({"resourceType": "RelatedPerson", "patient": subject,
            "name": [{"family": "Kin"}]}),
        json!({"resourceType": "EpisodeOfCare", "status": "active", "patient": subject}),
        json!({"resourceType": "FamilyMemberHistory", "status": "completed", "patient": subject,
            "relationship": code("Mother")}),
        json!({"resourceType": "RiskAssessment", "status": "final", "subject": subject}),
        json!({"resourceType": "ClinicalImpression", "status": "completed", "subject": subject}),
        json!({"resourceType": "Media", "status": "completed", "subject": subject,
            "content": {"contentType": "text/plain", "data": "SGVsbG8="}}),
        json!({"resourceType": "Specimen", "subject": subject}),
        json!({"resourceType": "ImagingStudy", "status": "available", "subject": subject}),
        json!({"resourceType": "List", "status": "current", "mode": "working",
            "subject": subject}),
        json!({"resourceType": "NutritionOrder", "status": "active", "intent": "order",
            "patient": subject, "dateTime": "2024-01-01"}),
        json!({"resourceType": "DeviceRequest", "status": "active", "intent": "order",
            "codeCodeableConcept": code("Wheelchair"), "subject": subject}),
    ]
}

/// Two patients with a full record each; the data a token for A must never reach.
struct World {
    a: String,
    b: String,
    practitioner: String,
    /// `{type}/{id}` of A and A's resources.
    a_keys: Vec<String>,
    /// B and B's resources, as stored.
    b_resources: Vec<Value>,
    /// A's Observation pointing at B's (`hasMember`) and at B (`focus`): includes must not
    /// follow those.
    pointer: String,
    /// B's Observation whose `focus` is A (no compartment link to A): a revinclude of A must
    /// not bring it.
    b_about_a: String,
}

async fn world(app: &TestApp) -> World {
    let practitioner = app
        .created(&json!({"resourceType": "Practitioner", "name": [{"family": "Who"}]}))
        .await;
    let dr = key(&practitioner);
    let a = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Ann"}]}))
        .await;
    let b = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Ben"}]}))
        .await;
    let (pa, pb) = (key(&a), key(&b));
    let mut a_keys = vec![pa.clone()];
    for resource in compartment_resources(&pa, &dr) {
        a_keys.push(key(&app.created(&resource).await));
    }
    let mut b_resources = vec![b.clone()];
    for resource in compartment_resources(&pb, &dr) {
        b_resources.push(app.created(&resource).await);
    }
    // The CareTeam of B's record names the practitioner too; take it away so that the
    // practitioner cares for A only.
    let b_team = b_resources
        .iter_mut()
        .find(|r| r["resourceType"] == "CareTeam")
        .expect("a CareTeam");
    b_team["status"] = json!("inactive");
    let response = app.update(b_team).await;
    assert_eq!(response.status(), 200);
    *b_team = response.json().await.expect("JSON");
    let b_observation = b_resources
        .iter()
        .find(|r| r["resourceType"] == "Observation")
        .map(key)
        .expect("an Observation");
    let pointer = app
        .created(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "Pointer"}, "subject": {"reference": pa},
            "hasMember": [{"reference": b_observation}], "focus": [{"reference": pb}]}))
        .await;
    a_keys.push(key(&pointer));
    let b_about_a = app
        .created(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "About Ann"}, "subject": {"reference": pb},
            "focus": [{"reference": pa}]}))
        .await;
    b_resources.push(b_about_a.clone());
    World {
        a: id_of(&a).to_owned(),
        b: id_of(&b).to_owned(),
        practitioner: id_of(&practitioner).to_owned(),
        a_keys,
        b_resources,
        pointer: id_of(&pointer).to_owned(),
        b_about_a: key(&b_about_a),
    }
}

impl World {
    fn b_keys(&self) -> Vec<String> {
        self.b_resources.iter().map(key).collect()
    }

    /// The resource types of B's record, each once.
    fn types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .b_resources
            .iter()
            .map(|r| r["resourceType"].as_str().expect("a type").to_owned())
            .collect();
        types.sort();
        types.dedup();
        types
    }
}

/// A client with A's token: the patient user `ann` of the app, `patient/*.cruds`.
async fn patient_a(app: &TestApp, world: &World) -> Client {
    app.register_public_app("app", "launch/patient patient/*.cruds user/*.cruds")
        .await;
    app.register_user("ann", Some(&format!("Patient/{}", world.a)), None)
        .await;
    let token = AppLaunch::new(app, "app", "ann", "launch/patient patient/*.cruds")
        .run(app)
        .await
        .access_token();
    app.client_with_token(&token)
}

/// A client with the practitioner's `user/*.cruds` token.
async fn practitioner(app: &TestApp, world: &World) -> Client {
    app.register_public_app("app", "launch/patient patient/*.cruds user/*.cruds")
        .await;
    app.register_user(
        "dr",
        Some(&format!("Practitioner/{}", world.practitioner)),
        None,
    )
    .await;
    let token = AppLaunch::new(app, "app", "dr", "user/*.cruds")
        .run(app)
        .await
        .access_token();
    app.client_with_token(&token)
}

async fn status(client: &Client, method: Method, url: &str) -> u16 {
    client
        .request(method, url)
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

async fn get_json(client: &Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// Every `{type}/{id}` of `bundle` (matches and includes), as the server returned it.
fn all_keys(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["resource"].is_object())
        .map(|e| key(&e["resource"]))
        .collect()
}

/// Panics if any of `found` is one of B's.
fn assert_none_of_b(world: &World, found: &[String], what: &str) {
    let b = world.b_keys();
    let leaked: Vec<&String> = found.iter().filter(|k| b.contains(k)).collect();
    assert!(leaked.is_empty(), "{what} returned B's data: {leaked:?}");
}

#[tokio::test]
async fn a_reads_each_of_their_own_resources() {
    // The control of the matrix: the same token reaches every type of A's record.
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for key in &world.a_keys {
        let status = status(&client, Method::GET, &format!("{}/{key}", app.base)).await;
        assert_eq!(status, 200, "{key}");
    }
}

#[tokio::test]
async fn a_cannot_read_any_of_bs_resources() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for key in world.b_keys() {
        let status = status(&client, Method::GET, &format!("{}/{key}", app.base)).await;
        assert_eq!(status, 404, "{key}");
    }
}

#[tokio::test]
async fn a_cannot_vread_any_of_bs_resources() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for resource in &world.b_resources {
        let version = resource["meta"]["versionId"].as_str().expect("a version");
        let url = format!("{}/{}/_history/{version}", app.base, key(resource));
        assert_eq!(status(&client, Method::GET, &url).await, 404, "{url}");
    }
}

#[tokio::test]
async fn a_search_of_each_type_finds_none_of_bs() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for rt in world.types() {
        let (status, bundle) = get_json(&client, &format!("{}/{rt}?_count=100", app.base)).await;
        assert_eq!(status, 200, "{rt}: {bundle}");
        assert_none_of_b(&world, &all_keys(&bundle), &rt);
        let own = matches(&bundle);
        assert!(!own.is_empty(), "{rt}: A's own are found");
    }
}

#[tokio::test]
async fn a_search_by_the_id_of_bs_finds_nothing() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for resource in &world.b_resources {
        let url = format!(
            "{}/{}?_id={}",
            app.base,
            resource["resourceType"].as_str().expect("a type"),
            id_of(resource)
        );
        let (status, bundle) = get_json(&client, &url).await;
        assert_eq!(status, 200, "{url}");
        assert!(matches(&bundle).is_empty(), "{url}: {bundle}");
    }
}

#[tokio::test]
async fn a_search_by_bs_reference_finds_nothing() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for query in [
        format!("Observation?subject=Patient/{}", world.b),
        format!("Condition?patient={}", world.b),
        format!("Encounter?patient=Patient/{}", world.b),
        format!("Patient?_id={}", world.b),
        "Observation?subject:Patient.name=Ben".to_owned(),
    ] {
        let (status, bundle) = get_json(&client, &format!("{}/{query}", app.base)).await;
        assert_eq!(status, 200, "{query}: {bundle}");
        assert!(all_keys(&bundle).is_empty(), "{query}: {bundle}");
    }
}

#[tokio::test]
async fn a_posted_search_finds_none_of_bs() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let response = client
        .post(format!("{}/Observation/_search", app.base))
        .form(&[("subject", format!("Patient/{}", world.b))])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.expect("JSON");
    assert!(all_keys(&bundle).is_empty(), "{bundle}");
}

#[tokio::test]
async fn includes_never_bring_bs_data() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for include in [
        "_include=Observation:has-member",
        "_include=Observation:focus",
        "_include=*",
    ] {
        let url = format!("{}/Observation?_id={}&{include}", app.base, world.pointer);
        let (status, bundle) = get_json(&client, &url).await;
        assert_eq!(status, 200, "{url}: {bundle}");
        assert_eq!(
            matches(&bundle),
            vec![format!("Observation/{}", world.pointer)]
        );
        assert_none_of_b(&world, &included(&bundle), include);
    }
}

#[tokio::test]
async fn revincludes_never_bring_bs_data() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for revinclude in ["_revinclude=Observation:focus", "_revinclude=*"] {
        let url = format!("{}/Patient?_id={}&{revinclude}", app.base, world.a);
        let (status, bundle) = get_json(&client, &url).await;
        assert_eq!(status, 200, "{url}: {bundle}");
        let included = included(&bundle);
        assert!(
            !included.contains(&world.b_about_a),
            "{revinclude}: {included:?}"
        );
        assert_none_of_b(&world, &included, revinclude);
    }
}

#[tokio::test]
async fn the_history_of_bs_resources_is_not_found() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for key in world.b_keys() {
        let url = format!("{}/{key}/_history", app.base);
        assert_eq!(status(&client, Method::GET, &url).await, 404, "{url}");
    }
}

#[tokio::test]
async fn type_history_shows_none_of_bs() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for rt in world.types() {
        let url = format!("{}/{rt}/_history?_count=100", app.base);
        let (status, bundle) = get_json(&client, &url).await;
        assert_eq!(status, 200, "{url}: {bundle}");
        assert_none_of_b(&world, &all_keys(&bundle), &url);
    }
}

#[tokio::test]
async fn system_history_shows_none_of_bs() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let (status, bundle) = get_json(&client, &format!("{}/_history?_count=500", app.base)).await;
    assert_eq!(status, 200, "{bundle}");
    let found = all_keys(&bundle);
    assert_none_of_b(&world, &found, "_history");
    assert!(
        found.contains(&format!("Patient/{}", world.a)),
        "A's own show"
    );
}

#[tokio::test]
async fn a_system_search_shows_none_of_bs() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let (status, bundle) = get_json(
        &client,
        &format!("{}?_type=Observation,Condition&_count=100", app.base),
    )
    .await;
    if status == 200 {
        assert_none_of_b(&world, &all_keys(&bundle), "a system search");
    } else {
        assert_eq!(status, 403, "{bundle}");
    }
}

#[tokio::test]
async fn everything_of_b_is_not_found() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let url = format!("{}/Patient/{}/$everything", app.base, world.b);
    assert_eq!(status(&client, Method::GET, &url).await, 404);
}

#[tokio::test]
async fn everything_of_a_shows_none_of_bs() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let url = format!("{}/Patient/{}/$everything?_count=500", app.base, world.a);
    let (status, bundle) = get_json(&client, &url).await;
    assert_eq!(status, 200, "{bundle}");
    assert_none_of_b(&world, &all_keys(&bundle), "$everything of A");
}

/// Panics unless each of B's resources is as it was stored.
async fn assert_b_unchanged(app: &TestApp, world: &World) {
    for resource in &world.b_resources {
        let now = app
            .read_json(
                resource["resourceType"].as_str().expect("a type"),
                id_of(resource),
            )
            .await;
        assert_eq!(
            now["meta"]["versionId"],
            resource["meta"]["versionId"],
            "{}",
            key(resource)
        );
    }
}

#[tokio::test]
async fn a_cannot_update_bs_resources() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for resource in &world.b_resources {
        let mut changed = resource.clone();
        changed.as_object_mut().expect("an object").remove("meta");
        changed["language"] = json!("fr");
        let response = client
            .put(format!("{}/{}", app.base, key(resource)))
            .header("content-type", "application/fhir+json")
            .body(changed.to_string())
            .send()
            .await
            .expect("sent");
        let status = response.status();
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "{}: {status}",
            key(resource)
        );
    }
    assert_b_unchanged(&app, &world).await;
}

#[tokio::test]
async fn a_cannot_patch_bs_resources() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    for resource in &world.b_resources {
        let response = client
            .patch(format!("{}/{}", app.base, key(resource)))
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "add", "path": "/language", "value": "fr"}]).to_string())
            .send()
            .await
            .expect("sent");
        let status = response.status();
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "{}: {status}",
            key(resource)
        );
    }
    assert_b_unchanged(&app, &world).await;
}

#[tokio::test]
async fn a_delete_of_bs_resources_deletes_nothing_and_says_no_more_than_for_a_missing_one() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let missing = status(
        &client,
        Method::DELETE,
        &format!("{}/Observation/no-such-observation", app.base),
    )
    .await;
    for key in world.b_keys() {
        let status = status(&client, Method::DELETE, &format!("{}/{key}", app.base)).await;
        assert_eq!(status, missing, "{key}");
    }
    assert_b_unchanged(&app, &world).await;
}

#[tokio::test]
async fn a_cannot_create_a_resource_about_b() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let before = app.history_total("Observation").await;
    for resource in compartment_resources(&format!("Patient/{}", world.b), "Practitioner/x") {
        let rt = resource["resourceType"]
            .as_str()
            .expect("a type")
            .to_owned();
        let response = client
            .post(format!("{}/{rt}", app.base))
            .header("content-type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{rt}");
    }
    assert_eq!(app.history_total("Observation").await, before);
}

#[tokio::test]
async fn a_cannot_create_b_by_an_update_to_a_new_id() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let response = client
        .put(format!("{}/Observation/made-up-for-b", app.base))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Observation", "id": "made-up-for-b", "status": "final",
                "code": {"text": "Weight"}, "subject": {"reference": format!("Patient/{}", world.b)}})
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_cannot_move_their_own_resource_to_b() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let own = format!("{}/Observation/{}", app.base, world.pointer);
    let (_, mut observation) = get_json(&client, &own).await;
    observation["subject"] = json!({"reference": format!("Patient/{}", world.b)});
    let response = client
        .put(&own)
        .header("content-type", "application/fhir+json")
        .body(observation.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn conditional_writes_never_touch_bs_resources() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let b_observation = world
        .b_resources
        .iter()
        .find(|r| r["resourceType"] == "Observation")
        .expect("B's Observation");
    // A conditional delete matching B's Observation: out of reach, it matches nothing.
    let url = format!("{}/Observation?_id={}", app.base, id_of(b_observation));
    let deleted = status(&client, Method::DELETE, &url).await;
    assert!(deleted < 300, "{deleted}");
    // A conditional update matching it: nothing matches, so it would create; about A, fine.
    let response = client
        .put(&url)
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "X"},
                "subject": {"reference": format!("Patient/{}", world.a)}})
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_b_unchanged(&app, &world).await;
}

/// `POST {base}` with a Bundle of `kind` and `entries`.
async fn bundle(client: &Client, app: &TestApp, kind: &str, entries: Vec<Value>) -> (u16, Value) {
    let response = client
        .post(&app.base)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Bundle", "type": kind, "entry": entries}).to_string())
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn batch_entries_never_reach_bs_data() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let mut entries = Vec::new();
    for key in world.b_keys() {
        entries.push(json!({"request": {"method": "GET", "url": key}}));
    }
    entries.push(json!({"request": {"method": "GET",
        "url": format!("Observation?subject=Patient/{}", world.b)}}));
    entries.push(
        json!({"request": {"method": "GET", "url": format!("Patient/{}/_history", world.b)}}),
    );
    entries.push(json!({"request": {"method": "GET",
        "url": format!("Patient/{}/$everything", world.b)}}));
    let (status, answer) = bundle(&client, &app, "batch", entries).await;
    assert_eq!(status, 200, "{answer}");
    let found = all_keys(&answer);
    assert_none_of_b(&world, &found, "a batch");
    for entry in answer["entry"].as_array().expect("entries") {
        let status = entry["response"]["status"].as_str().expect("a status");
        let bundle_found = entry["resource"]["resourceType"] == "Bundle";
        if bundle_found {
            assert_none_of_b(&world, &all_keys(&entry["resource"]), "a batch search");
        } else {
            assert!(status.starts_with("404"), "{entry}");
        }
    }
}

/// A JSON Patch that sets `language`, base64 for a Binary.
fn json_patch_data() -> String {
    use base64::Engine as _;
    let patch = json!([{"op": "add", "path": "/language", "value": "fr"}]);
    base64::engine::general_purpose::STANDARD.encode(patch.to_string())
}

#[tokio::test]
async fn batch_writes_to_bs_data_fail_entry_by_entry() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let b_condition = world
        .b_resources
        .iter()
        .find(|r| r["resourceType"] == "Condition")
        .expect("B's Condition");
    let mut changed = b_condition.clone();
    changed.as_object_mut().expect("an object").remove("meta");
    changed["language"] = json!("fr");
    let entries = vec![
        json!({"resource": changed, "request": {"method": "PUT", "url": key(b_condition)}}),
        json!({"request": {"method": "DELETE", "url": key(b_condition)}}),
        json!({"resource": {"resourceType": "Condition", "code": {"text": "New"},
                "subject": {"reference": format!("Patient/{}", world.b)}},
            "request": {"method": "POST", "url": "Condition"}}),
        json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                "data": json_patch_data()},
            "request": {"method": "PATCH", "url": key(b_condition)}}),
    ];
    let (status, answer) = bundle(&client, &app, "batch", entries).await;
    assert_eq!(status, 200, "{answer}");
    let statuses: Vec<&str> = answer["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().expect("a status"))
        .collect();
    assert!(
        statuses[0].starts_with("403") || statuses[0].starts_with("404"),
        "{statuses:?}"
    );
    assert!(statuses[2].starts_with("403"), "{statuses:?}");
    assert!(
        statuses[3].starts_with("403") || statuses[3].starts_with("404"),
        "{statuses:?}"
    );
    assert_b_unchanged(&app, &world).await;
}

#[tokio::test]
async fn a_transaction_touching_bs_data_fails_whole() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = patient_a(&app, &world).await;
    let b_condition = world
        .b_resources
        .iter()
        .find(|r| r["resourceType"] == "Condition")
        .expect("B's Condition");
    let mut changed = b_condition.clone();
    changed.as_object_mut().expect("an object").remove("meta");
    changed["language"] = json!("fr");
    let own = json!({"resource": {"resourceType": "Condition", "code": {"text": "Mine"},
            "subject": {"reference": format!("Patient/{}", world.a)}},
        "request": {"method": "POST", "url": "Condition"}});
    let before = app.history_total("Condition").await;
    for entry in [
        json!({"resource": changed, "request": {"method": "PUT", "url": key(b_condition)}}),
        json!({"resource": {"resourceType": "Condition", "code": {"text": "New"},
                "subject": {"reference": format!("Patient/{}", world.b)}},
            "request": {"method": "POST", "url": "Condition"}}),
    ] {
        let (status, answer) = bundle(&client, &app, "transaction", vec![own.clone(), entry]).await;
        assert!(status == 403 || status == 404, "{status}: {answer}");
    }
    assert_eq!(app.history_total("Condition").await, before);
    assert_b_unchanged(&app, &world).await;
}

#[tokio::test]
async fn a_practitioner_reaches_the_patient_they_care_for() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = practitioner(&app, &world).await;
    for key in &world.a_keys {
        let status = status(&client, Method::GET, &format!("{}/{key}", app.base)).await;
        assert_eq!(status, 200, "{key}");
    }
}

#[tokio::test]
async fn a_practitioner_does_not_reach_another_patient() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = practitioner(&app, &world).await;
    for key in world.b_keys() {
        let status = status(&client, Method::GET, &format!("{}/{key}", app.base)).await;
        assert_eq!(status, 404, "{key}");
    }
    for rt in world.types() {
        let (_, bundle) = get_json(&client, &format!("{}/{rt}?_count=100", app.base)).await;
        assert_none_of_b(&world, &all_keys(&bundle), &rt);
    }
}

#[tokio::test]
async fn a_practitioner_breaking_the_glass_reaches_another_patient() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = practitioner(&app, &world).await;
    for key in world.b_keys() {
        let response = client
            .get(format!("{}/{key}", app.base))
            .header("X-Break-Glass-Reason", "unconscious in the emergency room")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{key}");
    }
}

#[tokio::test]
async fn a_practitioner_token_lists_only_their_patients() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = practitioner(&app, &world).await;
    let (_, bundle) = get_json(&client, &format!("{}/Patient", app.base)).await;
    assert_eq!(matches(&bundle), vec![format!("Patient/{}", world.a)]);
}

#[tokio::test]
async fn a_practitioner_cannot_write_about_another_patient() {
    let app = spawn_app().await;
    let world = world(&app).await;
    let client = practitioner(&app, &world).await;
    let response = client
        .post(format!("{}/Condition", app.base))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Condition", "code": {"text": "New"},
                "subject": {"reference": format!("Patient/{}", world.b)}})
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_patient_users_user_scopes_reach_only_their_own_record() {
    let app = spawn_app().await;
    let world = world(&app).await;
    app.register_public_app("app", "user/*.cruds").await;
    app.register_user("ann", Some(&format!("Patient/{}", world.a)), None)
        .await;
    let token = AppLaunch::new(&app, "app", "ann", "user/*.cruds")
        .run(&app)
        .await
        .access_token();
    let client = app.client_with_token(&token);
    for key in world.b_keys() {
        let status = status(&client, Method::GET, &format!("{}/{key}", app.base)).await;
        assert_eq!(status, 404, "{key}");
    }
    let (_, bundle) = get_json(&client, &format!("{}/Observation?_count=100", app.base)).await;
    assert_none_of_b(&world, &all_keys(&bundle), "Observation");
}
