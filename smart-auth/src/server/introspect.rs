//! Token introspection (RFC 7662, with SMART's fields) and revocation (RFC 7009).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::client_auth::{authenticate, internal};
use super::token_endpoint::{check_form, form_map};
use super::{
    AuthEvent, AuthServer, ClientAddress, OAuthError, bearer_token, no_store, now, respond,
};
use crate::scope::ScopeSet;
use crate::secret::token_digest;

/// `POST /auth/introspect`: whether a token is active and what it allows. The caller is a
/// confidential client (any of its authentication methods) or a resource server presenting a
/// valid access token of its own.
pub async fn post_introspect(
    State(server): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    respond(introspect(&server, &headers, &body).await)
}

async fn introspect(
    server: &AuthServer,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OAuthError> {
    check_form(headers)?;
    let form = form_map(body)?;
    server.sync_revocations().await;
    match bearer_token(headers) {
        Some(token) => {
            server.principal(token).map_err(|e| {
                OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
                    .with_challenge(e.challenge())
            })?;
        }
        None => {
            authenticate(server, headers, &form, true).await?;
        }
    }
    let token = form
        .get("token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    let body = match active_access_token(server, token) {
        Some(body) => body,
        None => active_refresh_token(server, token)
            .await?
            .unwrap_or_else(|| json!({ "active": false })),
    };
    Ok(no_store((StatusCode::OK, axum::Json(body)).into_response()))
}

/// The introspection of an access token that is valid now.
fn active_access_token(server: &AuthServer, token: &str) -> Option<Value> {
    let principal = server.principal(token).ok()?;
    let claims = &principal.claims;
    let mut body = Map::new();
    body.insert("active".into(), json!(true));
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("scope".into(), json!(claims.scope));
    body.insert("client_id".into(), json!(claims.client_id));
    body.insert("sub".into(), json!(claims.sub));
    body.insert("iss".into(), json!(claims.iss));
    body.insert("aud".into(), json!(claims.aud));
    body.insert("exp".into(), json!(claims.exp));
    body.insert("iat".into(), json!(claims.iat));
    if let Some(patient) = &claims.patient {
        body.insert("patient".into(), json!(patient));
    }
    if let Some(encounter) = &claims.encounter {
        body.insert("encounter".into(), json!(encounter));
    }
    if let Some(fhir_user) = &claims.fhir_user {
        body.insert(
            "fhirUser".into(),
            json!(format!("{}/{fhir_user}", server.config.fhir_base)),
        );
    }
    Some(Value::Object(body))
}

/// The introspection of a refresh token that is unused, unexpired and whose grant stands.
async fn active_refresh_token(
    server: &AuthServer,
    token: &str,
) -> Result<Option<Value>, OAuthError> {
    let digest = token_digest(token);
    let Some((sid, scope, expires_at)) = server
        .store
        .live_refresh_token(&digest, now())
        .await
        .map_err(internal)?
    else {
        return Ok(None);
    };
    let Some(grant) = server.store.grant(&sid).await.map_err(internal)? else {
        return Ok(None);
    };
    let mut body = json!({
        "active": true,
        "scope": ScopeSet::parse(&scope).to_string(),
        "client_id": grant.info.client_id,
        "exp": expires_at,
        "iss": server.config.issuer,
    });
    if let Some(username) = &grant.info.username {
        body["sub"] = json!(username);
    }
    if let Some(patient) = &grant.info.context.patient {
        body["patient"] = json!(patient);
    }
    if let Some(encounter) = &grant.info.context.encounter {
        body["encounter"] = json!(encounter);
    }
    if let Some(fhir_user) = &grant.info.fhir_user {
        body["fhirUser"] = json!(format!("{}/{fhir_user}", server.config.fhir_base));
    }
    Ok(Some(body))
}

/// `POST /auth/revoke`: the token (access or refresh) stops working at once. A refresh token
/// takes its whole grant with it. Unknown, expired or another client's tokens are answered
/// 200 all the same (RFC 7009 §2.2).
pub async fn post_revoke(
    State(server): State<Arc<AuthServer>>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    respond(revoke(&server, &headers, &body, address).await)
}

async fn revoke(
    server: &AuthServer,
    headers: &HeaderMap,
    body: &[u8],
    address: Option<String>,
) -> Result<Response, OAuthError> {
    check_form(headers)?;
    let form: HashMap<String, String> = form_map(body)?;
    let client = authenticate(server, headers, &form, false).await?;
    let token = form
        .get("token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    let mut event = AuthEvent {
        kind: "revoke",
        success: true,
        client_id: Some(client.client_id.clone()),
        address,
        detail: Some("nothing of this client's to revoke".to_owned()),
        ..AuthEvent::default()
    };
    if let Ok(principal) = server.principal(token) {
        if principal.claims.client_id == client.client_id {
            server
                .revoke_token_id(&principal.claims.jti, principal.claims.exp)
                .await
                .map_err(internal)?;
            event.username = Some(principal.claims.sub.clone());
            event.patient = principal.claims.patient.clone();
            event.detail = Some("access token".to_owned());
        }
    } else if let Some(sid) = server
        .store
        .refresh_token_grant(&token_digest(token))
        .await
        .map_err(internal)?
    {
        let owner = server.store.grant(&sid).await.map_err(internal)?;
        if let Some(grant) = owner.filter(|grant| grant.info.client_id == client.client_id) {
            server.revoke_grant(&sid).await.map_err(internal)?;
            event.username = grant.info.username.clone();
            event.patient = grant.info.context.patient.clone();
            event.detail = Some("refresh token and its grant".to_owned());
        }
    }
    server.audit(event).await?;
    Ok(no_store(StatusCode::OK.into_response()))
}
