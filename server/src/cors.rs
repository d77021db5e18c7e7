//! CORS for the FHIR API (https://fetch.spec.whatwg.org/#http-cors-protocol): a browser app
//! may call the API from an origin its client registered (`telemed client add --origin`), and
//! only with that client's tokens; the CapabilityStatement and the SMART configuration are
//! readable from anywhere. With authorization disabled every origin is allowed.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// What a browser app may send.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Accept, If-Match, If-None-Match, \
    If-None-Exist, If-Modified-Since, Prefer, X-Break-Glass-Reason";
/// What a browser app may read of an answer beyond the simple headers.
const EXPOSE_HEADERS: &str = "Location, Content-Location, ETag, Last-Modified, WWW-Authenticate";
const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// Paths under `/fhir` that anyone may read, from anywhere.
fn is_public(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/fhir/metadata" | "/fhir/.well-known/smart-configuration"
    )
}

/// The middleware around `/fhir` (the whole of it, so that it answers preflights for every
/// route).
pub async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |u| u.0.path().to_owned(),
        );
    let public = is_public(&path);
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let allowed = public || allowed(&state, None, &origin).await;
        if !allowed {
            return StatusCode::FORBIDDEN.into_response();
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow_origin(headers, &origin, public);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return response;
    }
    let client = state
        .auth
        .as_ref()
        .and_then(|auth| auth.authenticate(request.headers()).ok())
        .map(|principal| principal.claims.client_id.clone());
    let mut response = next.run(request).await;
    let allowed = public
        || match &client {
            Some(client) => allowed(&state, Some(client), &origin).await,
            // An answer without a valid token (a 401) may be read by any registered origin,
            // so the app can tell why it failed.
            None => allowed(&state, None, &origin).await,
        };
    if allowed {
        let headers = response.headers_mut();
        allow_origin(headers, &origin, public);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    response
}

/// Whether `origin` may call the API with a token of `client` (any registered client's origin
/// when `None`).
async fn allowed(state: &AppState, client: Option<&str>, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    match &state.auth {
        Some(auth) => auth.origin_allowed(client, origin).await,
        None => true,
    }
}

fn allow_origin(headers: &mut HeaderMap, origin: &HeaderValue, public: bool) {
    if public {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}
