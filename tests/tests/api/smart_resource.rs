//! The FHIR API as a resource server (SMART App Launch 2.2 scopes-and-launch-context.html,
//! RFC 6750): no valid token, 401 with a Bearer challenge; a token that is expired, for
//! another audience, forged or not an access token, 401; a request beyond the scopes, 403 with
//! an OperationOutcome; v1 and v2 scopes; a v2 query filter narrows searches and hides reads.

use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::{Value, json};
use smart_auth::keys::KeyRing;
use smart_auth::token::{AccessClaims, sign_access_token};
use telemed_tests::{
    AppLaunch, TestApp, assert_operation_outcome, id_of, matches, signing_key, spawn_app,
};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// A patient with a vital-signs and a laboratory Observation, and a Condition; the patient is
/// the user `alice` of the public app `app`.
struct Record {
    patient: String,
    vitals: String,
    lab: String,
    condition: String,
}

async fn record(app: &TestApp) -> Record {
    let patient = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Alice"}]}))
        .await;
    let p = format!("Patient/{}", id_of(&patient));
    let observation = |category: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
            "code": {"text": category}, "subject": {"reference": p}})
    };
    let vitals = app.created(&observation("vital-signs")).await;
    let lab = app.created(&observation("laboratory")).await;
    let condition = app
        .created(
            &json!({"resourceType": "Condition", "subject": {"reference": p},
            "code": {"text": "Asthma"}}),
        )
        .await;
    app.register_public_app(
        "app",
        "launch/patient patient/*.cruds patient/*.read patient/*.write",
    )
    .await;
    app.register_user("alice", Some(&p), None).await;
    Record {
        patient: id_of(&patient).to_owned(),
        vitals: id_of(&vitals).to_owned(),
        lab: id_of(&lab).to_owned(),
        condition: id_of(&condition).to_owned(),
    }
}

/// Alice's access token for `scope` (plus `launch/patient`).
async fn token(app: &TestApp, scope: &str) -> String {
    AppLaunch::new(app, "app", "alice", &format!("launch/patient {scope}"))
        .run(app)
        .await
        .access_token()
}

/// A token the server's own key signs, with `adjust` applied to good claims.
fn forged(app: &TestApp, adjust: impl FnOnce(&mut AccessClaims)) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = AccessClaims {
        iss: app.auth.clone(),
        sub: telemed_tests::BACKEND_CLIENT.to_owned(),
        aud: app.base.clone(),
        exp: now + 300,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: telemed_tests::BACKEND_CLIENT.to_owned(),
        scope: "system/*.rs".to_owned(),
        patient: None,
        encounter: None,
        fhir_user: None,
        sid: None,
    };
    adjust(&mut claims);
    sign_access_token(&KeyRing::new(signing_key(), Vec::new()), &claims).expect("signed")
}

async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client_with_token(token)
        .get(format!("{}/{path}", app.base))
        .send()
        .await
        .expect("sent")
}

/// Panics unless `response` is a 401 with a Bearer challenge and an OperationOutcome.
async fn assert_unauthorized(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()[WWW_AUTHENTICATE]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_operation_outcome(&response.json().await.expect("JSON"));
}

#[tokio::test]
async fn a_request_without_a_token_gets_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let response = app
        .anonymous()
        .get(format!("{}/Patient", app.base))
        .send()
        .await
        .expect("sent");
    assert_unauthorized(response).await;
}

