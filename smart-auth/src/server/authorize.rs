//! The authorization endpoint and the pages behind it
//! (http://hl7.org/fhir/smart-app-launch/app-launch.html#obtain-authorization-code).
//!
//! `GET` or `POST /auth/authorize` checks the request, stores it under a random id and asks
//! the user to sign in; each form then posts that id back with one step's answer: password,
//! second factor (for users who have one), patient (a standalone launch asking for
//! `launch/patient`, or any `patient/` scope, by a user who is not themselves a Patient),
//! encounter (a standalone launch asking for `launch/encounter`), and consent, where the user
//! may untick scopes. Then the browser goes back to the app with a one-minute, one-use code.
//!
//! Until the client and its redirect URI are known good, errors are shown on a page; after,
//! they go back to the app as `error=…&state=…` (RFC 6749 §4.1.2.1).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::pages::{self, error_page};
use super::{AuthEvent, AuthServer, ClientAddress, now};
use crate::pkce::is_valid_challenge;
use crate::scope::{Context, Scope, ScopeSet};
use crate::secret::{hash_password, random_token, token_digest, verify_password};
use crate::store::{Client, CodeInfo, GrantInfo, LaunchContext, User};
use crate::totp::TotpSecret;

/// How long a user has to get through the pages.
const REQUEST_SECONDS: i64 = 15 * 60;
/// How long a code lives.
const CODE_SECONDS: i64 = 60;
/// How many patients the picker lists.
const PICKER_SIZE: usize = 25;

/// An authorization request between its steps: what the app asked for and what the user has
/// decided so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    client_id: String,
    redirect_uri: String,
    state: String,
    code_challenge: String,
    #[serde(default)]
    nonce: Option<String>,
    /// What the app asked for, within what the client may have.
    scope: String,
    /// The context of an EHR launch.
    #[serde(default)]
    launch: Option<LaunchContext>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    fhir_user: Option<String>,
    #[serde(default)]
    auth_time: Option<i64>,
    #[serde(default)]
    second_factor_done: bool,
    #[serde(default)]
    patient: Option<String>,
    #[serde(default)]
    encounter: Option<String>,
    #[serde(default)]
    encounter_decided: bool,
    /// A login at the upstream OpenID provider in progress.
    #[serde(default)]
    pub(super) upstream: Option<super::upstream::UpstreamLogin>,
}

impl Pending {
    fn scopes(&self) -> ScopeSet {
        ScopeSet::parse(&self.scope)
    }

    /// A patient must be chosen: a standalone `launch/patient`, or `patient/` scopes, with no
    /// patient from an EHR launch.
    fn needs_patient(&self) -> bool {
        let scopes = self.scopes();
        let from_launch = self.launch.as_ref().and_then(|l| l.patient.as_ref());
        from_launch.is_none()
            && self.patient.is_none()
            && (scopes.contains(&Scope::LaunchPatient) || scopes.has_context(Context::Patient))
    }

    fn needs_encounter(&self) -> bool {
        let from_launch = self.launch.as_ref().and_then(|l| l.encounter.as_ref());
        from_launch.is_none()
            && !self.encounter_decided
            && self.scopes().contains(&Scope::LaunchEncounter)
    }
}

/// `GET /auth/authorize`.
pub async fn get_authorize(
    State(server): State<Arc<AuthServer>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    begin(&server, params).await
}

/// `POST /auth/authorize` (the `authorize-post` capability): the same parameters as a form.
pub async fn post_authorize(
    State(server): State<Arc<AuthServer>>,
    body: axum::body::Bytes,
) -> Response {
    let params = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    begin(&server, params).await
}

