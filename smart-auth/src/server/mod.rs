//! The authorization server (SMART App Launch 2.2) as an axum router, and the bearer-token
//! check the FHIR server runs on every request.
//!
//! | endpoint | module |
//! | --- | --- |
//! | `GET {fhir}/.well-known/smart-configuration`, `GET /auth/.well-known/openid-configuration`, `GET /auth/jwks` | [`discovery`] |
//! | `GET`/`POST /auth/authorize`, then the login, second-factor, patient, encounter and consent forms | [`authorize`] (pages in [`pages`]) |
//! | `POST /auth/token` (authorization_code, refresh_token, client_credentials) | [`token_endpoint`] |
//! | `POST /auth/introspect`, `POST /auth/revoke` | [`introspect`] |
//! | `POST /auth/launch` (an EHR mints a launch context) | [`launch`] |
//! | `GET /auth/upstream/start`, `GET /auth/upstream/callback` (login at a hospital's OpenID provider) | [`upstream`] |
//!
//! [`AuthServer::authenticate`] turns an `Authorization: Bearer` header into a [`Principal`]:
//! a verified, unrevoked access token for this FHIR base and its parsed scopes. What the
//! principal may then do with FHIR data (scopes, the patient compartment, care teams) is the
//! FHIR server's to enforce; it reaches FHIR data for the pickers and the launch check through
//! the [`Directory`] it gives this server.

pub mod authorize;
pub mod client_auth;
pub mod discovery;
pub mod introspect;
pub mod launch;
pub mod pages;
pub mod token_endpoint;
pub mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use serde_json::json;

use crate::keys::{KeyRing, SigningKey};
use crate::scope::ScopeSet;
use crate::store::AuthStore;
use crate::token::{AccessClaims, TokenError, TokenVerifier};

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How often, at most, a node reads the revocations that other nodes of the same database
/// recorded.
const REVOCATION_SYNC_MILLIS: i64 = 1000;

/// How the authorization server is set up.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The FHIR base URL, e.g. `https://example.org/fhir`: the only `aud` accepted, and the
    /// audience of every access token.
    pub fhir_base: String,
    /// The authorization server's own base URL, e.g. `https://example.org/auth`: the issuer of
    /// its tokens, under which its endpoints live.
    pub issuer: String,
    /// Life of an access token issued to an app, seconds (SMART: at most an hour).
    pub access_token_seconds: i64,
    /// Life of an access token issued to a backend service, seconds (SMART: at most 5 minutes).
    pub backend_token_seconds: i64,
    /// Life of an `offline_access` refresh token, seconds.
    pub offline_refresh_seconds: i64,
    /// Life of an `online_access` refresh token, seconds.
    pub online_refresh_seconds: i64,
    /// Whether practitioners (users whose `fhirUser` is a Practitioner) must have a second
    /// factor: such a user without one cannot log in.
    pub practitioners_need_totp: bool,
    /// The name shown on the login and consent pages.
    pub display_name: String,
    /// A hospital's own OpenID Connect provider that users may sign in with.
    pub upstream: Option<upstream::UpstreamConfig>,
}

impl AuthConfig {
    /// The defaults for a FHIR server at `fhir_base` whose authorization server is at `issuer`.
    pub fn new(fhir_base: impl Into<String>, issuer: impl Into<String>) -> Self {
        Self {
            fhir_base: fhir_base.into(),
            issuer: issuer.into(),
            access_token_seconds: crate::MAX_ACCESS_TOKEN_SECONDS,
            backend_token_seconds: 300,
            offline_refresh_seconds: 90 * 24 * 3600,
            online_refresh_seconds: 12 * 3600,
            practitioners_need_totp: false,
            display_name: "telemed".to_owned(),
            upstream: None,
        }
    }

    /// The URL of an endpoint of this server, e.g. `endpoint("token")`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.issuer)
    }
}

/// A patient or encounter as a picker lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The logical id.
    pub id: String,
    /// What the user sees: a name and birth date, a date and type.
    pub label: String,
}

/// What the authorization server needs from the FHIR data, given by the FHIR server (and by a
/// stand-in in this crate's own tests).
pub trait Directory: Send + Sync {
    /// Patients that `user` (a `fhirUser` reference, if any) may choose, whose name or
    /// identifier starts with `text` (all of them, up to `limit`, for an empty `text`).
    fn find_patients<'a>(
        &'a self,
        user: Option<&'a str>,
        text: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Choice>>>;

    /// The patient `id`, if `user` may choose it.
    fn patient<'a>(
        &'a self,
        user: Option<&'a str>,
        id: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<Choice>>>;

