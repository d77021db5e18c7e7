//! The FHIR REST API under `/fhir`: the interactions of http://hl7.org/fhir/R4/http.html.
//!
//! - [`interactions`]: create, read, vread, update, patch, delete, history, and the
//!   conditional forms of create, update and delete.
//! - [`search`]: search at type and system level, by GET and POST.
//! - [`everything`]: `Patient/{id}/$everything`, the Patient's compartment.
//! - [`audit_events`]: AuditEvent, read and searched from the audit trail, never written.
//! - [`transaction`]: batch and transaction Bundles posted to the base.
//! - [`capability`]: the CapabilityStatement at `/metadata`, built from what is routed here.
//! - [`bundle`]: the frame of the Bundles the server answers with.
//! - [`format`]: media types, `_format`, `_pretty`, `_summary`, `_elements`, `Prefer`.
//! - [`headers`]: ETags and conditional requests.

pub mod audit_events;
pub mod bundle;
pub mod capability;
pub mod everything;
pub mod format;
pub mod headers;
pub mod interactions;
pub mod search;
pub mod transaction;

use axum::Router;
use axum::routing::get;

use crate::app::AppState;

/// The interactions this server supports, for routing and for the CapabilityStatement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    Create,
    SearchType,
}

impl Interaction {
    pub const TYPE_LEVEL: [Interaction; 9] = [
        Self::Read,
        Self::Vread,
        Self::Update,
        Self::Patch,
        Self::Delete,
        Self::HistoryInstance,
        Self::HistoryType,
        Self::Create,
        Self::SearchType,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Vread => "vread",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::HistoryInstance => "history-instance",
            Self::HistoryType => "history-type",
            Self::Create => "create",
            Self::SearchType => "search-type",
        }
    }
}

/// The routes under `/fhir`. Every route but the CapabilityStatement and the SMART
/// configuration passes [`crate::audit::record_requests`] and
/// [`crate::access::authenticate`] first.
pub fn router(state: AppState) -> Router<AppState> {
    use interactions::*;
    use search::*;
    Router::new()
        .route(
            "/",
            get(search_system).post(transaction::batch_or_transaction),
        )
        .route("/_search", axum::routing::post(search_system_post))
        .route("/_history", get(history_system))
        .route(
            "/{type}",
            get(search_type)
                .post(create)
                .put(conditional_update)
                .delete(conditional_delete),
        )
        .route("/{type}/_search", axum::routing::post(search_type_post))
        .route("/{type}/_history", get(history_type))
        .route(
            "/{type}/{id}",
            get(read).put(update).patch(patch).delete(delete),
        )
        .route("/{type}/{id}/_history", get(history_instance))
        .route(
            "/{type}/{id}/$everything",
            get(everything::get_everything).post(everything::post_everything),
        )
        .route("/{type}/{id}/_history/{vid}", get(vread))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::authenticate,
        ))
        // Outside the authentication, so that refusals are audited too.
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::audit::record_requests,
        ))
        .route("/metadata", get(capability::get_metadata))
        .route(
            "/.well-known/smart-configuration",
            get(capability::get_smart_configuration),
        )
}
