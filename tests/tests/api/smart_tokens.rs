//! After the code: refresh tokens (SMART App Launch 2.2 app-launch.html#refresh-access-token,
//! RFC 6749 §6), rotated and guarded against replay; introspection (RFC 7662 and SMART's
//! token-introspection.html); revocation (RFC 7009), which the FHIR API honours at once.

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use telemed_tests::{AppLaunch, TestApp, TokenResponse, id_of, spawn_app, token_request};

const APP_SCOPES: &str = "openid fhirUser launch launch/patient launch/encounter offline_access \
    online_access patient/*.cruds user/*.cruds";

/// What a flow needs: a practitioner `dr` caring for a patient with an encounter, the app.
struct Setup {
    patient: String,
    practitioner: String,
    encounter: String,
}

async fn setup(app: &TestApp) -> Setup {
    let practitioner = app
        .created(&json!({"resourceType": "Practitioner", "name": [{"family": "Who"}]}))
        .await;
    let dr = format!("Practitioner/{}", id_of(&practitioner));
    let patient = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Alice"}]}))
        .await;
    let p = format!("Patient/{}", id_of(&patient));
    app.created(&json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": p}, "participant": [{"member": {"reference": dr}}]}))
        .await;
    let encounter = app
        .created(
            &json!({"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
            "subject": {"reference": p}, "participant": [{"individual": {"reference": dr}}]}),
        )
        .await;
    app.register_public_app("app", APP_SCOPES).await;
    app.register_user("dr", Some(&dr), None).await;
    Setup {
        patient: id_of(&patient).to_owned(),
        practitioner: id_of(&practitioner).to_owned(),
        encounter: id_of(&encounter).to_owned(),
    }
}

/// The practitioner's tokens for `scope`, the patient chosen on the picker.
async fn tokens(app: &TestApp, setup: &Setup, scope: &str) -> TokenResponse {
    let mut launch = AppLaunch::new(app, "app", "dr", scope);
    launch.patient = Some(setup.patient.clone());
    launch.run(app).await
}

async fn refresh(app: &TestApp, refresh_token: &str, scope: Option<&str>) -> TokenResponse {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", "app"),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    token_request(app, &form, None).await
}

/// The status of a FHIR search with `token`.
async fn fhir_status(app: &TestApp, token: &str) -> u16 {
    app.client_with_token(token)
        .get(format!("{}/Observation", app.base))
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// `POST {auth}/introspect` of `token` by a resource server (the backend's bearer token).
async fn introspect(app: &TestApp, token: &str) -> Value {
    let response = app
        .client
        .post(format!("{}/introspect", app.auth))
        .form(&[("token", token)])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// `POST {auth}/revoke` of `token` by the public app.
async fn revoke(app: &TestApp, token: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/revoke", app.auth))
        .form(&[("token", token), ("client_id", "app")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
}

const SCOPE: &str = "launch/patient patient/*.rs offline_access";

#[tokio::test]
async fn offline_access_gives_a_refresh_token() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    tokens(&app, &setup, SCOPE).await.refresh_token();
}

#[tokio::test]
async fn online_access_gives_a_refresh_token() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    tokens(&app, &setup, "launch/patient patient/*.rs online_access")
        .await
        .refresh_token();
}

#[tokio::test]
async fn no_refresh_token_without_offline_or_online_access() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let tokens = tokens(&app, &setup, "launch/patient patient/*.rs").await;
    assert!(
        tokens.body.get("refresh_token").is_none(),
        "{}",
        tokens.body
    );
}

#[tokio::test]
async fn a_refresh_without_scope_keeps_the_scope_and_context() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let first = tokens(&app, &setup, SCOPE).await;
    let next = refresh(&app, &first.refresh_token(), None).await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.body["scope"], first.body["scope"]);
    assert_eq!(next.body["patient"], setup.patient.as_str());
    assert_eq!(fhir_status(&app, &next.access_token()).await, 200);
}

#[tokio::test]
async fn a_refresh_may_narrow_the_scope() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let first = tokens(&app, &setup, SCOPE).await;
    let next = refresh(&app, &first.refresh_token(), Some("patient/Observation.rs")).await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.body["scope"], "patient/Observation.rs");
}