    /// The encounters of a patient that `user` may choose, newest first.
    fn encounters<'a>(
        &'a self,
        user: Option<&'a str>,
        patient: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Choice>>>;

    /// Whether `principal` may read every resource a launch context names (so that nobody
    /// mints a launch for a patient they cannot see).
    fn may_launch<'a>(
        &'a self,
        principal: &'a Principal,
        context: &'a crate::store::LaunchContext,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
}

/// An authorization event for the audit trail: a login, a second factor, a consent, a token
/// issued or refused, a refresh, a revocation, a launch.
#[derive(Debug, Clone, Default)]
pub struct AuthEvent {
    /// `login`, `second-factor`, `consent`, `token`, `refresh`, `revoke` or `launch`.
    pub kind: &'static str,
    /// Whether it succeeded.
    pub success: bool,
    /// The client concerned, if known.
    pub client_id: Option<String>,
    /// The user concerned (for a failed login, the username tried).
    pub username: Option<String>,
    /// The user as a FHIR reference.
    pub fhir_user: Option<String>,
    /// The patient in the context granted.
    pub patient: Option<String>,
    /// The address the request came from.
    pub address: Option<String>,
    /// Why it failed: an OAuth error code or a short reason, never a secret.
    pub detail: Option<String>,
}

/// Where the authorization server's events are audited (the FHIR server's audit trail, or a
/// stand-in in this crate's tests). A response leaves only once its event is recorded.
pub trait AuditSink: Send + Sync {
    /// Records `event` durably.
    fn record(&self, event: AuthEvent) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// The address a request came from, when the server was started with connection info.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip().to_string()),
        ))
    }
}

/// The authenticated caller of a FHIR request: a verified access token and its scopes.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's claims.
    pub claims: Arc<AccessClaims>,
    /// The granted scopes, parsed.
    pub scopes: Arc<ScopeSet>,
}

impl Principal {
    /// The patient in context (`launch/patient`), if any.
    pub fn patient(&self) -> Option<&str> {
        self.claims.patient.as_deref()
    }

    /// The user as a FHIR reference (`Practitioner/1`), if the token has one.
    pub fn fhir_user(&self) -> Option<&str> {
        self.claims.fhir_user.as_deref()
    }

    /// The client the token was issued to.
    pub fn client_id(&self) -> &str {
        &self.claims.client_id
    }
}

/// Why a bearer token was not accepted: a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    /// No `Authorization: Bearer …` header.
    #[error("this request needs an access token (Authorization: Bearer …)")]
    Missing,
    /// The token failed a check.
    #[error("the access token is not valid: {0}")]
    Invalid(TokenError),
    /// The token, or the grant it belongs to, was revoked.
    #[error("the access token was revoked")]
    Revoked,
}

impl Unauthorized {
    /// The `WWW-Authenticate` challenge for this failure (RFC 6750 §3).
    pub fn challenge(&self) -> HeaderValue {
        let value = match self {
            Self::Missing => "Bearer realm=\"telemed\"".to_owned(),
            other => format!(
                "Bearer realm=\"telemed\", error=\"invalid_token\", error_description=\"{}\"",
                other.to_string().replace('"', "'")
            ),
        };
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer"))
    }
}

/// Access tokens (by jti) and grants (by sid) revoked before their tokens expire, each with
/// the time after which it need not be remembered. Checked on every request, after the
/// signature.
#[derive(Debug, Default)]
pub struct Revocations {
    revoked: RwLock<HashMap<String, i64>>,
}

impl Revocations {
    /// Whether `token_id` is revoked.
    pub fn contains(&self, token_id: &str) -> bool {
        self.revoked
            .read()
            .is_ok_and(|revoked| revoked.contains_key(token_id))
    }

    /// Records a revocation until `until`.
    pub fn insert(&self, token_id: &str, until: i64) {
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.insert(token_id.to_owned(), until);
        }
    }

    /// Forgets revocations that have run out at `now`.
    pub fn prune(&self, now: i64) {
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.retain(|_, until| *until > now);
        }
    }
}

