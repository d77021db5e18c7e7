//! `POST /auth/token`: an authorization code, a refresh token or a backend service's client
//! credentials exchanged for an access token (RFC 6749 §4.1.3, §6, §4.4; SMART App Launch
//! 2.2 "Obtain access token" and Backend Services).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::client_auth::{authenticate, internal};
use super::{AuthEvent, AuthServer, ClientAddress, OAuthError, no_store, now, respond};
use crate::pkce::verify_s256;
use crate::scope::{Context, Scope, ScopeSet};
use crate::secret::{random_token, token_digest};
use crate::store::{ClientKind, GrantInfo, LaunchContext, Redemption, Refresh};
use crate::token::{AccessClaims, IdClaims, sign_access_token, sign_id_token};

/// The form of a token request, each parameter at most once (RFC 6749 §3.2).
pub(super) fn form_map(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut map = HashMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        if map.insert(name.into_owned(), value.into_owned()).is_some() {
            return Err(OAuthError::invalid_request(
                "a parameter appears more than once",
            ));
        }
    }
    Ok(map)
}

/// The body must be a form (`application/x-www-form-urlencoded`).
pub(super) fn check_form(headers: &HeaderMap) -> Result<(), OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if is_form {
        Ok(())
    } else {
        Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ))
    }
}

/// `POST /auth/token`. Every answer, tokens or refusal, is audited first.
pub async fn post_token(
    State(server): State<Arc<AuthServer>>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = token(&server, &headers, &body, &address).await;
    let result = match result {
        Ok(response) => Ok(response),
        Err(error) => {
            let form = form_map(&body).unwrap_or_default();
            let kind = match form.get("grant_type").map(String::as_str) {
                Some("refresh_token") => "refresh",
                _ => "token",
            };
            let event = AuthEvent {
                kind,
                success: false,
                client_id: form.get("client_id").cloned(),
                address,
                detail: Some(error.code().to_owned()),
                ..AuthEvent::default()
            };
            match server.audit(event).await {
                Ok(()) => Err(error),
                Err(failed) => Err(failed),
            }
        }
    };
    with_cors(&server, &headers, respond(result)).await
}

async fn token(
    server: &AuthServer,
    headers: &HeaderMap,
    body: &[u8],
    address: &Option<String>,
) -> Result<Response, OAuthError> {
    check_form(headers)?;
    let form = form_map(body)?;
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
    match grant_type {
        "authorization_code" => authorization_code(server, headers, &form, address).await,
        "refresh_token" => refresh_token(server, headers, &form, address).await,
        "client_credentials" => client_credentials(server, headers, &form, address).await,
        "" => Err(invalid_request("grant_type is missing")),
        _ => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or client_credentials",
        )),
    }
}

fn invalid_request(description: &str) -> OAuthError {
    OAuthError::invalid_request(description)
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, OAuthError> {
    form.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid_request(&format!("{name} is missing")))
}

/// An authorization code, its redirect URI and PKCE verifier, for tokens.
async fn authorization_code(
    server: &AuthServer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    address: &Option<String>,
) -> Result<Response, OAuthError> {
    let client = authenticate(server, headers, form, false).await?;
    let code = required(form, "code")?;
    let redirect_uri = required(form, "redirect_uri")?;
    let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
    let now = now();
    let sid = random_token(16);
    let info = match server
        .store
        .redeem_code(&token_digest(code), &client.client_id, &sid, now)
        .await
        .map_err(internal)?
    {
        Redemption::Fresh(info) => *info,
        Redemption::Reused { sid } => {
            // RFC 6749 §4.1.2: a code seen twice revokes what its first use gave.
            server.revoke_grant(&sid).await.map_err(internal)?;
            return Err(invalid_grant(
                "the code was used before; the tokens it gave are revoked",
            ));
        }
        Redemption::Invalid => {
            return Err(invalid_grant(
                "the code is unknown, expired or not this client's",
            ));
        }
    };
    if info.redirect_uri != redirect_uri {
        return Err(invalid_grant(
            "redirect_uri differs from the authorization request's",
        ));
    }
    if !verify_s256(verifier, &info.code_challenge) {
        return Err(invalid_grant(
            "code_verifier is missing or does not match the code_challenge",
        ));
    }
    server
        .store
        .insert_grant(&sid, &info.grant, now)
        .await
        .map_err(internal)?;
    let scope = ScopeSet::parse(&info.grant.scope);
    let refresh = refresh_life(server, &scope).map(|life| (life, &scope));
    let issued = Issued {
        kind: "token",
        address,
    };
    issue(server, issued, &info.grant, &sid, &scope, refresh, now).await
}