#[tokio::test]
async fn a_refresh_may_not_widen_the_scope() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let first = tokens(&app, &setup, SCOPE).await;
    let next = refresh(&app, &first.refresh_token(), Some("patient/*.cruds")).await;
    assert_eq!(next.status, 400, "{}", next.body);
    assert_eq!(next.error(), "invalid_scope");
}

#[tokio::test]
async fn a_used_refresh_token_stops_working() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let first = tokens(&app, &setup, SCOPE).await;
    let used = first.refresh_token();
    let next = refresh(&app, &used, None).await;
    assert_ne!(next.refresh_token(), used, "rotated");
    let again = refresh(&app, &used, None).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.error(), "invalid_grant");
}

#[tokio::test]
async fn replaying_a_used_refresh_token_revokes_its_grant() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let first = tokens(&app, &setup, SCOPE).await;
    let next = refresh(&app, &first.refresh_token(), None).await;
    refresh(&app, &first.refresh_token(), None).await;
    let newest = refresh(&app, &next.refresh_token(), None).await;
    assert_eq!(newest.status, 400, "{}", newest.body);
    assert_eq!(fhir_status(&app, &next.access_token()).await, 401);
}

#[tokio::test]
async fn introspection_describes_an_active_token() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let launch_value = app
        .ehr_launch(&json!({"patient": setup.patient, "encounter": setup.encounter}))
        .await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "launch openid fhirUser patient/*.rs");
    launch.launch = Some(launch_value);
    let tokens = launch.run(&app).await;
    let token = tokens.access_token();
    let claims = telemed_tests::jwt_claims(&token);
    let answer = introspect(&app, &token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["scope"], tokens.body["scope"]);
    assert_eq!(answer["client_id"], "app");
    assert_eq!(answer["exp"], claims["exp"]);
    assert_eq!(answer["patient"], setup.patient.as_str());
    assert_eq!(answer["encounter"], setup.encounter.as_str());
    assert_eq!(
        answer["fhirUser"],
        format!("{}/Practitioner/{}", app.base, setup.practitioner)
    );
    assert_eq!(answer["iss"], app.auth.as_str());
    assert_eq!(answer["sub"], "dr");
}

#[tokio::test]
async fn introspection_describes_an_active_refresh_token() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let tokens = tokens(&app, &setup, SCOPE).await;
    let answer = introspect(&app, &tokens.refresh_token()).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["client_id"], "app");
    assert_eq!(answer["patient"], setup.patient.as_str());
}

#[tokio::test]
async fn introspection_needs_an_authenticated_caller() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let token = tokens(&app, &setup, SCOPE).await.access_token();
    let response = reqwest::Client::new()
        .post(format!("{}/introspect", app.auth))
        .form(&[("token", token.as_str()), ("client_id", "app")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_revoked_access_token_is_inactive() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let token = tokens(&app, &setup, SCOPE).await.access_token();
    revoke(&app, &token).await;
    assert_eq!(introspect(&app, &token).await, json!({"active": false}));
}

#[tokio::test]
async fn a_revoked_access_token_stops_working_at_once() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let token = tokens(&app, &setup, SCOPE).await.access_token();
    assert_eq!(fhir_status(&app, &token).await, 200);
    revoke(&app, &token).await;
    assert_eq!(fhir_status(&app, &token).await, 401);
}

#[tokio::test]
async fn a_revoked_refresh_token_cannot_refresh() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let refresh_token = tokens(&app, &setup, SCOPE).await.refresh_token();
    revoke(&app, &refresh_token).await;
    assert_eq!(
        introspect(&app, &refresh_token).await,
        json!({"active": false})
    );
    let next = refresh(&app, &refresh_token, None).await;
    assert_eq!(next.status, 400);
    assert_eq!(next.error(), "invalid_grant");
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_the_access_tokens_of_its_grant() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let tokens = tokens(&app, &setup, SCOPE).await;
    let token = tokens.access_token();
    assert_eq!(fhir_status(&app, &token).await, 200);
    revoke(&app, &tokens.refresh_token()).await;
    assert_eq!(fhir_status(&app, &token).await, 401);
}