/// The authorization server: its configuration, storage, keys and the FHIR data it may ask.
pub struct AuthServer {
    /// How it is set up.
    pub config: AuthConfig,
    /// Clients, users and the state of authorizations.
    pub store: AuthStore,
    /// The keys that sign tokens.
    pub keys: KeyRing,
    /// The per-request check of access tokens, with its cache.
    pub verifier: TokenVerifier,
    /// What has been revoked.
    pub revocations: Revocations,
    /// When [`Self::sync_revocations`] last read the stored revocations (Unix milliseconds).
    revocations_synced: AtomicI64,
    /// The FHIR data behind the pickers and the launch check.
    pub directory: Arc<dyn Directory>,
    /// Fetches clients' JWK Sets registered by URL.
    pub http: reqwest::Client,
    /// Where events are audited.
    pub audit: Arc<dyn AuditSink>,
    /// The browser origins each client registered, as last read.
    origins: RwLock<Origins>,
    /// The upstream OpenID provider's metadata, once discovered.
    upstream: upstream::Upstream,
}

/// Every client's registered origins, with when they were read.
#[derive(Default)]
struct Origins {
    read_at: Option<std::time::Instant>,
    by_client: HashMap<String, Vec<String>>,
}

/// How long the registered origins are trusted before they are read again (clients are
/// registered by `telemed client add`, possibly in another process).
const ORIGINS_FRESH: Duration = Duration::from_secs(30);

impl AuthServer {
    /// Opens the authorization tables on `database_url`, loads (or, on first start, makes) the
    /// signing key and the revocations still in force.
    pub async fn open(
        config: AuthConfig,
        database_url: &str,
        directory: Arc<dyn Directory>,
        audit: Arc<dyn AuditSink>,
    ) -> anyhow::Result<Self> {
        let store = AuthStore::open(database_url).await?;
        let keys = load_keys(&store).await?;
        let verifier = TokenVerifier::new(&keys, config.issuer.clone(), config.fhir_base.clone());
        let revocations = Revocations::default();
        for (token_id, until) in store.revocations(now()).await? {
            revocations.insert(&token_id, until);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            config,
            store,
            keys,
            verifier,
            revocations,
            revocations_synced: AtomicI64::new(now_millis()),
            directory,
            http,
            audit,
            origins: RwLock::new(Origins::default()),
            upstream: upstream::Upstream::default(),
        })
    }

    /// Whether a browser at `origin` may call this server: with a token of `client_id`, if
    /// that client registered the origin; without one (a CORS preflight, the token endpoint),
    /// if any client did.
    pub async fn origin_allowed(&self, client_id: Option<&str>, origin: &str) -> bool {
        let stale = self.origins.read().map_or(true, |o| {
            o.read_at.is_none_or(|at| at.elapsed() > ORIGINS_FRESH)
        });
        if stale && let Ok(clients) = self.store.clients().await {
            let by_client = clients
                .into_iter()
                .map(|client| (client.client_id, client.origins))
                .collect();
            if let Ok(mut origins) = self.origins.write() {
                *origins = Origins {
                    read_at: Some(std::time::Instant::now()),
                    by_client,
                };
            }
        }
        let Ok(origins) = self.origins.read() else {
            return false;
        };
        match client_id {
            Some(client_id) => origins
                .by_client
                .get(client_id)
                .is_some_and(|list| list.iter().any(|o| o == origin)),
            None => origins
                .by_client
                .values()
                .any(|list| list.iter().any(|o| o == origin)),
        }
    }

    /// Records an authorization event; a response that depends on it fails if it cannot be
    /// recorded.
    pub async fn audit(&self, event: AuthEvent) -> Result<(), OAuthError> {
        self.audit.record(event).await.map_err(OAuthError::internal)
    }

    /// The principal of an `Authorization` header: a bearer access token that verifies, is
    /// for this FHIR base, and is not revoked.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Unauthorized> {
        let token = bearer_token(headers).ok_or(Unauthorized::Missing)?;
        self.principal(token)
    }

    /// The principal of a bearer token.
    pub fn principal(&self, token: &str) -> Result<Principal, Unauthorized> {
        let claims = self
            .verifier
            .verify(token, now())
            .map_err(Unauthorized::Invalid)?;
        if self.revocations.contains(&claims.jti)
            || claims
                .sid
                .as_deref()
                .is_some_and(|sid| self.revocations.contains(sid))
        {
            return Err(Unauthorized::Revoked);
        }
        let scopes = Arc::new(ScopeSet::parse(&claims.scope));
        Ok(Principal { claims, scopes })
    }

    /// Adds the revocations that other nodes of the same database recorded to this node's,
    /// at most once a second: a token revoked through any node is refused by every node
    /// within about a second (by the node that revoked it, at once). Called before each
    /// authentication; a failure to read keeps the revocations known so far.
    pub async fn sync_revocations(&self) {
        let now_ms = now_millis();
        let last = self.revocations_synced.load(Ordering::Relaxed);
        // One request of the many arriving at once does the reading.
        if now_ms - last < REVOCATION_SYNC_MILLIS
            || self
                .revocations_synced
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match self.store.revocations(now()).await {
            Ok(rows) => {
                for (token_id, until) in rows {
                    self.revocations.insert(&token_id, until);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the stored revocations"),
        }
    }

    /// Revokes an access token (by jti) until it would have expired.
    pub async fn revoke_token_id(&self, jti: &str, until: i64) -> anyhow::Result<()> {
        self.store.revoke_token_id(jti, until).await?;
        self.revocations.insert(jti, until);
        Ok(())
    }

    /// Revokes a grant: its refresh tokens and every access token issued under it.
    pub async fn revoke_grant(&self, sid: &str) -> anyhow::Result<()> {
        let now = now();
        let until = now
            + self
                .config
                .access_token_seconds
                .max(crate::MAX_ACCESS_TOKEN_SECONDS);
        self.store.revoke_grant(sid, now, until).await?;
        self.revocations.insert(sid, until);
        Ok(())
    }

    /// Housekeeping, run now and then: expired rows and revocations go.
    pub async fn purge_expired(&self) -> anyhow::Result<u64> {
        let now = now();
        self.revocations.prune(now);
        self.store.purge_expired(now).await
    }
}

/// The signing keys: the active one and those retired less than a token's life ago. A
/// database without a key gets one (if two nodes start at once, the first insert wins and both
/// use it).
async fn load_keys(store: &AuthStore) -> anyhow::Result<KeyRing> {
    let mut rows = store.signing_keys().await?;
    if rows.is_empty() {
        let key = tokio::task::spawn_blocking(SigningKey::generate).await??;
        store
            .insert_first_signing_key(key.kid(), &key.to_pkcs8_pem()?, now())
            .await?;
        rows = store.signing_keys().await?;
    }
    let mut keys = Vec::with_capacity(rows.len());
    for (_, pem, _) in &rows {
        keys.push(SigningKey::from_pkcs8_pem(pem)?);
    }
    let mut keys = keys.into_iter();
    let active = keys
        .next()
        .ok_or_else(|| anyhow::anyhow!("no signing key"))?;
    Ok(KeyRing::new(active, keys.collect()))
}

/// The token of an `Authorization: Bearer …` header (the scheme is case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An OAuth error (RFC 6749 §5.2): answered as JSON `{error, error_description}`, never
/// cached, with a `WWW-Authenticate` challenge where one is due.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    challenge: Option<HeaderValue>,
}