#[tokio::test]
async fn a_forged_token_of_the_servers_own_making_is_taken() {
    // The control for the forgeries below: with good claims, the forge makes a good token.
    let app = spawn_app().await;
    let response = get(&app, &forged(&app, |_| {}), "Patient").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_expired_token_gets_401() {
    let app = spawn_app().await;
    let token = forged(&app, |claims| {
        claims.iat -= 3600;
        claims.exp = claims.iat + 300;
    });
    assert_unauthorized(get(&app, &token, "Patient").await).await;
}

#[tokio::test]
async fn a_token_for_another_audience_gets_401() {
    let app = spawn_app().await;
    let token = forged(&app, |claims| {
        claims.aud = "https://other.example/fhir".to_owned()
    });
    assert_unauthorized(get(&app, &token, "Patient").await).await;
}

#[tokio::test]
async fn a_token_from_another_issuer_gets_401() {
    let app = spawn_app().await;
    let token = forged(&app, |claims| {
        claims.iss = "https://other.example/auth".to_owned()
    });
    assert_unauthorized(get(&app, &token, "Patient").await).await;
}

#[tokio::test]
async fn a_token_whose_claims_were_altered_gets_401() {
    let app = spawn_app().await;
    let good = forged(&app, |_| {});
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut claims = telemed_tests::jwt_claims(&good);
    claims["scope"] = json!("system/*.cruds");
    use base64::Engine as _;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    assert_unauthorized(get(&app, &parts.join("."), "Patient").await).await;
}

#[tokio::test]
async fn an_id_token_is_not_an_access_token() {
    let app = spawn_app().await;
    record(&app).await;
    app.register_public_app("oidc", "openid fhirUser launch/patient patient/*.rs")
        .await;
    let tokens = AppLaunch::new(
        &app,
        "oidc",
        "alice",
        "openid fhirUser launch/patient patient/*.rs",
    )
    .run(&app)
    .await;
    let id_token = tokens.body["id_token"].as_str().expect("an id_token");
    assert_unauthorized(get(&app, id_token, "Observation").await).await;
}

#[tokio::test]
async fn a_type_outside_the_scopes_gets_403_with_an_outcome() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let token = token(&app, "patient/Observation.rs").await;
    let response = get(&app, &token, &format!("Condition/{}", record.condition)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_operation_outcome(&response.json().await.expect("JSON"));
}

#[tokio::test]
async fn a_write_with_read_scopes_gets_403() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let token = token(&app, "patient/*.rs").await;
    let response = app
        .client_with_token(&token)
        .post(format!("{}/Condition", app.base))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Condition",
                "subject": {"reference": format!("Patient/{}", record.patient)},
                "code": {"text": "Hay fever"}})
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn v1_read_scopes_read_and_search() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let token = token(&app, "patient/*.read").await;
    let read = get(&app, &token, &format!("Condition/{}", record.condition)).await;
    assert_eq!(read.status(), 200);
    let bundle: Value = get(&app, &token, "Observation")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        bundle["entry"].as_array().map(Vec::len),
        Some(2),
        "{bundle}"
    );
}

#[tokio::test]
async fn v1_write_scopes_write_but_do_not_read() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let token = token(&app, "patient/*.write").await;
    let read = get(&app, &token, &format!("Condition/{}", record.condition)).await;
    assert_eq!(read.status(), StatusCode::FORBIDDEN);
    let response = app
        .client_with_token(&token)
        .post(format!("{}/Condition", app.base))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Condition",
                "subject": {"reference": format!("Patient/{}", record.patient)},
                "code": {"text": "Hay fever"}})
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::CREATED);
}

fn filtered_scope() -> String {
    format!("patient/Observation.rs?category={CATEGORY}|vital-signs")
}

#[tokio::test]
async fn a_v2_query_filter_narrows_a_search() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let token = token(&app, &filtered_scope()).await;
    let bundle: Value = get(&app, &token, "Observation")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        matches(&bundle),
        vec![format!("Observation/{}", record.vitals)]
    );
}

#[tokio::test]
async fn a_v2_query_filter_hides_a_read_outside_it() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let token = token(&app, &filtered_scope()).await;
    let inside = get(&app, &token, &format!("Observation/{}", record.vitals)).await;
    assert_eq!(inside.status(), 200);
    let outside = get(&app, &token, &format!("Observation/{}", record.lab)).await;
    assert_eq!(outside.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_v2_query_filter_is_not_widened_by_the_search() {
    let app = spawn_app().await;
    record(&app).await;
    let token = token(&app, &filtered_scope()).await;
    let bundle: Value = get(
        &app,
        &token,
        &format!("Observation?category={CATEGORY}|laboratory"),
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert!(matches(&bundle).is_empty(), "{bundle}");
}

#[tokio::test]
async fn includes_of_a_type_outside_the_scopes_are_left_out() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let token = token(&app, "patient/Observation.rs").await;
    let bundle: Value = get(&app, &token, "Observation?_include=Observation:subject")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(matches(&bundle).len(), 2, "{bundle}");
    assert!(
        telemed_tests::included(&bundle).is_empty(),
        "Patient/{} came as an include: {bundle}",
        record.patient
    );
}

#[tokio::test]
async fn a_v2_query_filter_limits_writes_too() {
    let app = spawn_app().await;
    let record = record(&app).await;
    let scope = format!("patient/Observation.c?category={CATEGORY}|vital-signs");
    let token = token(&app, &scope).await;
    let create = |category: &str| {
        app.client_with_token(&token)
            .post(format!("{}/Observation", app.base))
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
                    "code": {"text": category},
                    "subject": {"reference": format!("Patient/{}", record.patient)}})
                .to_string(),
            )
            .send()
    };
    assert_eq!(create("vital-signs").await.expect("sent").status(), 201);
    assert_eq!(
        create("laboratory").await.expect("sent").status(),
        StatusCode::FORBIDDEN
    );
}