async fn begin(server: &AuthServer, params: Vec<(String, String)>) -> Response {
    let mut map: HashMap<String, String> = HashMap::new();
    for (name, value) in params {
        if map.insert(name.clone(), value).is_some() {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("The parameter {name} appears more than once."),
            );
        }
    }
    let get = |name: &str| map.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = get("client_id") else {
        return error_page(StatusCode::BAD_REQUEST, "The request names no client_id.");
    };
    let client = match server.store.client(client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "The app is not registered."),
        Err(error) => return internal_page(error),
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The request names no redirect_uri.",
        );
    };
    if !client.redirect_uris.iter().any(|uri| uri == redirect_uri) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is not one the app registered.",
        );
    }
    let state = get("state");
    let back =
        |error: &str, description: &str| redirect_error(redirect_uri, error, description, state);
    if get("response_type") != Some("code") {
        return back("unsupported_response_type", "response_type must be code");
    }
    let Some(state) = state else {
        return back("invalid_request", "state is required");
    };
    // SMART requires `aud` of every request for FHIR access; a plain OpenID Connect sign-in
    // (only identity scopes, as when telemed is another service's login) names no FHIR server.
    let asked = ScopeSet::parse(get("scope").unwrap_or(""));
    let wants_fhir = asked.resource_scopes().next().is_some()
        || asked.contains(&Scope::Launch)
        || asked.contains(&Scope::LaunchPatient)
        || asked.contains(&Scope::LaunchEncounter);
    match get("aud") {
        Some(aud) if aud.trim_end_matches('/') == server.config.fhir_base => {}
        Some(_) => return back("invalid_request", "aud is not this server's FHIR base URL"),
        None if wants_fhir => {
            return back("invalid_request", "aud (the FHIR base URL) is required");
        }
        None => {}
    }
    if get("code_challenge_method") != Some("S256") {
        return back(
            "invalid_request",
            "PKCE is required with code_challenge_method S256",
        );
    }
    let Some(code_challenge) = get("code_challenge").filter(|c| is_valid_challenge(c)) else {
        return back(
            "invalid_request",
            "code_challenge is missing or not a base64url SHA-256",
        );
    };
    let scope = asked.within(&client.scope);
    if scope.resource_scopes().next().is_none() && !scope.contains(&Scope::OpenId) {
        return back(
            "invalid_scope",
            "none of the scopes asked for is one this app may have",
        );
    }
    let launch = match get("launch") {
        None => None,
        Some(launch) => match server.store.launch(&token_digest(launch), now()).await {
            Ok(Some(context)) => Some(context),
            Ok(None) => return back("invalid_request", "the launch is unknown or expired"),
            Err(error) => return internal_page(error),
        },
    };
    if launch.is_none() && scope.contains(&Scope::Launch) {
        return back(
            "invalid_request",
            "the launch scope needs the launch parameter of an EHR launch",
        );
    }
    let pending = Pending {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        state: state.to_owned(),
        code_challenge: code_challenge.to_owned(),
        nonce: get("nonce").map(str::to_owned),
        scope: scope.to_string(),
        launch,
        username: None,
        fhir_user: None,
        auth_time: None,
        second_factor_done: false,
        patient: None,
        encounter: None,
        encounter_decided: false,
        upstream: None,
    };
    let id = random_token(24);
    if let Err(error) = save(server, &id, &pending).await {
        return internal_page(error);
    }
    login_page(server, &client, &id, None)
}

/// The login form, with the upstream provider's button when one is configured.
fn login_page(
    server: &AuthServer,
    client: &Client,
    request: &str,
    error: Option<&str>,
) -> Response {
    let upstream = server.config.upstream.as_ref().map(|u| u.name.as_str());
    pages::login(
        &server.config.display_name,
        &client.name,
        request,
        upstream,
        error,
        &client.origins,
    )
}

/// The error redirect back to the app.
fn redirect_error(
    redirect_uri: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
) -> Response {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = state {
        params.push(("state", state));
    }
    redirect(redirect_uri, &params)
}

/// A 303 to `uri` with `params` added to its query.
fn redirect(uri: &str, params: &[(&str, &str)]) -> Response {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let separator = if uri.contains('?') { '&' } else { '?' };
    let location = format!("{uri}{separator}{query}");
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            super::no_store((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
        }
        Err(_) => error_page(StatusCode::BAD_REQUEST, "The redirect_uri cannot be used."),
    }
}

pub(super) fn internal_page(error: anyhow::Error) -> Response {
    tracing::error!(error = %error, "authorization server failure");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server failed. Try again later.",
    )
}

async fn save(server: &AuthServer, id: &str, pending: &Pending) -> anyhow::Result<()> {
    let value = serde_json::to_value(pending)?;
    server
        .store
        .put_request(
            &token_digest(id),
            &pending.client_id,
            &value,
            now() + REQUEST_SECONDS,
        )
        .await
}

