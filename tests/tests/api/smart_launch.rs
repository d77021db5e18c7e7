//! The authorization code flow of SMART App Launch 2.2 (app-launch.html) as a browser and an
//! app go through it: standalone and EHR launches, the patient and encounter pickers, consent,
//! and what the token response and the id_token carry.

use reqwest::header::{CACHE_CONTROL, PRAGMA};
use serde_json::{Value, json};
use telemed_tests::{AppLaunch, Landing, TestApp, id_of, jwt_claims, picker_choices, spawn_app};

/// Everything the app of these tests may ask for.
const APP_SCOPES: &str = "openid fhirUser profile launch launch/patient launch/encounter \
    offline_access online_access patient/*.cruds user/*.cruds";

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// A practitioner who takes care of Alice (an active CareTeam, an Encounter) but not of Bob;
/// users `dr` (the practitioner) and `alice` (the patient); the public app `app`.
struct Clinic {
    alice: String,
    bob: String,
    practitioner: String,
    encounter: String,
}

async fn clinic(app: &TestApp) -> Clinic {
    let practitioner = app
        .created(&json!({"resourceType": "Practitioner", "name": [{"family": "Who"}]}))
        .await;
    let dr = format!("Practitioner/{}", id_of(&practitioner));
    let alice = app
        .created(
            &json!({"resourceType": "Patient", "name": [{"family": "Alice", "given": ["A"]}],
            "birthDate": "1980-01-01"}),
        )
        .await;
    let bob = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Bob"}]}))
        .await;
    let a = format!("Patient/{}", id_of(&alice));
    app.created(&json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": a}, "participant": [{"member": {"reference": dr}}]}))
        .await;
    let encounter = app
        .created(
            &json!({"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": ACT_CODE, "code": "VR"}, "subject": {"reference": a},
            "period": {"start": "2024-05-01T10:00:00Z"},
            "participant": [{"individual": {"reference": dr}}]}),
        )
        .await;
    app.register_public_app("app", APP_SCOPES).await;
    app.register_user("dr", Some(&dr), None).await;
    app.register_user("alice", Some(&a), None).await;
    Clinic {
        alice: id_of(&alice).to_owned(),
        bob: id_of(&bob).to_owned(),
        practitioner: id_of(&practitioner).to_owned(),
        encounter: id_of(&encounter).to_owned(),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn a_patient_user_is_the_patient_in_context_without_a_picker() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let tokens = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs")
        .run(&app)
        .await;
    assert_eq!(tokens.body["patient"], clinic.alice.as_str());
}

#[tokio::test]
async fn consent_grants_every_scope_left_ticked() {
    let app = spawn_app().await;
    clinic(&app).await;
    let scope = "launch/patient openid fhirUser patient/Observation.rs patient/Condition.rs";
    let tokens = AppLaunch::new(&app, "app", "alice", scope).run(&app).await;
    let mut granted: Vec<&str> = tokens.body["scope"]
        .as_str()
        .expect("scope")
        .split(' ')
        .collect();
    granted.sort_unstable();
    let mut asked: Vec<&str> = scope.split(' ').collect();
    asked.sort_unstable();
    assert_eq!(granted, asked);
}

#[tokio::test]
async fn a_practitioner_is_asked_which_patient_and_offered_only_theirs() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let (status, html) = AppLaunch::new(&app, "app", "dr", "launch/patient patient/*.rs")
        .authorize(&app)
        .await
        .page();
    assert_eq!(status, 200);
    assert_eq!(picker_choices(&html, "patient"), vec![clinic.alice.clone()]);
    assert!(!html.contains(&clinic.bob), "Bob is not offered");
}

#[tokio::test]
async fn the_patient_a_practitioner_chooses_is_in_context() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "launch/patient patient/*.rs");
    launch.patient = Some(clinic.alice.clone());
    let tokens = launch.run(&app).await;
    assert_eq!(tokens.body["patient"], clinic.alice.as_str());
}

#[tokio::test]
async fn a_practitioner_cannot_choose_a_patient_outside_their_care() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "launch/patient patient/*.rs");
    launch.patient = Some(clinic.bob.clone());
    let (_, html) = launch.authorize(&app).await.page();
    assert!(html.contains("Choose one of the patients listed"), "{html}");
}

