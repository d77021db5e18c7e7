//! Helpers shared by the end-to-end tests: a real server on a random port, on its own fresh
//! database, a real HTTP client, and readers of the searchset Bundles it answers with.
//!
//! The database is SQLite (a new file per test) unless `TELEMED_TEST_DATABASE_URL` names a
//! PostgreSQL server, on which each test creates a database of its own (a copy of a template the
//! run migrates once) and drops it afterwards.
//!
//! Authorization is on, as in production: the client of a [`TestApp`] carries a SMART Backend
//! Services token with `system/*.cruds`, obtained over HTTP by the real client_credentials
//! flow, and [`TestApp::anonymous`] is a client without one. One signing key and one client key
//! serve every test of a run (RSA key generation takes seconds in a debug build); each test's
//! database gets them before its server starts.

use std::collections::HashMap;
use std::sync::LazyLock;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::Value;
use smart_auth::assertion::{ClientAlgorithm, ClientKey, sign_client_assertion};
use smart_auth::keys::SigningKey;
use smart_auth::scope::ScopeSet;
use smart_auth::store::{AuthStore, Client as AuthClient, ClientKind};
use sqlx::Connection as _;
use telemed_server::{Application, Config};

/// The signing key of every test server of this run.
static SIGNING_KEY: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::generate().expect("an RSA key"));

/// The key of the backend client every test registers.
static BACKEND_KEY: LazyLock<ClientKey> =
    LazyLock::new(|| ClientKey::generate(ClientAlgorithm::Es384).expect("a P-384 key"));

/// The client_id of the backend service each test registers.
pub const BACKEND_CLIENT: &str = "test-backend";

/// A running server and a client for it.
pub struct TestApp {
    /// The FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`.
    pub base: String,
    /// The authorization server's base URL, e.g. `http://127.0.0.1:41234/auth`.
    pub auth: String,
    /// A client whose requests carry [`Self::token`].
    pub client: Client,
    /// A `system/*.cruds` access token (empty when authorization is disabled).
    pub token: String,
    /// The configuration the server started with (its database URL, for commands that work on
    /// the same database).
    pub config: Config,
    database: Database,
}

enum Database {
    Sqlite(std::path::PathBuf),
    Postgres { admin_url: String, name: String },
}

/// Starts a server with the default test configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after `configure` has adjusted its configuration.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let (url, database) = match std::env::var("TELEMED_TEST_DATABASE_URL") {
        Ok(admin_url) => {
            let template = TEMPLATE.get_or_init(|| create_template(&admin_url)).await;
            let name = format!("telemed_test_{}", uuid::Uuid::new_v4().simple());
            let mut connection = sqlx::PgConnection::connect(&admin_url)
                .await
                .expect("TELEMED_TEST_DATABASE_URL is reachable");
            sqlx::query(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .execute(&mut connection)
            .await
            .expect("CREATE DATABASE");
            let url = database_url(&admin_url, &name);
            (url, Database::Postgres { admin_url, name })
        }
        Err(_) => {
            let path = std::env::temp_dir()
                .join(format!("telemed-test-{}.db", uuid::Uuid::new_v4().simple()));
            (
                format!("sqlite://{}", path.display()),
                Database::Sqlite(path),
            )
        }
    };
    if matches!(database, Database::Sqlite(_)) {
        seed_auth(&url).await;
    }
    let mut config = Config::for_tests(url);
    config.max_db_connections = 4;
    configure(&mut config);
    let app = Application::build(config.clone())
        .await
        .expect("the server starts");
    let base = format!("{}/fhir", app.base_url());
    let auth = format!("{}/auth", app.base_url());
    tokio::spawn(app.run_until_stopped());
    let mut app = TestApp {
        base,
        auth,
        client: Client::new(),
        token: String::new(),
        config,
        database,
    };
    if app.config.auth == telemed_server::config::AuthMode::Smart {
        app.token = app.backend_token("system/*.cruds").await;
        app.client = app.client_with_token(&app.token);
    }
    app
}

