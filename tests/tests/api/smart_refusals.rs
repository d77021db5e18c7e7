//! What the authorization and token endpoints refuse (SMART App Launch 2.2 app-launch.html,
//! RFC 6749 §4.1.2.1 and §5.2, RFC 7636): an unknown client or redirect URI gets an error page
//! and no redirect; a wrong audience, missing or `plain` PKCE, an expired launch or a scope
//! the app may not have go back to the app as errors, without a code; a code is good once, for
//! its own client and verifier; a second factor is required and used once.

use serde_json::json;
use smart_auth::secret::token_digest;
use smart_auth::store::LaunchContext;
use smart_auth::totp::TotpSecret;
use telemed_tests::{AppLaunch, Landing, TestApp, id_of, spawn_app, spawn_app_with};

const APP_SCOPES: &str = "openid fhirUser launch launch/patient offline_access patient/*.cruds \
    user/*.cruds";

/// Patient `alice` (a user) and the public app `app`; Alice's id.
async fn setup(app: &TestApp) -> String {
    let alice = app
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Alice"}]}))
        .await;
    let id = id_of(&alice).to_owned();
    app.register_public_app("app", APP_SCOPES).await;
    app.register_user("alice", Some(&format!("Patient/{id}")), None)
        .await;
    id
}

fn launch(app: &TestApp) -> AppLaunch {
    AppLaunch::new(app, "app", "alice", "launch/patient patient/*.rs")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Panics unless the flow stopped on an error page (no redirect to the app) saying `text`.
async fn assert_error_page(app: &TestApp, launch: &AppLaunch, text: &str) {
    match launch.authorize(app).await {
        Landing::Page { status, html } => {
            assert_eq!(status, 400, "{html}");
            assert!(html.contains(text), "{text:?} in {html}");
        }
        Landing::App(params) => panic!("redirected to the app: {params:?}"),
    }
}

/// Panics unless the flow went back to the app with `error` and its state, and no code.
async fn assert_error_redirect(app: &TestApp, launch: &AppLaunch, error: &str) {
    let params = launch.authorize(app).await.redirect();
    assert_eq!(
        params.get("error").map(String::as_str),
        Some(error),
        "{params:?}"
    );
    assert_eq!(params.get("state"), Some(&launch.state));
    assert!(!params.contains_key("code"), "{params:?}");
}

#[tokio::test]
async fn an_unknown_client_gets_an_error_page() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app).with_param("client_id", "nobody");
    assert_error_page(&app, &launch, "not registered").await;
}

#[tokio::test]
async fn a_request_without_client_id_gets_an_error_page() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app).without_param("client_id");
    assert_error_page(&app, &launch, "client_id").await;
}

#[tokio::test]
async fn an_unregistered_redirect_uri_gets_an_error_page() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app).with_param("redirect_uri", "https://evil.example/callback");
    assert_error_page(&app, &launch, "redirect_uri").await;
}

#[tokio::test]
async fn a_request_without_redirect_uri_gets_an_error_page() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app).without_param("redirect_uri");
    assert_error_page(&app, &launch, "redirect_uri").await;
}

#[tokio::test]
async fn an_audience_other_than_the_fhir_base_gets_no_code() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app).with_param("aud", "https://other.example/fhir");
    assert_error_redirect(&app, &launch, "invalid_request").await;
}

#[tokio::test]
async fn a_request_without_aud_gets_no_code() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app).without_param("aud");
    assert_error_redirect(&app, &launch, "invalid_request").await;
}

#[tokio::test]
async fn a_request_without_pkce_gets_no_code() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app)
        .without_param("code_challenge")
        .without_param("code_challenge_method");
    assert_error_redirect(&app, &launch, "invalid_request").await;
}

#[tokio::test]
async fn plain_pkce_gets_no_code() {
    let app = spawn_app().await;
    setup(&app).await;
    let mut launch = launch(&app);
    let verifier = launch.pkce.verifier.clone();
    launch = launch
        .with_param("code_challenge", &verifier)
        .with_param("code_challenge_method", "plain");
    assert_error_redirect(&app, &launch, "invalid_request").await;
}

#[tokio::test]
async fn a_scope_the_app_may_not_have_gets_invalid_scope() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = AppLaunch::new(&app, "app", "alice", "system/*.cruds");
    assert_error_redirect(&app, &launch, "invalid_scope").await;
}

