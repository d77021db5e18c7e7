//! SMART Backend Services (backend-services.html, client-confidential-asymmetric.html):
//! client_credentials with a signed client assertion, RS384 and ES384, keys inline or at a
//! JWKS URL; what an assertion must be; and confidential-symmetric clients with their secret
//! (client-confidential-symmetric.html).

use std::sync::LazyLock;

use serde_json::Value;
use smart_auth::assertion::{ClientAlgorithm, ClientKey, sign_client_assertion};
use smart_auth::scope::ScopeSet;
use smart_auth::store::{Client, ClientKind};
use telemed_tests::{TestApp, TokenResponse, jwt_claims, spawn_app, token_request};

/// An RS384 key (RSA generation takes seconds in a debug build: once per run).
static RSA_KEY: LazyLock<ClientKey> =
    LazyLock::new(|| ClientKey::generate(ClientAlgorithm::Rs384).expect("an RSA key"));

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn backend_client(client_id: &str, jwks: Option<Value>, jwks_url: Option<String>) -> Client {
    Client {
        client_id: client_id.to_owned(),
        name: client_id.to_owned(),
        kind: ClientKind::ConfidentialAsymmetric,
        secret_hash: None,
        jwks,
        jwks_url,
        redirect_uris: Vec::new(),
        scope: ScopeSet::parse("system/*.rs"),
        launch_url: None,
        origins: Vec::new(),
        created_at: 0,
    }
}

/// Registers `client_id` with `key` inline.
async fn register(app: &TestApp, client_id: &str, key: &ClientKey) {
    app.register_client(backend_client(client_id, Some(key.jwks()), None))
        .await;
}

/// A client_credentials request for `system/*.rs` with `assertion`.
async fn with_assertion(app: &TestApp, assertion: &str) -> TokenResponse {
    token_request(
        app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ],
        None,
    )
    .await
}

/// A good assertion of `client_id` signed with `key`.
fn assertion(app: &TestApp, key: &ClientKey, client_id: &str) -> String {
    sign_client_assertion(key, client_id, &app.token_url(), &jti(), now() + 60)
        .expect("an assertion")
}

async fn fhir_status(app: &TestApp, token: &str) -> u16 {
    app.client_with_token(token)
        .get(format!("{}/Patient", app.base))
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_rs384_assertion_gets_a_token_that_works() {
    let app = spawn_app().await;
    register(&app, "rsa-service", &RSA_KEY).await;
    let response = with_assertion(&app, &assertion(&app, &RSA_KEY, "rsa-service")).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body["scope"], "system/*.rs");
    assert_eq!(fhir_status(&app, &response.access_token()).await, 200);
}

#[tokio::test]
async fn an_es384_assertion_gets_a_token_that_works() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let response = with_assertion(&app, &assertion(&app, &key, "ec-service")).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(fhir_status(&app, &response.access_token()).await, 200);
}

#[tokio::test]
async fn a_backend_token_lives_at_most_five_minutes() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let response = with_assertion(&app, &assertion(&app, &key, "ec-service")).await;
    let expires_in = response.body["expires_in"].as_i64().expect("expires_in");
    assert!((1..=300).contains(&expires_in), "{expires_in}");
    let claims = jwt_claims(&response.access_token());
    let life = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert!(life <= 300, "{life}");
}

#[tokio::test]
async fn a_replayed_assertion_is_refused() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let assertion = assertion(&app, &key, "ec-service");
    assert_eq!(with_assertion(&app, &assertion).await.status, 200);
    let again = with_assertion(&app, &assertion).await;
    assert_eq!(again.status, 401);
    assert_eq!(again.error(), "invalid_client");
}

#[tokio::test]
async fn an_assertion_expiring_more_than_five_minutes_out_is_refused() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let assertion =
        sign_client_assertion(&key, "ec-service", &app.token_url(), &jti(), now() + 600)
            .expect("an assertion");
    let response = with_assertion(&app, &assertion).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.error(), "invalid_client");
}

#[tokio::test]
async fn an_expired_assertion_is_refused() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let assertion =
        sign_client_assertion(&key, "ec-service", &app.token_url(), &jti(), now() - 120)
            .expect("an assertion");
    assert_eq!(with_assertion(&app, &assertion).await.status, 401);
}