/// A step's form: the request it belongs to, and that request and its client, loaded.
pub(super) struct Step {
    pub(super) id: String,
    pub(super) pending: Pending,
    pub(super) client: Client,
    form: HashMap<String, String>,
}

fn expired() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "This sign-in has expired or is unknown.",
    )
}

async fn load(server: &AuthServer, body: &[u8]) -> Result<Step, Response> {
    let form = page_form(body)
        .ok_or_else(|| error_page(StatusCode::BAD_REQUEST, "The form is malformed."))?;
    let id = form.get("request").cloned().ok_or_else(expired)?;
    let mut step = load_request(server, &id).await?;
    step.form = form;
    Ok(step)
}

/// The authorization request `id` and its client.
pub(super) async fn load_request(server: &AuthServer, id: &str) -> Result<Step, Response> {
    let id = id.to_owned();
    let value = server
        .store
        .request(&token_digest(&id), now())
        .await
        .map_err(internal_page)?
        .ok_or_else(expired)?;
    let pending: Pending = serde_json::from_value(value).map_err(|e| internal_page(e.into()))?;
    let client = server
        .store
        .client(&pending.client_id)
        .await
        .map_err(internal_page)?
        .ok_or_else(|| error_page(StatusCode::BAD_REQUEST, "The app is no longer registered."))?;
    Ok(Step {
        id,
        pending,
        client,
        form: HashMap::new(),
    })
}

/// Saves the request and sends the browser to `url` (the upstream provider).
pub(super) async fn redirect_to(server: &AuthServer, step: Step, url: &str) -> Response {
    if let Err(error) = save(server, &step.id, &step.pending).await {
        return internal_page(error);
    }
    match HeaderValue::from_str(url) {
        Ok(location) => {
            super::no_store((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
        }
        Err(_) => internal_page(anyhow::anyhow!(
            "the upstream authorization URL is not a header"
        )),
    }
}

/// Audits a failed login and shows the login form again with `message`.
pub(super) async fn refuse_login(
    server: &AuthServer,
    step: Step,
    event: AuthEvent,
    message: &str,
) -> Response {
    if let Err(response) = audit_page(server, event).await {
        return response;
    }
    if let Err(error) = save(server, &step.id, &step.pending).await {
        return internal_page(error);
    }
    login_page(server, &step.client, &step.id, Some(message))
}

/// The fields of a page's form, each at most once, but the consent page's `scope` checkboxes:
/// those repeat, one per scope kept, and [`post_consent`] reads them from the body itself.
fn page_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let mut form = HashMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        if name == "scope" {
            continue;
        }
        if form.insert(name.into_owned(), value.into_owned()).is_some() {
            return None;
        }
    }
    Some(form)
}

/// The user's record, unless they are gone; the pending request must have signed in.
async fn signed_in_user(server: &AuthServer, pending: &Pending) -> Result<User, Response> {
    let username = pending
        .username
        .as_deref()
        .ok_or_else(|| error_page(StatusCode::BAD_REQUEST, "Sign in first."))?;
    server
        .store
        .user(username)
        .await
        .map_err(internal_page)?
        .ok_or_else(|| error_page(StatusCode::BAD_REQUEST, "The user no longer exists."))
}

/// Records an authorization event of the pages; the page shown next depends on it.
async fn audit_page(server: &AuthServer, event: AuthEvent) -> Result<(), Response> {
    server.audit(event).await.map_err(|_| {
        error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server failed. Try again later.",
        )
    })
}

/// `POST /auth/login`: username and password.
pub async fn post_login(
    State(server): State<Arc<AuthServer>>,
    ClientAddress(address): ClientAddress,
    body: axum::body::Bytes,
) -> Response {
    let step = match load(&server, &body).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let username = step.form.get("username").cloned().unwrap_or_default();
    let password = step.form.get("password").cloned().unwrap_or_default();
    let user = match server.store.user(&username).await {
        Ok(user) => user,
        Err(error) => return internal_page(error),
    };
    // Hash even for an unknown user, so the answer takes as long either way.
    let hash = user
        .as_ref()
        .map_or_else(dummy_hash, |user| user.password_hash.clone());
    let good = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|_| good) else {
        let event = AuthEvent {
            kind: "login",
            success: false,
            client_id: Some(step.client.client_id.clone()),
            username: Some(username),
            address,
            detail: Some("wrong username or password".to_owned()),
            ..AuthEvent::default()
        };
        return refuse_login(&server, step, event, "The username or password is wrong.").await;
    };
    signed_in(&server, step, user, address, false).await
}