#[tokio::test]
async fn an_expired_launch_gets_no_code() {
    let app = spawn_app().await;
    let alice = setup(&app).await;
    let store = app.auth_store().await;
    let context = LaunchContext {
        patient: Some(alice),
        ..LaunchContext::default()
    };
    store
        .insert_launch(&token_digest("stale-launch"), &context, "ehr", now() - 1)
        .await
        .expect("a launch");
    store.close().await;
    let mut launch = AppLaunch::new(&app, "app", "alice", "launch patient/*.rs");
    launch.launch = Some("stale-launch".to_owned());
    assert_error_redirect(&app, &launch, "invalid_request").await;
}

#[tokio::test]
async fn the_launch_scope_without_a_launch_gets_no_code() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = AppLaunch::new(&app, "app", "alice", "launch patient/*.rs");
    assert_error_redirect(&app, &launch, "invalid_request").await;
}

#[tokio::test]
async fn a_blank_code_verifier_is_refused() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app);
    let code = launch.code(&app).await;
    let response = launch.exchange_with(&app, &code, "").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.error(), "invalid_grant");
}

#[tokio::test]
async fn a_wrong_code_verifier_is_refused() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app);
    let code = launch.code(&app).await;
    let other = telemed_tests::Pkce::new().verifier;
    let response = launch.exchange_with(&app, &code, &other).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.error(), "invalid_grant");
}

#[tokio::test]
async fn the_challenge_itself_is_not_a_verifier() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app);
    let code = launch.code(&app).await;
    let response = launch
        .exchange_with(&app, &code, &launch.pkce.challenge)
        .await;
    assert_eq!(response.status, 400);
    assert_eq!(response.error(), "invalid_grant");
}

#[tokio::test]
async fn a_code_is_good_once() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app);
    let code = launch.code(&app).await;
    assert_eq!(launch.exchange(&app, &code).await.status, 200);
    let again = launch.exchange(&app, &code).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.error(), "invalid_grant");
}

#[tokio::test]
async fn a_code_presented_again_revokes_the_tokens_it_gave() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app);
    let code = launch.code(&app).await;
    let first = launch.exchange(&app, &code).await;
    assert_eq!(first.status, 200);
    let client = app.client_with_token(&first.access_token());
    let search = format!("{}/Patient?_count=1", app.base);
    assert_eq!(
        client.get(&search).send().await.expect("sent").status(),
        200
    );
    assert_eq!(launch.exchange(&app, &code).await.status, 400);
    // Whoever presented it again may have stolen it: what it gave stops working.
    assert_eq!(
        client.get(&search).send().await.expect("sent").status(),
        401
    );
}

#[tokio::test]
async fn a_code_redeemed_with_another_redirect_uri_is_refused() {
    let app = spawn_app().await;
    setup(&app).await;
    let mut launch = launch(&app);
    let code = launch.code(&app).await;
    launch.redirect_uri = "https://app.example/other".to_owned();
    let response = launch.exchange(&app, &code).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.error(), "invalid_grant");
}

#[tokio::test]
async fn another_clients_code_is_refused() {
    let app = spawn_app().await;
    setup(&app).await;
    app.register_public_app("other-app", APP_SCOPES).await;
    let mut launch = launch(&app);
    let code = launch.code(&app).await;
    launch.client_id = "other-app".to_owned();
    let response = launch.exchange(&app, &code).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.error(), "invalid_grant");
}

/// A server whose practitioners need a second factor, a practitioner user `dr` with `totp`
/// (if any), and the app.
async fn totp_setup(totp: Option<&TotpSecret>) -> TestApp {
    let app = spawn_app_with(|config| config.practitioners_need_totp = true).await;
    let practitioner = app
        .created(&json!({"resourceType": "Practitioner", "name": [{"family": "Who"}]}))
        .await;
    app.register_public_app("app", APP_SCOPES).await;
    let reference = format!("Practitioner/{}", id_of(&practitioner));
    app.register_user("dr", Some(&reference), totp).await;
    app
}

#[tokio::test]
async fn a_practitioner_without_a_second_factor_cannot_sign_in_where_one_is_required() {
    let app = totp_setup(None).await;
    let (_, html) = AppLaunch::new(&app, "app", "dr", "openid fhirUser user/*.rs")
        .authorize(&app)
        .await
        .page();
    assert!(html.contains("must have a second factor"), "{html}");
}