/// The PostgreSQL database this run's test databases are copied from: migrated and seeded once
/// (running the migrations takes seconds; copying a database a fraction of one).
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// Templates are named `telemed_tmpl_{unix seconds}_{uuid}`; one older than this is left over
/// from a run that has ended, and is dropped.
const STALE_TEMPLATE_SECS: u64 = 6 * 3600;

/// `admin_url` with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let (prefix, _) = admin_url
        .rsplit_once('/')
        .expect("TELEMED_TEST_DATABASE_URL ends with /database");
    format!("{prefix}/{name}")
}

/// Creates, migrates and seeds this run's template database, and drops stale ones. A test
/// process has no hook at its end, so its template outlives it until a later run sweeps it.
async fn create_template(admin_url: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    let mut connection = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("TELEMED_TEST_DATABASE_URL is reachable");
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'telemed\\_tmpl\\_%'",
    )
    .fetch_all(&mut connection)
    .await
    .expect("pg_database");
    for stale in existing.iter().filter(|name| {
        name.split('_')
            .nth(2)
            .and_then(|secs| secs.parse::<u64>().ok())
            .is_some_and(|secs| secs + STALE_TEMPLATE_SECS < now)
    }) {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{stale}\" WITH (FORCE)"))
            .execute(&mut connection)
            .await;
    }
    let name = format!("telemed_tmpl_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut connection)
        .await
        .expect("CREATE DATABASE");
    let url = database_url(admin_url, &name);
    let store = telemed_server::store::Store::open(&url, 1)
        .await
        .expect("the template is migrated");
    store.close().await;
    seed_auth(&url).await;
    name
}

/// Gives a new database the run's signing key and backend client, before its server starts.
async fn seed_auth(database_url: &str) {
    let store = AuthStore::open(database_url)
        .await
        .expect("the authorization tables");
    let key = &*SIGNING_KEY;
    store
        .insert_first_signing_key(key.kid(), &key.to_pkcs8_pem().expect("PEM"), 0)
        .await
        .expect("the signing key is stored");
    store
        .insert_client(&AuthClient {
            client_id: BACKEND_CLIENT.to_owned(),
            name: "Test backend service".to_owned(),
            kind: ClientKind::ConfidentialAsymmetric,
            secret_hash: None,
            jwks: Some(BACKEND_KEY.jwks()),
            jwks_url: None,
            redirect_uris: Vec::new(),
            scope: ScopeSet::parse("system/*.cruds system/*.read system/*.write"),
            launch_url: None,
            origins: Vec::new(),
            created_at: 0,
        })
        .await
        .expect("the backend client is registered");
    store.close().await;
}

