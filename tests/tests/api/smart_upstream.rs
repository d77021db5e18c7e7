//! Login delegated to an upstream OpenID Connect provider. The provider here is a second
//! telemed: its authorization server is a complete OpenID provider (discovery, JWKS,
//! authorization code with PKCE, id_token), so the whole exchange is real.

use reqwest::header::LOCATION;
use serde_json::json;
use smart_auth::scope::ScopeSet;
use smart_auth::store::{Client as AuthClient, ClientKind, User};
use telemed_server::config::UpstreamOidc;
use telemed_tests::{
    APP_REDIRECT, AppLaunch, PASSWORD, TestApp, browser, consent_scopes, hidden_request, id_of,
    spawn_app, spawn_app_with,
};

/// telemed's client at the provider, and its secret.
const AT_PROVIDER: (&str, &str) = (
    "telemed-upstream",
    "a secret only telemed and the provider know",
);

/// The provider (a telemed whose user `alice` signs in) and a telemed that delegates to it.
async fn provider_and_telemed() -> (TestApp, TestApp) {
    let provider = spawn_app().await;
    provider.register_user("alice", None, None).await;
    let issuer = provider.auth.clone();
    let telemed = spawn_app_with(move |config| {
        config.upstream_oidc = Some(UpstreamOidc {
            issuer,
            client_id: AT_PROVIDER.0.to_owned(),
            client_secret: Some(AT_PROVIDER.1.to_owned()),
            name: "Hospital".to_owned(),
        });
    })
    .await;
    provider
        .register_client(AuthClient {
            client_id: AT_PROVIDER.0.to_owned(),
            name: "telemed".to_owned(),
            kind: ClientKind::ConfidentialSymmetric,
            secret_hash: Some(smart_auth::secret::hash_password(AT_PROVIDER.1).expect("hash")),
            jwks: None,
            jwks_url: None,
            redirect_uris: vec![format!("{}/upstream/callback", telemed.auth)],
            scope: ScopeSet::parse("openid profile"),
            launch_url: None,
            origins: Vec::new(),
            created_at: 0,
        })
        .await;
    (provider, telemed)
}

/// Follows one redirect; its Location.
fn location(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 303, "not a redirect");
    response.headers()[LOCATION]
        .to_str()
        .expect("a Location")
        .to_owned()
}

/// Signs in at the provider as `alice` from the login page telemed shows, consents there, and
/// returns telemed's answer to the provider's redirect back.
async fn sign_in_upstream(
    provider: &TestApp,
    telemed: &TestApp,
    login_page: &str,
) -> reqwest::Response {
    let browser = browser();
    let request = hidden_request(login_page).expect("a login form");
    assert!(login_page.contains("Sign in with Hospital"), "{login_page}");
    let start = browser
        .get(format!("{}/upstream/start", telemed.auth))
        .query(&[("request", &request)])
        .send()
        .await
        .expect("start");
    let to_provider = location(&start);
    assert!(to_provider.starts_with(&provider.auth), "{to_provider}");
    // At the provider: its own login and consent.
    let page = browser.get(&to_provider).send().await.expect("provider");
    let html = page.text().await.expect("the provider's login page");
    let provider_request = hidden_request(&html).expect("the provider's login form");
    let consent = browser
        .post(format!("{}/login", provider.auth))
        .form(&[
            ("request", provider_request.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .expect("provider login")
        .text()
        .await
        .expect("the provider's consent page");
    let mut form = vec![
        ("request".to_owned(), provider_request.clone()),
        ("decision".to_owned(), "allow".to_owned()),
    ];
    for scope in consent_scopes(&consent) {
        form.push(("scope".to_owned(), scope));
    }
    let back = browser
        .post(format!("{}/consent", provider.auth))
        .form(&form)
        .send()
        .await
        .expect("provider consent");
    let callback = location(&back);
    assert!(
        callback.starts_with(&format!("{}/upstream/callback", telemed.auth)),
        "{callback}"
    );
    browser.get(&callback).send().await.expect("callback")
}

#[tokio::test]
async fn a_user_signs_in_at_the_upstream_provider_and_the_app_gets_its_token() {
    let (provider, telemed) = provider_and_telemed().await;
    let patient = telemed
        .created(&json!({"resourceType": "Patient", "name": [{"family": "Upstream"}]}))
        .await;
    let patient = id_of(&patient).to_owned();
    let store = telemed.auth_store().await;
    store
        .insert_user(&User {
            username: "alice.local".to_owned(),
            password_hash: smart_auth::secret::hash_password("never used here").expect("hash"),
            fhir_user: Some(format!("Patient/{patient}")),
            totp_secret: None,
            upstream_sub: Some("alice".to_owned()),
            created_at: 0,
        })
        .await
        .expect("the local user");
    store.close().await;
    telemed
        .register_public_app("chart", "openid fhirUser launch/patient patient/*.rs")
        .await;
    let launch = AppLaunch::new(
        &telemed,
        "chart",
        "alice.local",
        "openid fhirUser launch/patient patient/*.rs",
    );
    let login = browser()
        .get(format!("{}/authorize", telemed.auth))
        .query(&launch.params())
        .send()
        .await
        .expect("authorize");
    let login = login.text().await.expect("the login page");
    let answer = sign_in_upstream(&provider, &telemed, &login).await;
    // Back at telemed, signed in as the local user: its consent page.
    assert_eq!(answer.status(), 200);
    let consent = answer.text().await.expect("telemed's consent page");
    let request = hidden_request(&consent).expect("a consent form");
    let mut form = vec![
        ("request".to_owned(), request),
        ("decision".to_owned(), "allow".to_owned()),
    ];
    for scope in consent_scopes(&consent) {
        form.push(("scope".to_owned(), scope));
    }
    let redirect = browser()
        .post(format!("{}/consent", telemed.auth))
        .form(&form)
        .send()
        .await
        .expect("consent");
    let to_app = location(&redirect);
    assert!(to_app.starts_with(APP_REDIRECT), "{to_app}");
    let code = url::Url::parse(&to_app)
        .expect("a URL")
        .query_pairs()
        .find(|(name, _)| name == "code")
        .map(|(_, code)| code.into_owned())
        .expect("a code");
    let token = launch.exchange(&telemed, &code).await;
    assert_eq!(token.status, 200, "{:?}", token.body);
    assert_eq!(token.body["patient"], patient.as_str());
    let claims = telemed_tests::jwt_claims(token.body["id_token"].as_str().expect("id_token"));
    assert_eq!(claims["sub"], "alice.local");
}

#[tokio::test]
async fn an_upstream_identity_without_a_local_user_gets_no_access() {
    let (provider, telemed) = provider_and_telemed().await;
    telemed
        .register_public_app("chart", "openid patient/*.rs")
        .await;
    let launch = AppLaunch::new(&telemed, "chart", "nobody", "openid patient/*.rs");
    let login = browser()
        .get(format!("{}/authorize", telemed.auth))
        .query(&launch.params())
        .send()
        .await
        .expect("authorize")
        .text()
        .await
        .expect("the login page");
    let answer = sign_in_upstream(&provider, &telemed, &login).await;
    assert_eq!(answer.status(), 200);
    let page = answer.text().await.expect("a page");
    assert!(page.contains("no access to telemed yet"), "{page}");
    assert!(
        hidden_request(&page).is_some(),
        "the login form is shown again"
    );
}