#[tokio::test]
async fn the_second_factor_lets_a_practitioner_through() {
    let secret = TotpSecret::generate();
    let app = totp_setup(Some(&secret)).await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "openid fhirUser user/*.rs");
    launch.totp_code = Some(secret.code_at(now()));
    launch.run(&app).await;
}

#[tokio::test]
async fn a_wrong_second_factor_is_refused() {
    let secret = TotpSecret::generate();
    let app = totp_setup(Some(&secret)).await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "openid fhirUser user/*.rs");
    let right = secret.code_at(now());
    let wrong = format!(
        "{:06}",
        (right.parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    launch.totp_code = Some(wrong);
    let (_, html) = launch.authorize(&app).await.page();
    assert!(html.contains("code is wrong"), "{html}");
}

#[tokio::test]
async fn a_second_factor_code_is_used_once() {
    let secret = TotpSecret::generate();
    let app = totp_setup(Some(&secret)).await;
    let mut launch = AppLaunch::new(&app, "app", "dr", "openid fhirUser user/*.rs");
    launch.totp_code = Some(secret.code_at(now()));
    launch.run(&app).await;
    let (_, html) = launch.authorize(&app).await.page();
    assert!(html.contains("used already"), "{html}");
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let app = spawn_app().await;
    setup(&app).await;
    let launch = launch(&app);
    let store = app.auth_store().await;
    let info = smart_auth::store::CodeInfo {
        redirect_uri: launch.redirect_uri.clone(),
        code_challenge: launch.pkce.challenge.clone(),
        grant: smart_auth::store::GrantInfo {
            client_id: "app".to_owned(),
            username: Some("alice".to_owned()),
            fhir_user: None,
            scope: "patient/*.rs".to_owned(),
            context: LaunchContext::default(),
            nonce: None,
            auth_time: None,
        },
    };
    store
        .insert_code(&token_digest("stale-code"), "app", &info, now() - 1)
        .await
        .expect("a code");
    store.close().await;
    let response = launch.exchange(&app, "stale-code").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.error(), "invalid_grant");
}

#[tokio::test]
async fn a_confidential_client_must_authenticate_to_redeem_its_code() {
    let app = spawn_app().await;
    setup(&app).await;
    app.register_client(smart_auth::store::Client {
        client_id: "sym".to_owned(),
        name: "Symmetric".to_owned(),
        kind: smart_auth::store::ClientKind::ConfidentialSymmetric,
        secret_hash: Some(smart_auth::secret::hash_password("s3cret").expect("a hash")),
        jwks: None,
        jwks_url: None,
        redirect_uris: vec![telemed_tests::APP_REDIRECT.to_owned()],
        scope: smart_auth::scope::ScopeSet::parse(APP_SCOPES),
        launch_url: None,
        origins: Vec::new(),
        created_at: 0,
    })
    .await;
    let launch = AppLaunch::new(&app, "sym", "alice", "launch/patient patient/*.rs");
    let code = launch.code(&app).await;
    let response = launch.exchange(&app, &code).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.error(), "invalid_client");
}

#[tokio::test]
async fn a_confidential_client_redeems_its_code_with_its_secret() {
    let app = spawn_app().await;
    setup(&app).await;
    app.register_client(smart_auth::store::Client {
        client_id: "sym".to_owned(),
        name: "Symmetric".to_owned(),
        kind: smart_auth::store::ClientKind::ConfidentialSymmetric,
        secret_hash: Some(smart_auth::secret::hash_password("s3cret").expect("a hash")),
        jwks: None,
        jwks_url: None,
        redirect_uris: vec![telemed_tests::APP_REDIRECT.to_owned()],
        scope: smart_auth::scope::ScopeSet::parse(APP_SCOPES),
        launch_url: None,
        origins: Vec::new(),
        created_at: 0,
    })
    .await;
    let launch = AppLaunch::new(&app, "sym", "alice", "launch/patient patient/*.rs");
    let code = launch.code(&app).await;
    let response = telemed_tests::token_request(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &launch.redirect_uri),
            ("code_verifier", &launch.pkce.verifier),
        ],
        Some(("sym", "s3cret")),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
}