#[tokio::test]
async fn a_standalone_launch_asks_for_an_encounter_of_the_patient() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let mut launch = AppLaunch::new(
        &app,
        "app",
        "dr",
        "launch/patient launch/encounter patient/*.rs",
    );
    launch.patient = Some(clinic.alice.clone());
    launch.encounter = Some(clinic.encounter.clone());
    let tokens = launch.run(&app).await;
    assert_eq!(tokens.body["encounter"], clinic.encounter.as_str());
}

#[tokio::test]
async fn a_patient_user_is_offered_their_own_encounters() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let mut launch = AppLaunch::new(
        &app,
        "app",
        "alice",
        "launch/patient launch/encounter patient/*.rs",
    );
    launch.encounter = Some(clinic.encounter.clone());
    let tokens = launch.run(&app).await;
    assert_eq!(tokens.body["encounter"], clinic.encounter.as_str());
}

#[tokio::test]
async fn an_ehr_launch_carries_its_patient_encounter_and_fhir_context() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let context = json!([{"reference": format!("Encounter/{}", clinic.encounter)}]);
    let value = app
        .ehr_launch(
            &json!({"patient": clinic.alice, "encounter": clinic.encounter,
            "fhirContext": context, "need_patient_banner": false}),
        )
        .await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "launch patient/*.rs");
    launch.launch = Some(value);
    let tokens = launch.run(&app).await;
    assert_eq!(tokens.body["patient"], clinic.alice.as_str());
    assert_eq!(tokens.body["encounter"], clinic.encounter.as_str());
    assert_eq!(tokens.body["fhirContext"], context);
    assert_eq!(tokens.body["need_patient_banner"], false);
}

#[tokio::test]
async fn a_standalone_app_must_show_the_patient_banner() {
    let app = spawn_app().await;
    clinic(&app).await;
    let tokens = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs")
        .run(&app)
        .await;
    assert_eq!(tokens.body["need_patient_banner"], true);
}

#[tokio::test]
async fn the_token_response_is_a_short_lived_uncached_bearer_token() {
    let app = spawn_app().await;
    clinic(&app).await;
    let tokens = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs")
        .run(&app)
        .await;
    assert_eq!(tokens.body["token_type"], "Bearer");
    let expires_in = tokens.body["expires_in"].as_i64().expect("expires_in");
    assert!((1..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(tokens.body["scope"], "launch/patient patient/*.rs");
    assert_eq!(tokens.headers[CACHE_CONTROL], "no-store");
    assert_eq!(tokens.headers[PRAGMA], "no-cache");
    let claims = jwt_claims(&tokens.access_token());
    assert_eq!(claims["aud"], app.base.as_str());
    assert!(claims["exp"].as_i64().expect("exp") <= now() + 3600);
}

#[tokio::test]
async fn the_smart_style_url_is_absolute_and_answers_json() {
    let app = spawn_app().await;
    clinic(&app).await;
    let tokens = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs")
        .run(&app)
        .await;
    let url = tokens.body["smart_style_url"]
        .as_str()
        .expect("smart_style_url");
    assert!(url.starts_with(&app.auth), "{url}");
    let style: Value = app
        .anonymous()
        .get(url)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert!(style["color_background"].is_string(), "{style}");
}

#[tokio::test]
async fn the_id_token_names_the_user_as_a_fhir_url_that_resolves() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "openid fhirUser user/*.rs");
    launch.nonce = Some("n-0S6_WzA2Mj".to_owned());
    let tokens = launch.run(&app).await;
    let claims = jwt_claims(tokens.body["id_token"].as_str().expect("an id_token"));
    assert_eq!(claims["iss"], app.auth.as_str());
    assert_eq!(claims["sub"], "dr");
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert!(iat <= now() + 5 && exp > now(), "iat {iat}, exp {exp}");
    let fhir_user = claims["fhirUser"].as_str().expect("fhirUser");
    assert_eq!(
        fhir_user,
        format!("{}/Practitioner/{}", app.base, clinic.practitioner)
    );
    let response = app
        .client_with_token(&tokens.access_token())
        .get(fhir_user)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn no_id_token_without_openid() {
    let app = spawn_app().await;
    clinic(&app).await;
    let tokens = AppLaunch::new(&app, "app", "dr", "fhirUser user/*.rs")
        .run(&app)
        .await;
    assert!(tokens.body.get("id_token").is_none(), "{}", tokens.body);
}

#[tokio::test]
async fn unticked_scopes_are_not_granted() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let mut launch = AppLaunch::new(
        &app,
        "app",
        "alice",
        "launch/patient patient/Observation.rs patient/Condition.rs",
    );
    launch.keep = Some(vec![
        "launch/patient".to_owned(),
        "patient/Observation.rs".to_owned(),
    ]);
    let tokens = launch.run(&app).await;
    assert_eq!(
        tokens.body["scope"],
        "launch/patient patient/Observation.rs"
    );
    let client = app.client_with_token(&tokens.access_token());
    let search = |rt: &str| {
        client
            .get(format!("{}/{rt}?patient={}", app.base, clinic.alice))
            .send()
    };
    assert_eq!(search("Observation").await.expect("sent").status(), 200);
    assert_eq!(search("Condition").await.expect("sent").status(), 403);
}