impl Drop for TestApp {
    fn drop(&mut self) {
        match &self.database {
            Database::Sqlite(path) => telemed_server::store::remove_sqlite_database(path),
            Database::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime; do the async clean-up on a thread of its own.
                let _ = std::thread::spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    runtime.block_on(async {
                        if let Ok(mut connection) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .execute(&mut connection)
                            .await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

impl TestApp {
    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.auth)
    }

    /// A client assertion of the test backend client (private_key_jwt), good for a minute.
    pub fn backend_assertion(&self) -> String {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 60;
        let jti = uuid::Uuid::new_v4().to_string();
        sign_client_assertion(&BACKEND_KEY, BACKEND_CLIENT, &self.token_url(), &jti, exp)
            .expect("an assertion")
    }

    /// An access token of the test backend client for `scope` (client_credentials); panics
    /// unless the token endpoint grants one.
    pub async fn backend_token(&self, scope: &str) -> String {
        let response = Client::new()
            .post(self.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &self.backend_assertion()),
            ])
            .send()
            .await
            .expect("token request sent");
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON token response");
        assert_eq!(status, 200, "client_credentials: {body}");
        body["access_token"]
            .as_str()
            .expect("an access_token")
            .to_owned()
    }

    /// Registers another backend service, `client_id`, with the test key, `scope` and browser
    /// `origins`, and returns a token of it for `scope`.
    pub async fn other_backend_token(
        &self,
        client_id: &str,
        scope: &str,
        origins: &[&str],
    ) -> String {
        let store = self.auth_store().await;
        store
            .insert_client(&AuthClient {
                client_id: client_id.to_owned(),
                name: client_id.to_owned(),
                kind: ClientKind::ConfidentialAsymmetric,
                secret_hash: None,
                jwks: Some(BACKEND_KEY.jwks()),
                jwks_url: None,
                redirect_uris: Vec::new(),
                scope: ScopeSet::parse(scope),
                launch_url: None,
                origins: origins.iter().map(|o| (*o).to_owned()).collect(),
                created_at: 0,
            })
            .await
            .expect("the client is registered");
        store.close().await;
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 60;
        let jti = uuid::Uuid::new_v4().to_string();
        let assertion =
            sign_client_assertion(&BACKEND_KEY, client_id, &self.token_url(), &jti, exp)
                .expect("an assertion");
        let response = Client::new()
            .post(self.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
            ])
            .send()
            .await
            .expect("token request sent");
        let body: Value = response.json().await.expect("a JSON token response");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {body}"))
            .to_owned()
    }

    /// A client whose every request carries `token`.
    pub fn client_with_token(&self, token: &str) -> Client {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
        );
        Client::builder()
            .default_headers(headers)
            .build()
            .expect("a client")
    }

    /// A client without an access token.
    pub fn anonymous(&self) -> Client {
        Client::new()
    }

    /// The authorization tables of this test's database, for registering clients and users.
    pub async fn auth_store(&self) -> AuthStore {
        AuthStore::open(&self.config.database_url)
            .await
            .expect("the authorization tables")
    }

    /// A request to `{base}/{path}`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}/{path}", self.base))
    }

    /// `POST {type}` with a FHIR JSON body.
    pub async fn create(&self, resource: &Value) -> Response {
        let rt = resource["resourceType"].as_str().unwrap_or("Unknown");
        self.request(Method::POST, rt)
            .header("content-type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .await
            .expect("request sent")
    }

    /// Creates `resource` and returns the stored resource; panics unless the answer is 201.
    pub async fn created(&self, resource: &Value) -> Value {
        let response = self.create(resource).await;
        assert_eq!(response.status(), 201, "create failed");
        response.json().await.expect("a JSON body")
    }

    /// `PUT {type}/{id}` with a FHIR JSON body.
    pub async fn update(&self, resource: &Value) -> Response {
        let rt = resource["resourceType"].as_str().unwrap_or("Unknown");
        let id = resource["id"].as_str().unwrap_or("none");
        self.request(Method::PUT, &format!("{rt}/{id}"))
            .header("content-type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .await
            .expect("request sent")
    }

    /// `GET {path}`.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("request sent")
    }

    /// `GET {type}/{id}`.
    pub async fn read(&self, rt: &str, id: &str) -> Response {
        self.get(&format!("{rt}/{id}")).await
    }

    /// `GET {type}/{id}` as JSON; panics unless the answer is 200.
    pub async fn read_json(&self, rt: &str, id: &str) -> Value {
        let response = self.read(rt, id).await;
        assert_eq!(response.status(), 200, "read {rt}/{id}");
        response.json().await.expect("a JSON body")
    }

    /// `GET {type}/{id}/_history/{vid}`.
    pub async fn vread(&self, rt: &str, id: &str, vid: &str) -> Response {
        self.get(&format!("{rt}/{id}/_history/{vid}")).await
    }

    /// `DELETE {type}/{id}`.
    pub async fn delete(&self, rt: &str, id: &str) -> Response {
        self.request(Method::DELETE, &format!("{rt}/{id}"))
            .send()
            .await
            .expect("request sent")
    }

    /// `PATCH {type}/{id}` with a JSON Patch (RFC 6902) body.
    pub fn patch(&self, rt: &str, id: &str, ops: &Value) -> RequestBuilder {
        self.request(Method::PATCH, &format!("{rt}/{id}"))
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string())
    }

    /// The number of versions in a type's history.
    pub async fn history_total(&self, rt: &str) -> i64 {
        let bundle: Value = self
            .get(&format!("{rt}/_history?_count=1"))
            .await
            .json()
            .await
            .expect("a Bundle");
        bundle["total"].as_i64().expect("history has a total")
    }
}