#[tokio::test]
async fn an_assertion_for_another_audience_is_refused() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let assertion = sign_client_assertion(&key, "ec-service", &app.base, &jti(), now() + 60)
        .expect("an assertion");
    let response = with_assertion(&app, &assertion).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.error(), "invalid_client");
}

#[tokio::test]
async fn an_assertion_signed_by_another_key_is_refused() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    let other = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let response = with_assertion(&app, &assertion(&app, &other, "ec-service")).await;
    assert_eq!(response.status, 401);
}

#[tokio::test]
async fn a_backend_service_gets_only_system_scopes() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let response = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "patient/*.rs"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &assertion(&app, &key, "ec-service")),
        ],
        None,
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(response.error(), "invalid_scope");
}

/// Serves `jwks` at `http://127.0.0.1:{port}/jwks.json` for as long as the test runs.
async fn serve_jwks(jwks: Value) -> String {
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}/jwks.json")
}

#[tokio::test]
async fn keys_registered_as_a_jwks_url_are_fetched() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    let url = serve_jwks(key.jwks()).await;
    app.register_client(backend_client("url-service", None, Some(url)))
        .await;
    let response = with_assertion(&app, &assertion(&app, &key, "url-service")).await;
    assert_eq!(response.status, 200, "{}", response.body);
}

#[tokio::test]
async fn a_jwks_url_without_the_signing_key_is_refused() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    let other = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    let url = serve_jwks(other.jwks()).await;
    app.register_client(backend_client("url-service", None, Some(url)))
        .await;
    let response = with_assertion(&app, &assertion(&app, &key, "url-service")).await;
    assert_eq!(response.status, 401);
}

const SECRET: &str = "s3cret-of-the-symmetric-client";

async fn register_symmetric(app: &TestApp) {
    app.register_client(Client {
        client_id: "sym".to_owned(),
        name: "Symmetric".to_owned(),
        kind: ClientKind::ConfidentialSymmetric,
        secret_hash: Some(smart_auth::secret::hash_password(SECRET).expect("a hash")),
        jwks: None,
        jwks_url: None,
        redirect_uris: vec![telemed_tests::APP_REDIRECT.to_owned()],
        scope: ScopeSet::parse("system/*.rs"),
        launch_url: None,
        origins: Vec::new(),
        created_at: 0,
    })
    .await;
}

#[tokio::test]
async fn client_secret_basic_authenticates_a_symmetric_client() {
    let app = spawn_app().await;
    register_symmetric(&app).await;
    let response = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ],
        Some(("sym", SECRET)),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(fhir_status(&app, &response.access_token()).await, 200);
}

#[tokio::test]
async fn client_secret_post_authenticates_a_symmetric_client() {
    let app = spawn_app().await;
    register_symmetric(&app).await;
    let response = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("client_id", "sym"),
            ("client_secret", SECRET),
        ],
        None,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
}

#[tokio::test]
async fn a_wrong_client_secret_is_refused_with_a_basic_challenge() {
    let app = spawn_app().await;
    register_symmetric(&app).await;
    let response = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ],
        Some(("sym", "not-the-secret")),
    )
    .await;
    assert_eq!(response.status, 401);
    assert_eq!(response.error(), "invalid_client");
    let challenge = response.headers["www-authenticate"]
        .to_str()
        .expect("ASCII");
    assert!(challenge.starts_with("Basic"), "{challenge}");
}

#[tokio::test]
async fn a_public_client_cannot_use_client_credentials() {
    let app = spawn_app().await;
    app.register_public_app("app", "system/*.rs").await;
    let response = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("client_id", "app"),
        ],
        None,
    )
    .await;
    assert_eq!(response.status, 401);
    assert_eq!(response.error(), "invalid_client");
}

#[tokio::test]
async fn a_backend_token_response_has_no_app_context() {
    let app = spawn_app().await;
    let key = ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key");
    register(&app, "ec-service", &key).await;
    let response = with_assertion(&app, &assertion(&app, &key, "ec-service")).await;
    for field in [
        "refresh_token",
        "id_token",
        "patient",
        "need_patient_banner",
    ] {
        assert!(
            response.body.get(field).is_none(),
            "{field}: {}",
            response.body
        );
    }
}