/// The user has proved who they are (by password, or at the upstream provider when
/// `upstream`): audited, remembered with the request, and on to the next step.
pub(super) async fn signed_in(
    server: &AuthServer,
    mut step: Step,
    user: User,
    address: Option<String>,
    upstream: bool,
) -> Response {
    let is_practitioner = user
        .fhir_user
        .as_deref()
        .is_some_and(|r| r.starts_with("Practitioner/"));
    if !upstream
        && is_practitioner
        && server.config.practitioners_need_totp
        && user.totp_secret.is_none()
    {
        let event = AuthEvent {
            kind: "login",
            success: false,
            client_id: Some(step.client.client_id.clone()),
            username: Some(user.username.clone()),
            fhir_user: user.fhir_user.clone(),
            address,
            detail: Some("a practitioner without a second factor".to_owned()),
            ..AuthEvent::default()
        };
        return refuse_login(
            server,
            step,
            event,
            "Practitioners must have a second factor. Ask your administrator to set one up.",
        )
        .await;
    }
    // With a second factor to come, this is the password's part only; that is audited on
    // its own.
    let second_factor_done = upstream || user.totp_secret.is_none();
    let event = AuthEvent {
        kind: "login",
        success: true,
        client_id: Some(step.client.client_id.clone()),
        username: Some(user.username.clone()),
        fhir_user: user.fhir_user.clone(),
        address,
        detail: Some(if upstream { "upstream" } else { "password" }.to_owned())
            .filter(|_| upstream || !second_factor_done),
        ..AuthEvent::default()
    };
    if let Err(response) = audit_page(server, event).await {
        return response;
    }
    step.pending.username = Some(user.username.clone());
    step.pending.fhir_user = user.fhir_user.clone();
    step.pending.auth_time = Some(now());
    step.pending.second_factor_done = second_factor_done;
    if let Some(patient) = user
        .fhir_user
        .as_deref()
        .and_then(|r| r.strip_prefix("Patient/"))
    {
        // A patient acts for themselves: their own record is the patient in context.
        step.pending.patient = Some(patient.to_owned());
    }
    advance(server, step).await
}

/// An Argon2id hash of a random password, made once, checked against when the username is
/// unknown.
fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token(16)).unwrap_or_default())
        .clone()
}

/// `POST /auth/second-factor`: the TOTP code.
pub async fn post_second_factor(
    State(server): State<Arc<AuthServer>>,
    ClientAddress(address): ClientAddress,
    body: axum::body::Bytes,
) -> Response {
    let mut step = match load(&server, &body).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let user = match signed_in_user(&server, &step.pending).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let code = step.form.get("code").map(String::as_str).unwrap_or("");
    let secret = user
        .totp_secret
        .as_deref()
        .and_then(|s| TotpSecret::from_base32(s).ok());
    let accepted = match secret.and_then(|s| s.verify(code.trim(), now())) {
        Some(time_step) => {
            let time_step = i64::try_from(time_step).unwrap_or(i64::MAX);
            match server.store.use_totp_step(&user.username, time_step).await {
                Ok(fresh) => fresh,
                Err(error) => return internal_page(error),
            }
        }
        None => false,
    };
    let event = AuthEvent {
        kind: "second-factor",
        success: accepted,
        client_id: Some(step.client.client_id.clone()),
        username: Some(user.username.clone()),
        fhir_user: user.fhir_user.clone(),
        address,
        detail: (!accepted).then(|| "wrong or reused code".to_owned()),
        ..AuthEvent::default()
    };
    if let Err(response) = audit_page(&server, event).await {
        return response;
    }
    if !accepted {
        return pages::second_factor(
            &step.id,
            Some("The code is wrong or was used already."),
            &step.client.origins,
        );
    }
    step.pending.second_factor_done = true;
    advance(&server, step).await
}