impl OAuthError {
    /// An error with its status, code (`invalid_request`, `invalid_grant`, …) and description.
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            challenge: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// The OAuth error code (`invalid_grant`, …).
    pub fn code(&self) -> &'static str {
        self.error
    }

    /// The same error with a `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: HeaderValue) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// A failure of the server's own (the database, a signature): logged, answered without
    /// detail.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        tracing::error!(error = %error.into(), "authorization server failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the authorization server failed; try again",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "error_description": self.description });
        let mut response = no_store((self.status, axum::Json(body)).into_response());
        if let Some(challenge) = self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The response of a handler that may fail with an OAuth error.
pub fn respond(result: Result<Response, OAuthError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Marks a response as not to be cached (`Cache-Control: no-store`, `Pragma: no-cache`), as
/// every response carrying a token or a form must be.
pub fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The authorization server's routes under `/auth` (to be nested there), plus the SMART
/// discovery document, which belongs under the FHIR base: see
/// [`discovery::get_smart_configuration`].
pub fn router<S: Clone + Send + Sync + 'static>(server: Arc<AuthServer>) -> Router<S> {
    Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(discovery::get_openid_configuration),
        )
        .route("/jwks", get(discovery::get_jwks))
        .route("/smart-style.json", get(discovery::get_smart_style))
        .route(
            "/authorize",
            get(authorize::get_authorize).post(authorize::post_authorize),
        )
        .route("/login", post(authorize::post_login))
        .route("/second-factor", post(authorize::post_second_factor))
        .route("/patient", post(authorize::post_patient))
        .route("/encounter", post(authorize::post_encounter))
        .route("/consent", post(authorize::post_consent))
        .route(
            "/token",
            post(token_endpoint::post_token).options(token_endpoint::preflight),
        )
        .route("/introspect", post(introspect::post_introspect))
        .route("/revoke", post(introspect::post_revoke))
        .route("/launch", post(launch::post_launch))
        .route("/upstream/start", get(upstream::get_start))
        .route("/upstream/callback", get(upstream::get_callback))
        .with_state(server)
}