#[tokio::test]
async fn denying_consent_sends_access_denied_to_the_app() {
    let app = spawn_app().await;
    clinic(&app).await;
    let mut launch = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs");
    launch.deny = true;
    let params = launch.authorize(&app).await.redirect();
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert_eq!(params.get("state"), Some(&launch.state));
    assert!(!params.contains_key("code"));
}

#[tokio::test]
async fn the_authorization_request_may_be_posted_as_a_form() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let mut launch = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs");
    launch.post = true;
    let tokens = launch.run(&app).await;
    assert_eq!(tokens.body["patient"], clinic.alice.as_str());
}

#[tokio::test]
async fn the_login_form_asks_again_after_a_wrong_password() {
    let app = spawn_app().await;
    clinic(&app).await;
    let mut launch = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs");
    launch.password = "wrong".to_owned();
    let landing = launch.authorize(&app).await;
    let Landing::Page { status, html } = landing else {
        panic!("a wrong password reached the app: {landing:?}");
    };
    assert_eq!(status, 200);
    assert!(html.contains("username or password is wrong"), "{html}");
}

#[tokio::test]
async fn a_patient_user_cannot_take_an_ehr_launch_for_another_patient() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let value = app.ehr_launch(&json!({"patient": clinic.bob})).await;
    let mut launch = AppLaunch::new(&app, "app", "alice", "launch patient/*.rs");
    launch.launch = Some(value);
    let params = launch.authorize(&app).await.redirect();
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert!(!params.contains_key("code"));
}

#[tokio::test]
async fn a_practitioner_cannot_take_an_ehr_launch_for_a_patient_outside_their_care() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let value = app.ehr_launch(&json!({"patient": clinic.bob})).await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "launch patient/*.rs");
    launch.launch = Some(value);
    let params = launch.authorize(&app).await.redirect();
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert!(!params.contains_key("code"));
}

#[tokio::test]
async fn a_token_cannot_mint_a_launch_for_a_patient_it_does_not_reach() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let token = AppLaunch::new(&app, "app", "alice", "launch/patient patient/*.rs")
        .run(&app)
        .await
        .access_token();
    let launch = |patient: &str| {
        app.client_with_token(&token)
            .post(format!("{}/launch", app.auth))
            .json(&json!({"patient": patient}))
            .send()
    };
    assert_eq!(launch(&clinic.alice).await.expect("sent").status(), 201);
    assert_eq!(launch(&clinic.bob).await.expect("sent").status(), 403);
}

#[tokio::test]
async fn a_launch_needs_a_token() {
    let app = spawn_app().await;
    let clinic = clinic(&app).await;
    let response = app
        .anonymous()
        .post(format!("{}/launch", app.auth))
        .json(&json!({"patient": clinic.alice}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
}