#[tokio::test]
async fn another_clients_token_is_not_revoked() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    app.register_public_app("other-app", APP_SCOPES).await;
    let token = tokens(&app, &setup, SCOPE).await.access_token();
    let response = reqwest::Client::new()
        .post(format!("{}/revoke", app.auth))
        .form(&[("token", token.as_str()), ("client_id", "other-app")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(fhir_status(&app, &token).await, 200);
}

#[tokio::test]
async fn another_clients_refresh_token_is_refused_and_not_spent() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    app.register_public_app("other-app", APP_SCOPES).await;
    let refresh_token = tokens(&app, &setup, SCOPE).await.refresh_token();
    let stolen = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
            ("client_id", "other-app"),
        ],
        None,
    )
    .await;
    assert_eq!(stolen.status, 400);
    assert_eq!(stolen.error(), "invalid_grant");
    assert_eq!(refresh(&app, &refresh_token, None).await.status, 200);
}

#[tokio::test]
async fn introspection_of_a_refresh_token_names_the_user() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let tokens = tokens(&app, &setup, &format!("openid fhirUser {SCOPE}")).await;
    let answer = introspect(&app, &tokens.refresh_token()).await;
    assert_eq!(answer["sub"], "dr", "{answer}");
    assert_eq!(
        answer["fhirUser"],
        format!("{}/Practitioner/{}", app.base, setup.practitioner)
    );
}

/// A public app allowed to call the token endpoint from `https://app.example`.
async fn register_browser_app(app: &TestApp) {
    app.register_client(smart_auth::store::Client {
        client_id: "browser-app".to_owned(),
        name: "Browser app".to_owned(),
        kind: smart_auth::store::ClientKind::Public,
        secret_hash: None,
        jwks: None,
        jwks_url: None,
        redirect_uris: vec![telemed_tests::APP_REDIRECT.to_owned()],
        scope: smart_auth::scope::ScopeSet::parse(APP_SCOPES),
        launch_url: None,
        origins: vec!["https://app.example".to_owned()],
        created_at: 0,
    })
    .await;
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, app.token_url())
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn the_token_endpoint_allows_a_registered_origin() {
    let app = spawn_app().await;
    register_browser_app(&app).await;
    let response = preflight(&app, "https://app.example").await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn the_token_endpoint_refuses_an_unregistered_origin() {
    let app = spawn_app().await;
    register_browser_app(&app).await;
    let response = preflight(&app, "https://evil.example").await;
    assert!(!response.status().is_success());
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

/// A second node of `app`'s server on the same database, under the same public URL (so the
/// same issuer and audience): the address of its FHIR base.
async fn second_node(app: &TestApp) -> String {
    let mut config = app.config.clone();
    config.base_url = Some(app.auth.trim_end_matches("/auth").to_owned());
    let node = telemed_server::Application::build(config)
        .await
        .expect("the second node starts");
    let base = format!("http://127.0.0.1:{}/fhir", node.port());
    tokio::spawn(node.run_until_stopped());
    base
}

#[tokio::test]
async fn a_revocation_through_one_node_holds_on_another_within_seconds() {
    let app = spawn_app().await;
    let setup = setup(&app).await;
    let token = tokens(&app, &setup, SCOPE).await.access_token();
    let other = second_node(&app).await;
    let search = || {
        app.client_with_token(&token)
            .get(format!("{other}/Observation"))
            .send()
    };
    assert_eq!(search().await.expect("sent").status(), 200);
    revoke(&app, &token).await;
    let mut status = 200;
    for _ in 0..30 {
        status = search().await.expect("sent").status().as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401);
}

#[tokio::test]
async fn oauth_errors_are_json() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(app.token_url())
        .form(&[("grant_type", "authorization_code"), ("code", "nothing")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "invalid_client", "{body}");
}

#[tokio::test]
async fn authorization_error_pages_are_html() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .get(format!("{}/authorize?client_id=nobody", app.auth))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
}