/// `POST /auth/patient`: search the picker, or choose a patient.
pub async fn post_patient(
    State(server): State<Arc<AuthServer>>,
    body: axum::body::Bytes,
) -> Response {
    let mut step = match load(&server, &body).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    if !ready_for_context(&step.pending) {
        return error_page(StatusCode::BAD_REQUEST, "Sign in first.");
    }
    let user = step.pending.fhir_user.clone();
    if step.form.get("action").map(String::as_str) == Some("search") {
        let search = step.form.get("search").cloned().unwrap_or_default();
        return patient_picker(&server, &step, &search, None).await;
    }
    let chosen = step.form.get("patient").cloned().unwrap_or_default();
    let choice = match server.directory.patient(user.as_deref(), &chosen).await {
        Ok(choice) => choice,
        Err(error) => return internal_page(error),
    };
    if choice.is_none() {
        return patient_picker(
            &server,
            &step,
            "",
            Some("Choose one of the patients listed."),
        )
        .await;
    }
    step.pending.patient = Some(chosen);
    advance(&server, step).await
}

async fn patient_picker(
    server: &AuthServer,
    step: &Step,
    search: &str,
    error: Option<&str>,
) -> Response {
    let user = step.pending.fhir_user.as_deref();
    match server
        .directory
        .find_patients(user, search, PICKER_SIZE)
        .await
    {
        Ok(choices) => {
            pages::patient_picker(&step.id, search, &choices, error, &step.client.origins)
        }
        Err(error) => internal_page(error),
    }
}

/// `POST /auth/encounter`: an encounter of the chosen patient, or none.
pub async fn post_encounter(
    State(server): State<Arc<AuthServer>>,
    body: axum::body::Bytes,
) -> Response {
    let mut step = match load(&server, &body).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let Some(patient) = current_patient(&step.pending) else {
        return error_page(StatusCode::BAD_REQUEST, "Choose a patient first.");
    };
    if !ready_for_context(&step.pending) {
        return error_page(StatusCode::BAD_REQUEST, "Sign in first.");
    }
    let chosen = step.form.get("encounter").cloned().unwrap_or_default();
    if !chosen.is_empty() {
        let user = step.pending.fhir_user.as_deref();
        let encounters = match server
            .directory
            .encounters(user, &patient, usize::MAX)
            .await
        {
            Ok(encounters) => encounters,
            Err(error) => return internal_page(error),
        };
        if !encounters.iter().any(|e| e.id == chosen) {
            return pages::encounter_picker(
                &step.id,
                &encounters,
                Some("Choose one of the encounters listed."),
                &step.client.origins,
            );
        }
        step.pending.encounter = Some(chosen);
    }
    step.pending.encounter_decided = true;
    advance(&server, step).await
}