// Reading searchset Bundles (search, `$everything`).

/// `{type}/{id}` of a resource the server returned.
pub fn key(resource: &Value) -> String {
    let rt = resource["resourceType"]
        .as_str()
        .unwrap_or_else(|| panic!("no resourceType: {resource}"));
    format!("{rt}/{}", id_of(resource))
}

/// The sorted `{type}/{id}` of `resources`: what a search is expected to match.
pub fn keys(resources: &[&Value]) -> Vec<String> {
    let mut keys: Vec<String> = resources.iter().map(|r| key(r)).collect();
    keys.sort();
    keys
}

/// The entries of `bundle` whose `search.mode` is `mode`, in the server's order.
pub fn entries<'a>(bundle: &'a Value, mode: &'a str) -> impl Iterator<Item = &'a Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |entry| entry["search"]["mode"] == mode)
}

/// `{type}/{id}` of what a page matched, in the server's order.
pub fn matches_in_order(bundle: &Value) -> Vec<String> {
    entries(bundle, "match")
        .map(|entry| key(&entry["resource"]))
        .collect()
}

/// `{type}/{id}` of what a page matched, sorted.
pub fn matches(bundle: &Value) -> Vec<String> {
    let mut matches = matches_in_order(bundle);
    matches.sort();
    matches
}

/// `{type}/{id}` of what a page included, sorted and not deduplicated (so a repeat shows).
pub fn included(bundle: &Value) -> Vec<String> {
    let mut included: Vec<String> = entries(bundle, "include")
        .map(|entry| key(&entry["resource"]))
        .collect();
    included.sort();
    included
}

/// The URL of the link of `bundle` with `relation`, if any.
pub fn link<'a>(bundle: &'a Value, relation: &str) -> Option<&'a str> {
    bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
}

/// `GET` of an absolute URL (a Bundle link); the status and the JSON body.
pub async fn get_url(app: &TestApp, url: &str) -> (u16, Value) {
    let response = app.client.get(url).send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// `POST {base}` of a batch or transaction Bundle.
pub async fn post_bundle(app: &TestApp, bundle: &Value) -> Response {
    app.client
        .post(&app.base)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .expect("sent")
}

/// `GET {base}/{query}`; panics unless the answer is a 200 searchset Bundle.
pub async fn search(app: &TestApp, query: &str) -> Value {
    let response = app.get(query).await;
    let status = response.status();
    let bundle: Value = response.json().await.expect("JSON");
    assert_eq!(status, 200, "{query}: {bundle}");
    assert_eq!(bundle["resourceType"], "Bundle", "{query}: {bundle}");
    assert_eq!(bundle["type"], "searchset", "{query}: {bundle}");
    bundle
}

/// The AuditEvents of `GET {base}/AuditEvent?{query}`.
pub async fn audit_events(app: &TestApp, query: &str) -> Vec<Value> {
    let bundle = search(app, &format!("AuditEvent?{query}")).await;
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry["resource"].clone())
        .collect()
}

/// How many resources `GET {base}/{query}` matches, asked as `_summary=count` with
/// `_total=accurate`; `query` already has a `?`.
pub async fn search_total(app: &TestApp, query: &str) -> i64 {
    let bundle = search(app, &format!("{query}&_total=accurate&_summary=count")).await;
    bundle["total"].as_i64().expect("a total")
}