/// A refresh token, rotated: the old one stops working, a new one comes back.
async fn refresh_token(
    server: &AuthServer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    address: &Option<String>,
) -> Result<Response, OAuthError> {
    let client = authenticate(server, headers, form, false).await?;
    let token = required(form, "refresh_token")?;
    let digest = token_digest(token);
    // Whose token it is matters before it is used: another client's token is not spent.
    let sid = server
        .store
        .refresh_token_grant(&digest)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid_grant("the refresh token is unknown or expired"))?;
    let grant = server
        .store
        .grant(&sid)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid_grant("the refresh token is unknown or expired"))?;
    if grant.info.client_id != client.client_id {
        return Err(invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    let now = now();
    let token_scope = match server
        .store
        .use_refresh_token(&digest, now)
        .await
        .map_err(internal)?
    {
        Refresh::Fresh { scope, .. } => ScopeSet::parse(&scope),
        Refresh::Reused { sid } => {
            server.revoke_grant(&sid).await.map_err(internal)?;
            return Err(invalid_grant(
                "the refresh token was used before; its grant is revoked",
            ));
        }
        Refresh::Invalid => {
            return Err(invalid_grant(
                "the refresh token is unknown, expired or revoked",
            ));
        }
    };
    let scope = match form.get("scope").filter(|s| !s.trim().is_empty()) {
        None => token_scope.clone(),
        Some(asked) => {
            let asked = ScopeSet::parse(asked);
            if asked.iter().any(|scope| !token_scope.covers(scope)) {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "a refresh may narrow the scope, not widen it",
                ));
            }
            asked
        }
    };
    // The new refresh token carries the scope of the one it replaces (RFC 6749 §6), however
    // narrow the access token asked for.
    let refresh = refresh_life(server, &token_scope).map(|life| (life, &token_scope));
    let issued = Issued {
        kind: "refresh",
        address,
    };
    issue(server, issued, &grant.info, &sid, &scope, refresh, now).await
}

/// A backend service's client credentials, for a short-lived `system/` token.
async fn client_credentials(
    server: &AuthServer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    address: &Option<String>,
) -> Result<Response, OAuthError> {
    let client = authenticate(server, headers, form, true).await?;
    if client.kind == ClientKind::Public {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_credentials needs a confidential client",
        ));
    }
    let asked = ScopeSet::parse(required(form, "scope")?);
    let scope: ScopeSet = asked
        .within(&client.scope)
        .iter()
        .filter(|scope| {
            scope
                .as_resource()
                .is_some_and(|r| r.context == Context::System)
        })
        .cloned()
        .collect();
    if scope.is_empty() {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "none of the scopes asked for is a system/ scope this client may have",
        ));
    }
    let info = GrantInfo {
        client_id: client.client_id.clone(),
        username: None,
        fhir_user: None,
        scope: scope.to_string(),
        context: LaunchContext::default(),
        nonce: None,
        auth_time: None,
    };
    let now = now();
    let sid = random_token(16);
    server
        .store
        .insert_grant(&sid, &info, now)
        .await
        .map_err(internal)?;
    let issued = Issued {
        kind: "token",
        address,
    };
    issue(server, issued, &info, &sid, &scope, None, now).await
}

/// What the audit record of an issued token says beyond the grant.
struct Issued<'a> {
    /// `token` or `refresh`.
    kind: &'static str,
    address: &'a Option<String>,
}

/// How long a refresh token issued under `scope` lives, if one is issued at all.
fn refresh_life(server: &AuthServer, scope: &ScopeSet) -> Option<i64> {
    if scope.contains(&Scope::OfflineAccess) {
        Some(server.config.offline_refresh_seconds)
    } else if scope.contains(&Scope::OnlineAccess) {
        Some(server.config.online_refresh_seconds)
    } else {
        None
    }
}