/// `POST /auth/consent`: the scopes the user keeps, or a refusal.
pub async fn post_consent(
    State(server): State<Arc<AuthServer>>,
    ClientAddress(address): ClientAddress,
    body: axum::body::Bytes,
) -> Response {
    let step = match load(&server, &body).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let pending = &step.pending;
    if !ready_for_context(pending) || pending.needs_patient() || pending.needs_encounter() {
        return error_page(StatusCode::BAD_REQUEST, "Finish the earlier steps first.");
    }
    if let Err(error) = server.store.delete_request(&token_digest(&step.id)).await {
        return internal_page(error);
    }
    let state = Some(pending.state.as_str());
    let allowed = step.form.get("decision").map(String::as_str) == Some("allow");
    let event = AuthEvent {
        kind: "consent",
        success: allowed,
        client_id: Some(pending.client_id.clone()),
        username: pending.username.clone(),
        fhir_user: pending.fhir_user.clone(),
        patient: current_patient(pending),
        address,
        detail: (!allowed).then(|| "access_denied".to_owned()),
    };
    if let Err(response) = audit_page(&server, event).await {
        return response;
    }
    if !allowed {
        return redirect_error(
            &pending.redirect_uri,
            "access_denied",
            "the user did not allow access",
            state,
        );
    }
    // Checkboxes arrive as repeated `scope` fields, which the step's form leaves out.
    let ticked: ScopeSet = form_urlencoded::parse(&body)
        .filter(|(name, _)| name == "scope")
        .map(|(_, value)| Scope::parse(&value))
        .collect();
    let kept = ticked.within(&pending.scopes());
    if kept.is_empty() {
        return redirect_error(
            &pending.redirect_uri,
            "access_denied",
            "the user allowed none of the scopes",
            state,
        );
    }
    let launch = pending.launch.clone().unwrap_or_default();
    let ehr_launch = pending.launch.is_some();
    let patient = launch.patient.clone().or_else(|| pending.patient.clone());
    let context = LaunchContext {
        patient: patient.filter(|_| {
            ehr_launch || kept.contains(&Scope::LaunchPatient) || kept.has_context(Context::Patient)
        }),
        encounter: launch.encounter.clone().or_else(|| {
            pending
                .encounter
                .clone()
                .filter(|_| kept.contains(&Scope::LaunchEncounter))
        }),
        fhir_context: launch.fhir_context.clone(),
        // An EHR shows its own banner unless the launch says otherwise; a standalone app
        // must show which patient it is about.
        need_patient_banner: if ehr_launch {
            launch.need_patient_banner
        } else {
            true
        },
        intent: launch.intent.clone(),
    };
    let grant = GrantInfo {
        client_id: pending.client_id.clone(),
        username: pending.username.clone(),
        fhir_user: pending.fhir_user.clone(),
        scope: kept.to_string(),
        context,
        nonce: pending.nonce.clone(),
        auth_time: pending.auth_time,
    };
    let code = random_token(32);
    let info = CodeInfo {
        redirect_uri: pending.redirect_uri.clone(),
        code_challenge: pending.code_challenge.clone(),
        grant,
    };
    if let Err(error) = server
        .store
        .insert_code(
            &token_digest(&code),
            &pending.client_id,
            &info,
            now() + CODE_SECONDS,
        )
        .await
    {
        return internal_page(error);
    }
    redirect(
        &pending.redirect_uri,
        &[("code", &code), ("state", &pending.state)],
    )
}

/// Signed in, and past the second factor if the user has one.
fn ready_for_context(pending: &Pending) -> bool {
    pending.username.is_some() && pending.second_factor_done
}

fn current_patient(pending: &Pending) -> Option<String> {
    pending
        .launch
        .as_ref()
        .and_then(|l| l.patient.clone())
        .or_else(|| pending.patient.clone())
}

/// Saves the request and shows its next page.
async fn advance(server: &AuthServer, step: Step) -> Response {
    if let Err(error) = save(server, &step.id, &step.pending).await {
        return internal_page(error);
    }
    let pending = &step.pending;
    let frame = &step.client.origins;
    if !pending.second_factor_done {
        return pages::second_factor(&step.id, None, frame);
    }
    if pending.needs_patient() {
        return patient_picker(server, &step, "", None).await;
    }
    let user = pending.fhir_user.as_deref();
    if pending.needs_encounter() {
        let Some(patient) = current_patient(pending) else {
            return error_page(StatusCode::BAD_REQUEST, "Choose a patient first.");
        };
        return match server
            .directory
            .encounters(user, &patient, PICKER_SIZE)
            .await
        {
            Ok(choices) => pages::encounter_picker(&step.id, &choices, None, frame),
            Err(error) => internal_page(error),
        };
    }
    let patient = match current_patient(pending) {
        Some(id) => match server.directory.patient(user, &id).await {
            Ok(Some(choice)) => Some(choice),
            // An EHR launch names a patient whom the user who signed in here may not choose
            // (another patient; a practitioner outside their care): whoever minted the launch,
            // it gives this user no token for that record.
            Ok(None) => {
                if let Err(error) = server.store.delete_request(&token_digest(&step.id)).await {
                    return internal_page(error);
                }
                return redirect_error(
                    &pending.redirect_uri,
                    "access_denied",
                    "the user who signed in may not open the record of the launch's patient",
                    Some(&pending.state),
                );
            }
            Err(error) => return internal_page(error),
        },
        None => None,
    };
    let scopes: Vec<Scope> = pending.scopes().iter().cloned().collect();
    pages::consent(
        &step.client.name,
        &step.id,
        &scopes,
        patient.as_ref(),
        frame,
    )
}
