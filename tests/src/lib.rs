//! Helpers shared by the end-to-end tests: a real server on a random port, on its own fresh
//! database, a real HTTP client, and readers of the searchset Bundles it answers with.
//!
//! The database is SQLite (a new file per test) unless `TELEMED_TEST_DATABASE_URL` names a
//! PostgreSQL server, on which each test creates a database of its own and drops it afterwards.
//!
//! Authorization is on, as in production: the client of a [`TestApp`] carries a SMART Backend
//! Services token with `system/*.cruds`, obtained over HTTP by the real client_credentials
//! flow, and [`TestApp::anonymous`] is a client without one. One signing key and one client key
//! serve every test of a run (RSA key generation takes seconds in a debug build); each test's
//! database gets them before its server starts.

use std::sync::LazyLock;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
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
            let name = format!("telemed_test_{}", uuid::Uuid::new_v4().simple());
            let mut connection = sqlx::PgConnection::connect(&admin_url)
                .await
                .expect("TELEMED_TEST_DATABASE_URL is reachable");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut connection)
                .await
                .expect("CREATE DATABASE");
            let (prefix, _) = admin_url
                .rsplit_once('/')
                .expect("TELEMED_TEST_DATABASE_URL ends with /database");
            let url = format!("{prefix}/{name}");
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
    let mut config = Config::for_tests(url);
    config.max_db_connections = 4;
    configure(&mut config);
    seed_auth(&config.database_url).await;
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
            Database::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
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
