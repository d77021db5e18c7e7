//! The application state every handler shares, and the router.

use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower::util::MapRequest;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::error::{FhirError, Issue, outcome_response};
use crate::search::execute::PlannerStats;
use crate::store::{Store, Version};
use crate::validate::SchemaValidator;
use smart_auth::server::AuthServer;

/// Everything a request handler may need. Built once at start.
pub struct App {
    /// The configuration the server started with.
    pub config: Config,
    /// The FHIR base URL as clients see it, e.g. `https://example.org/fhir` (no trailing slash).
    pub fhir_base: String,
    /// Where resources and their history live.
    pub store: Store,
    /// The official JSON schema, one compiled validator per resource type.
    pub validator: SchemaValidator,
    /// The serialised CapabilityStatement, built at start.
    pub capability_statement: Bytes,
    /// How many resources each type holds, as search plans last counted.
    pub planner_stats: PlannerStats,
    /// The SMART authorization server, whose tokens every FHIR request needs; `None` when
    /// authorization is disabled by configuration.
    pub auth: Option<Arc<AuthServer>>,
    /// Appends to the audit trail; `None` when authorization is disabled (nobody to audit).
    pub auditor: Option<crate::audit::Auditor>,
}

/// Shared handle to [`App`]; cheap to clone into each request.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl App {
    /// The versioned URL of a version, for `Location`.
    pub fn version_url(&self, version: &Version) -> String {
        format!(
            "{}/{}/{}/_history/{}",
            self.fhir_base, version.resource_type, version.id, version.version_id
        )
    }
}

/// The whole HTTP surface as the listener (and a batch entry) sees it: [`router`], with the
/// trailing slash of
/// the base URL itself taken off before routing (`POST {base}/`, `GET {base}/?_type=…`, which
/// clients that join paths by `/` send), since a router's own middleware runs too late to.
pub fn service(state: AppState) -> Service {
    MapRequest::new(router(state), without_base_slash)
}

/// What [`service`] gives: the router behind the base URL's rewriting.
pub type Service = MapRequest<Router, fn(Request) -> Request>;

/// `/fhir/` (with its query) as `/fhir`; any other request unchanged.
fn without_base_slash(mut request: Request) -> Request {
    if request.uri().path() == "/fhir/" {
        let path_and_query = match request.uri().query() {
            Some(query) => format!("/fhir?{query}"),
            None => "/fhir".to_owned(),
        };
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = path_and_query.parse().ok();
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// The whole HTTP surface, routed.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let fhir = crate::fhir::router(state.clone()).layer(middleware::from_fn_with_state(
        state.clone(),
        crate::cors::cors,
    ));
    let mut router = Router::new().nest("/fhir", fhir);
    if let Some(auth) = &state.auth {
        router = router.nest("/auth", smart_auth::server::router(auth.clone()));
    }
    router
        .fallback(|| async { FhirError::NotFound("no such endpoint".to_owned()) })
        .with_state(state)
        .layer(middleware::from_fn(outcome_for_bare_errors))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(|_| {
            FhirError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
        }))
        .layer(
            // Spans name the route template, never the concrete path or query: both can hold
            // identifiers and search values, which are PHI.
            TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("(unmatched)", MatchedPath::as_str);
                tracing::info_span!("request", method = %request.method(), route)
            }),
        )
}

/// Errors produced outside our handlers (axum's 405 and 413, extractor rejections) come with a
/// plain-text or empty body; FHIR clients expect an OperationOutcome, so give them one. The
/// authorization server under `/auth` is not FHIR: its errors are OAuth's JSON and its pages
/// HTML, and stay so.
async fn outcome_for_bare_errors(request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/auth/") {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_fhir = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/fhir+json"));
    if is_fhir {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .filter(|text| !text.is_empty());
    let (code, text) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "not-supported",
            "this interaction is not supported at this URL".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too-costly",
            "the request body is larger than this server accepts".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "not-supported",
            "the request body's media type is not supported".to_owned(),
        ),
        _ => (
            "invalid",
            detail.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
        ),
    };
    let mut outcome = outcome_response(status, &[Issue::error(code, text)]);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            outcome.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if status == StatusCode::METHOD_NOT_ALLOWED && !outcome.headers().contains_key(header::ALLOW) {
        outcome
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
    }
    outcome
}