/// The sorted `{type}/{id}` of what `GET {base}/{query}` matched.
pub async fn search_ids(app: &TestApp, query: &str) -> Vec<String> {
    matches(&search(app, query).await)
}

/// `GET {base}/{query}` that must fail; the status and the OperationOutcome.
pub async fn search_error(app: &TestApp, query: &str) -> (u16, Value) {
    let response = app.get(query).await;
    let status = response.status().as_u16();
    let outcome: Value = response.json().await.expect("JSON");
    assert_operation_outcome(&outcome);
    (status, outcome)
}

/// The `expression`s of an OperationOutcome's issues, joined for easy assertions.
pub fn expressions(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|issue| issue["expression"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `id` of a resource returned by the server; panics if it has none.
pub fn id_of(resource: &Value) -> &str {
    resource["id"].as_str().expect("the resource has an id")
}

/// Panics unless `outcome` is an OperationOutcome whose issues all carry a severity and a code.
pub fn assert_operation_outcome(outcome: &Value) {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    let issues = outcome["issue"].as_array().expect("issue is an array");
    assert!(!issues.is_empty(), "an OperationOutcome needs an issue");
    for issue in issues {
        assert!(
            issue["severity"].is_string(),
            "issue without severity: {issue}"
        );
        assert!(issue["code"].is_string(), "issue without code: {issue}");
    }
}

// SMART App Launch as a browser drives it: apps and users registered in the authorization
// tables, the authorize request, the login, second-factor, picker and consent forms, the
// redirect back to the app and the token request.

/// The redirect URI of every app the tests register. Nothing listens there: the browser stops
/// at the redirect and reads the code from its `Location`.
pub const APP_REDIRECT: &str = "https://app.example/callback";

/// The password of every user the tests register.
pub const PASSWORD: &str = "correct horse battery staple";

/// A PKCE pair (RFC 7636): a random verifier and its `S256` challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// The `code_verifier` the token request sends.
    pub verifier: String,
    /// The `code_challenge` the authorization request sends.
    pub challenge: String,
}

impl Pkce {
    /// A new random pair.
    pub fn new() -> Self {
        let verifier = smart_auth::secret::random_token(32);
        let challenge = s256(&verifier);
        Self {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// base64url(SHA-256(`text`)) without padding: the `S256` challenge of a verifier.
pub fn s256(text: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Where the browser ended up after an authorization request.
#[derive(Debug)]
pub enum Landing {
    /// Redirected back to the app: the parameters of the redirect (`code` and `state`, or
    /// `error`, `error_description` and `state`).
    App(HashMap<String, String>),
    /// Stopped on a page: an error page, or a form the flow was not told how to answer (a
    /// patient picker without [`AppLaunch::patient`], a second-factor form without a code, a
    /// login form shown again because the password was wrong).
    Page {
        /// The HTTP status of the page.
        status: u16,
        /// The page.
        html: String,
    },
}

impl Landing {
    /// The redirect's parameters; panics on a page.
    pub fn redirect(self) -> HashMap<String, String> {
        match self {
            Self::App(params) => params,
            Self::Page { status, html } => panic!("stopped on a page ({status}): {html}"),
        }
    }

    /// The page's status and HTML; panics on a redirect.
    pub fn page(self) -> (u16, String) {
        match self {
            Self::Page { status, html } => (status, html),
            Self::App(params) => panic!("redirected back to the app: {params:?}"),
        }
    }
}

/// A token endpoint's answer.
#[derive(Debug)]
pub struct TokenResponse {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The JSON body.
    pub body: Value,
}

impl TokenResponse {
    /// The `access_token`; panics unless the response was a success.
    pub fn access_token(&self) -> String {
        assert_eq!(self.status, 200, "token response: {}", self.body);
        self.body["access_token"]
            .as_str()
            .expect("an access_token")
            .to_owned()
    }

    /// The `refresh_token`; panics if there is none.
    pub fn refresh_token(&self) -> String {
        self.body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no refresh_token: {}", self.body))
            .to_owned()
    }

    /// The OAuth `error` code of a refusal.
    pub fn error(&self) -> String {
        oauth_error(&self.body)
    }
}

/// One run of the authorization code flow by an app and a user, as a browser drives it: every
/// field has a working default (see [`AppLaunch::new`]); a test changes what it is about.
#[derive(Debug, Clone)]
pub struct AppLaunch {
    /// The app's `client_id`.
    pub client_id: String,
    /// The `redirect_uri` sent (and repeated at the token endpoint).
    pub redirect_uri: String,
    /// The scopes asked for.
    pub scope: String,
    /// The `state`.
    pub state: String,
    /// The `aud`.
    pub aud: String,
    /// The `launch` of an EHR launch.
    pub launch: Option<String>,
    /// The OpenID Connect `nonce`.
    pub nonce: Option<String>,
    /// The PKCE pair; its challenge is sent unless [`Self::params`] is told otherwise.
    pub pkce: Pkce,
    /// Authorization parameters to replace (`Some`) or leave out (`None`), applied last.
    pub overrides: Vec<(String, Option<String>)>,
    /// `POST /authorize` (a form) rather than `GET`.
    pub post: bool,
    /// Who signs in.
    pub username: String,
    /// Their password.
    pub password: String,
    /// The code typed on the second-factor form, if it comes.
    pub totp_code: Option<String>,
    /// The patient chosen on the picker, if it comes.
    pub patient: Option<String>,
    /// The encounter chosen on the encounter picker, if it comes (`""` for none).
    pub encounter: Option<String>,
    /// The scopes left ticked on the consent page; all of those shown when `None`.
    pub keep: Option<Vec<String>>,
    /// Press "Deny" on the consent page.
    pub deny: bool,
}

impl AppLaunch {
    /// `username` (whose password is [`PASSWORD`]) authorizes app `client_id` for `scope`:
    /// a `GET` authorization request to this server's FHIR base with a fresh PKCE S256 pair,
    /// redirecting to [`APP_REDIRECT`], every scope kept on the consent page.
    pub fn new(app: &TestApp, client_id: &str, username: &str, scope: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            redirect_uri: APP_REDIRECT.to_owned(),
            scope: scope.to_owned(),
            state: smart_auth::secret::random_token(12),
            aud: app.base.clone(),
            launch: None,
            nonce: None,
            pkce: Pkce::new(),
            overrides: Vec::new(),
            post: false,
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            totp_code: None,
            patient: None,
            encounter: None,
            keep: None,
            deny: false,
        }
    }

    /// Replaces the authorization parameter `name` with `value`.
    pub fn with_param(mut self, name: &str, value: &str) -> Self {
        self.overrides
            .push((name.to_owned(), Some(value.to_owned())));
        self
    }

    /// Leaves the authorization parameter `name` out.
    pub fn without_param(mut self, name: &str) -> Self {
        self.overrides.push((name.to_owned(), None));
        self
    }

    /// The parameters of the authorization request.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = [
            ("response_type", "code"),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("aud", &self.aud),
            ("code_challenge", &self.pkce.challenge),
            ("code_challenge_method", "S256"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        for (name, value) in [("launch", &self.launch), ("nonce", &self.nonce)] {
            if let Some(value) = value {
                params.push((name.to_owned(), value.clone()));
            }
        }
        for (name, value) in &self.overrides {
            params.retain(|(n, _)| n != name);
            if let Some(value) = value {
                params.push((name.clone(), value.clone()));
            }
        }
        params
    }

    /// Sends the authorization request and answers each page as told, up to the redirect back
    /// to the app or the first page it cannot answer.
    pub async fn authorize(&self, app: &TestApp) -> Landing {
        let browser = browser();
        let url = format!("{}/authorize", app.auth);
        let request = if self.post {
            browser.post(&url).form(&self.params())
        } else {
            browser.get(&url).query(&self.params())
        };
        let mut response = request.send().await.expect("authorize sent");
        let mut answered = Vec::new();
        loop {
            let status = response.status().as_u16();
            if status == 303 || status == 302 {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .expect("a redirect has a Location")
                    .to_owned();
                return Landing::App(self.redirect_params(&location));
            }
            let html = response.text().await.expect("a page");
            let form = form_action(&html);
            let fields = match form.as_deref() {
                Some(step) if status == 200 && !answered.contains(&step.to_owned()) => {
                    self.answer(step, &html)
                }
                _ => None,
            };
            let (Some(step), Some(fields)) = (form, fields) else {
                return Landing::Page { status, html };
            };
            response = browser
                .post(format!("{}/{step}", app.auth))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(encode_form(&fields))
                .send()
                .await
                .expect("form posted");
            answered.push(step);
        }
    }

    /// The fields this flow posts on the page whose form goes to `step`, or `None` if it has
    /// no answer.
    fn answer(&self, step: &str, html: &str) -> Option<Vec<(String, String)>> {
        let request = ("request".to_owned(), hidden_request(html)?);
        let field = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        Some(match step {
            "login" => vec![
                request,
                field("username", &self.username),
                field("password", &self.password),
            ],
            "second-factor" => vec![request, field("code", self.totp_code.as_deref()?)],
            "patient" => vec![
                request,
                field("action", "choose"),
                field("patient", self.patient.as_deref()?),
            ],
            "encounter" => vec![
                request,
                field("encounter", self.encounter.as_deref().unwrap_or("")),
            ],
            "consent" => {
                let mut fields = vec![
                    request,
                    field("decision", if self.deny { "deny" } else { "allow" }),
                ];
                let kept = match &self.keep {
                    Some(kept) => kept.clone(),
                    None => consent_scopes(html),
                };
                fields.extend(kept.iter().map(|scope| field("scope", scope)));
                fields
            }
            _ => return None,
        })
    }

    /// The query of a redirect to this app's redirect URI; panics if it goes elsewhere.
    fn redirect_params(&self, location: &str) -> HashMap<String, String> {
        let query = location
            .strip_prefix(&self.redirect_uri)
            .and_then(|rest| rest.strip_prefix('?'))
            .unwrap_or_else(|| panic!("a redirect away from the app: {location}"));
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    /// Authorizes and returns the code; panics unless the app got one with its `state`.
    pub async fn code(&self, app: &TestApp) -> String {
        let params = self.authorize(app).await.redirect();
        assert_eq!(params.get("state"), Some(&self.state), "state: {params:?}");
        params
            .get("code")
            .unwrap_or_else(|| panic!("no code: {params:?}"))
            .clone()
    }

    /// Exchanges `code` at the token endpoint with this flow's redirect URI and verifier.
    pub async fn exchange(&self, app: &TestApp, code: &str) -> TokenResponse {
        self.exchange_with(app, code, &self.pkce.verifier).await
    }

    /// Exchanges `code` with the given `code_verifier` (left out when empty).
    pub async fn exchange_with(&self, app: &TestApp, code: &str, verifier: &str) -> TokenResponse {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("client_id", &self.client_id),
        ];
        if !verifier.is_empty() {
            form.push(("code_verifier", verifier));
        }
        token_request(app, &form, None).await
    }

    /// The whole flow: authorize, then exchange the code; panics unless tokens come back.
    pub async fn run(&self, app: &TestApp) -> TokenResponse {
        let code = self.code(app).await;
        let response = self.exchange(app, &code).await;
        assert_eq!(response.status, 200, "token response: {}", response.body);
        response
    }
}

/// The `error` of an OAuth error response (RFC 6749 §5.2); `smart_tokens::oauth_errors_are_json`
/// checks the format itself.
pub fn oauth_error(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// A browser that does not follow redirects, so that each `Location` can be read.
pub fn browser() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// `POST {auth}/token` with `form`, and HTTP Basic credentials `(id, secret)` if given.
pub async fn token_request(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> TokenResponse {
    let mut request = Client::new().post(app.token_url()).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.expect("token request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("a JSON token response");
    TokenResponse {
        status,
        headers,
        body,
    }
}

/// `application/x-www-form-urlencoded` of `fields`, repeated names kept.
fn encode_form(fields: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// Where the page's last form posts (`login`, `second-factor`, `patient`, `encounter`,
/// `consent`), if it has one.
pub fn form_action(html: &str) -> Option<String> {
    let start = html.rfind("<form method=\"post\" action=\"")? + 28;
    let end = start + html[start..].find('"')?;
    Some(html[start..end].to_owned())
}

/// The hidden `request` field of a page's form.
pub fn hidden_request(html: &str) -> Option<String> {
    attribute_values(html, "name=\"request\" value=\"")
        .into_iter()
        .next()
}

/// The values of the consent page's scope checkboxes, as shown (all ticked).
pub fn consent_scopes(html: &str) -> Vec<String> {
    attribute_values(html, "name=\"scope\" value=\"")
}

/// The values of the picker's radio buttons (`patient` or `encounter`), in page order.
pub fn picker_choices(html: &str, name: &str) -> Vec<String> {
    attribute_values(html, &format!("name=\"{name}\" value=\""))
        .into_iter()
        .filter(|value| !value.is_empty())
        .collect()
}

/// Every attribute value that follows `prefix` in `html`, unescaped.
fn attribute_values(html: &str, prefix: &str) -> Vec<String> {
    html.match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = &html[at + prefix.len()..];
            rest.find('"').map(|end| unescape(&rest[..end]))
        })
        .collect()
}

/// Undoes the HTML escaping of the authorization server's pages.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The claims of a JWT, read without checking its signature.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The run's signing key: for tests that forge a token the server would sign itself.
pub fn signing_key() -> SigningKey {
    SIGNING_KEY.clone()
}

impl TestApp {
    /// Registers a public app (PKCE only) that may have `scope`, redirecting to
    /// [`APP_REDIRECT`].
    pub async fn register_public_app(&self, client_id: &str, scope: &str) {
        self.register_client(AuthClient {
            client_id: client_id.to_owned(),
            name: format!("App {client_id}"),
            kind: ClientKind::Public,
            secret_hash: None,
            jwks: None,
            jwks_url: None,
            redirect_uris: vec![APP_REDIRECT.to_owned()],
            scope: ScopeSet::parse(scope),
            launch_url: None,
            origins: Vec::new(),
            created_at: 0,
        })
        .await;
    }

    /// Registers a client.
    pub async fn register_client(&self, client: AuthClient) {
        let store = self.auth_store().await;
        store
            .insert_client(&client)
            .await
            .expect("the client is registered");
        store.close().await;
    }

    /// Registers a user whose password is [`PASSWORD`], who is `fhir_user` (e.g.
    /// `Practitioner/1`), with a TOTP second factor if given.
    pub async fn register_user(
        &self,
        username: &str,
        fhir_user: Option<&str>,
        totp: Option<&smart_auth::totp::TotpSecret>,
    ) {
        let store = self.auth_store().await;
        store
            .insert_user(&smart_auth::store::User {
                username: username.to_owned(),
                password_hash: smart_auth::secret::hash_password(PASSWORD).expect("a hash"),
                fhir_user: fhir_user.map(str::to_owned),
                totp_secret: totp.map(smart_auth::totp::TotpSecret::to_base32),
                upstream_sub: None,
                created_at: 0,
            })
            .await
            .expect("the user is registered");
        store.close().await;
    }

    /// Mints an EHR launch (`POST {auth}/launch`) with the backend token; the `launch` value.
    pub async fn ehr_launch(&self, context: &Value) -> String {
        let response = self
            .client
            .post(format!("{}/launch", self.auth))
            .json(context)
            .send()
            .await
            .expect("launch sent");
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(status, 201, "launch: {body}");
        body["launch"].as_str().expect("a launch").to_owned()
    }
}
