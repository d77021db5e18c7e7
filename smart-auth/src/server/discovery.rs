//! Discovery: the SMART configuration (http://hl7.org/fhir/smart-app-launch/conformance.html),
//! the OpenID Connect provider metadata, and the JWK Set that verifies the server's tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AuthServer;
use crate::assertion::ASSERTION_ALGORITHMS;

/// What a SMART client may ask for and this server supports.
pub const CAPABILITIES: [&str; 19] = [
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

/// The scopes offered in discovery: the identity, launch and refresh scopes, and the
/// wildcards of each context in v2 and v1 syntax (any narrower resource scope works too).
pub const SCOPES_SUPPORTED: [&str; 17] = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.rs",
    "user/*.rs",
    "system/*.rs",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
];

/// The SMART configuration document.
pub fn smart_configuration(server: &AuthServer) -> Value {
    let config = &server.config;
    json!({
        "issuer": config.issuer,
        "jwks_uri": config.endpoint("jwks"),
        "authorization_endpoint": config.endpoint("authorize"),
        "token_endpoint": config.endpoint("token"),
        "introspection_endpoint": config.endpoint("introspect"),
        "revocation_endpoint": config.endpoint("revoke"),
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    })
}

/// `GET {fhir}/.well-known/smart-configuration`: always JSON, readable from any origin.
pub async fn get_smart_configuration(State(server): State<Arc<AuthServer>>) -> Response {
    let mut response = Json(smart_configuration(&server)).into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// `GET /auth/.well-known/openid-configuration` (OpenID Connect Discovery 1.0), so that an
/// id_token's `iss` leads to the keys that verify it.
pub async fn get_openid_configuration(State(server): State<Arc<AuthServer>>) -> Response {
    let config = &server.config;
    let body = json!({
        "issuer": config.issuer,
        "authorization_endpoint": config.endpoint("authorize"),
        "token_endpoint": config.endpoint("token"),
        "jwks_uri": config.endpoint("jwks"),
        "introspection_endpoint": config.endpoint("introspect"),
        "revocation_endpoint": config.endpoint("revoke"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "code_challenge_methods_supported": ["S256"],
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// `GET /auth/jwks`: the public keys of the server's tokens.
pub async fn get_jwks(State(server): State<Arc<AuthServer>>) -> Response {
    let mut response = Json(server.keys.jwks()).into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// `GET /auth/smart-style.json`: the `smart_style_url` of every token response, so that an
/// embedded app can match the look of telemed's own app
/// (http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#styling).
pub async fn get_smart_style() -> Response {
    let body = json!({
        "color_background": "#ffffff",
        "color_error": "#a00000",
        "color_highlight": "#0b5cad",
        "color_modal_backdrop": "",
        "color_success": "#1e7d32",
        "color_text": "#1b1b1b",
        "dim_border_radius": "4px",
        "dim_font_size": "16px",
        "dim_spacing_size": "16px",
        "font_family_body": "system-ui, sans-serif",
        "font_family_heading": "system-ui, sans-serif",
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}