/// The token response: an access token for `scope` under grant `sid`, the launch context,
/// an id_token when `openid` was granted with a user, and, given `(life, scope)`, a refresh
/// token living that many seconds for that scope.
async fn issue(
    server: &AuthServer,
    issued: Issued<'_>,
    grant: &GrantInfo,
    sid: &str,
    scope: &ScopeSet,
    refresh: Option<(i64, &ScopeSet)>,
    now: i64,
) -> Result<Response, OAuthError> {
    let config = &server.config;
    let backend = grant.username.is_none();
    let lifetime = if backend {
        config.backend_token_seconds
    } else {
        config.access_token_seconds
    }
    .min(crate::MAX_ACCESS_TOKEN_SECONDS);
    let context = &grant.context;
    let claims = AccessClaims {
        iss: config.issuer.clone(),
        sub: grant
            .username
            .clone()
            .unwrap_or_else(|| grant.client_id.clone()),
        aud: config.fhir_base.clone(),
        exp: now + lifetime,
        iat: now,
        jti: random_token(16),
        client_id: grant.client_id.clone(),
        scope: scope.to_string(),
        patient: context.patient.clone(),
        encounter: context.encounter.clone(),
        fhir_user: grant.fhir_user.clone(),
        sid: Some(sid.to_owned()),
    };
    let mut body = Map::new();
    body.insert(
        "access_token".into(),
        Value::String(sign(server, move |keys| sign_access_token(keys, &claims)).await?),
    );
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("expires_in".into(), json!(lifetime));
    body.insert("scope".into(), Value::String(scope.to_string()));
    if let Some(patient) = &context.patient {
        body.insert("patient".into(), json!(patient));
    }
    if let Some(encounter) = &context.encounter {
        body.insert("encounter".into(), json!(encounter));
    }
    if !context.fhir_context.is_empty() {
        body.insert("fhirContext".into(), json!(context.fhir_context));
    }
    if !backend {
        body.insert(
            "need_patient_banner".into(),
            json!(context.need_patient_banner),
        );
        body.insert(
            "smart_style_url".into(),
            json!(config.endpoint("smart-style.json")),
        );
    }
    if let Some(intent) = &context.intent {
        body.insert("intent".into(), json!(intent));
    }
    if scope.contains(&Scope::OpenId)
        && let Some(username) = &grant.username
    {
        let fhir_user = grant
            .fhir_user
            .as_ref()
            .filter(|_| scope.contains(&Scope::FhirUser) || scope.contains(&Scope::Profile))
            .map(|reference| format!("{}/{reference}", config.fhir_base));
        let claims = IdClaims {
            iss: config.issuer.clone(),
            sub: username.clone(),
            aud: grant.client_id.clone(),
            exp: now + lifetime,
            iat: now,
            fhir_user,
            nonce: grant.nonce.clone(),
            auth_time: grant.auth_time,
        };
        body.insert(
            "id_token".into(),
            Value::String(sign(server, move |keys| sign_id_token(keys, &claims)).await?),
        );
    }
    if let Some((life, refresh_scope)) = refresh {
        let token = random_token(32);
        server
            .store
            .insert_refresh_token(
                &token_digest(&token),
                sid,
                &refresh_scope.to_string(),
                now + life,
            )
            .await
            .map_err(internal)?;
        body.insert("refresh_token".into(), Value::String(token));
    }
    server
        .audit(AuthEvent {
            kind: issued.kind,
            success: true,
            client_id: Some(grant.client_id.clone()),
            username: grant.username.clone(),
            fhir_user: grant.fhir_user.clone(),
            patient: context.patient.clone(),
            address: issued.address.clone(),
            detail: None,
        })
        .await?;
    Ok(no_store(
        (StatusCode::OK, axum::Json(Value::Object(body))).into_response(),
    ))
}

/// Signs off the async threads: an RSA signature takes milliseconds.
async fn sign(
    server: &AuthServer,
    signer: impl FnOnce(&crate::keys::KeyRing) -> Result<String, crate::CryptoError> + Send + 'static,
) -> Result<String, OAuthError> {
    let keys = server.keys.clone();
    tokio::task::spawn_blocking(move || signer(&keys))
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// CORS for a browser app calling the token endpoint: only from an origin some client
/// registered.
async fn with_cors(server: &AuthServer, headers: &HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = allowed_origin(server, headers).await {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The request's `Origin`, if a registered client lists it.
pub async fn allowed_origin(server: &AuthServer, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    server
        .origin_allowed(None, text)
        .await
        .then(|| origin.clone())
}

/// `OPTIONS /auth/token`: the CORS preflight.
pub async fn preflight(State(server): State<Arc<AuthServer>>, headers: HeaderMap) -> Response {
    let Some(origin) = allowed_origin(&server, &headers).await else {
        return StatusCode::FORBIDDEN.into_response();
    };
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type"),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            ),
            (header::VARY, HeaderValue::from_static("Origin")),
        ],
    )
        .into_response()
}
