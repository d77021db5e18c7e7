//! `POST /auth/launch`: an EHR (or telemed's own app) mints the opaque `launch` value of an
//! EHR launch (http://hl7.org/fhir/smart-app-launch/app-launch.html#launch-app-ehr-launch),
//! bound to a patient and/or encounter. The caller presents an access token that may read
//! what the launch names; the answer is the `launch` value and, for a registered app with a
//! launch URL, the URL to open.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client_auth::internal;
use super::{AuthEvent, AuthServer, ClientAddress, OAuthError, no_store, now, respond};
use crate::secret::{random_token, token_digest};
use crate::store::LaunchContext;

/// How long a launch value can be used.
const LAUNCH_SECONDS: i64 = 5 * 60;

/// The body of a launch request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchRequest {
    #[serde(default)]
    patient: Option<String>,
    #[serde(default)]
    encounter: Option<String>,
    #[serde(default, rename = "fhirContext")]
    fhir_context: Vec<Value>,
    #[serde(default)]
    need_patient_banner: Option<bool>,
    #[serde(default)]
    intent: Option<String>,
    /// The app to launch: its launch URL comes back filled in.
    #[serde(default)]
    client_id: Option<String>,
}

/// `POST /auth/launch` with a JSON body.
pub async fn post_launch(
    State(server): State<Arc<AuthServer>>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    respond(launch(&server, &headers, &body, address).await)
}

async fn launch(
    server: &AuthServer,
    headers: &HeaderMap,
    body: &[u8],
    address: Option<String>,
) -> Result<Response, OAuthError> {
    server.sync_revocations().await;
    let principal = server.authenticate(headers).map_err(|e| {
        OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
            .with_challenge(e.challenge())
    })?;
    let request: LaunchRequest = serde_json::from_slice(body).map_err(|e| {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body must be a JSON launch request: {e}"),
        )
    })?;
    let is_id = |id: &Option<String>| {
        id.as_ref().is_none_or(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
    };
    if !is_id(&request.patient) || !is_id(&request.encounter) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "patient and encounter are FHIR logical ids",
        ));
    }
    if request.patient.is_none() && request.encounter.is_none() && request.fhir_context.is_empty() {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a launch names a patient, an encounter or a fhirContext",
        ));
    }
    let context = LaunchContext {
        patient: request.patient,
        encounter: request.encounter,
        fhir_context: request.fhir_context,
        need_patient_banner: request.need_patient_banner.unwrap_or(false),
        intent: request.intent,
    };
    let allowed = server
        .directory
        .may_launch(&principal, &context)
        .await
        .map_err(internal)?;
    let event = AuthEvent {
        kind: "launch",
        success: allowed,
        client_id: Some(principal.client_id().to_owned()),
        username: Some(principal.claims.sub.clone()),
        fhir_user: principal.fhir_user().map(str::to_owned),
        patient: context.patient.clone(),
        address,
        detail: (!allowed).then(|| "access_denied".to_owned()),
    };
    server.audit(event).await?;
    if !allowed {
        return Err(OAuthError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "this token may not read what the launch names",
        ));
    }
    let launch_url = match &request.client_id {
        None => None,
        Some(client_id) => {
            let client = server
                .store
                .client(client_id)
                .await
                .map_err(internal)?
                .ok_or_else(|| {
                    OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "unknown client_id",
                    )
                })?;
            client.launch_url
        }
    };
    let launch = random_token(24);
    server
        .store
        .insert_launch(
            &token_digest(&launch),
            &context,
            principal.client_id(),
            now() + LAUNCH_SECONDS,
        )
        .await
        .map_err(internal)?;
    let mut body = json!({ "launch": launch, "expires_in": LAUNCH_SECONDS });
    if let Some(url) = launch_url {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("iss", &server.config.fhir_base)
            .append_pair("launch", &launch)
            .finish();
        let separator = if url.contains('?') { '&' } else { '?' };
        body["launch_url"] = json!(format!("{url}{separator}{query}"));
    }
    Ok(no_store(
        (StatusCode::CREATED, axum::Json(body)).into_response(),
    ))
}
