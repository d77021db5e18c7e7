//! `Patient/{id}/$everything` (http://hl7.org/fhir/R4/patient-operation-everything.html): the
//! Patient and every live resource in its compartment, a page at a time, in a `searchset`
//! Bundle whose includes are the practitioners, organizations, medications, locations … that
//! those resources refer to. See [`crate::search::compartment`] for what is in a page and why.
//!
//! Parameters: `_since`, `_type`, `_count` and the `_cursor` of the `next` link, by GET, or by
//! POST in a `Parameters` body; `start` and `end` (and anything else) are ignored.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir_models::ResourceType;
use serde_json::Value;

use super::bundle::{Bundle, BundleLink};
use super::format::{self, FHIR_JSON, Shape, Summary, bad_parameter};
use super::headers::parse_instant;
use super::interactions::{QueryPairs, check_resource, resource_type, visible_version};
use super::search::{keep_reachable, page_entries, system_types};
use crate::access::Access;
use crate::app::AppState;
use crate::error::{FhirError, FhirResult};
use crate::search::compartment::{self, CompartmentQuery};
use crate::store::Micros;
use smart_auth::scope::Permission;

/// The paging cursor of `$everything`: the `rid` after which the next page starts.
const CURSOR: &str = "_cursor";

/// `GET /fhir/Patient/{id}/$everything`.
pub async fn get_everything(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id)): Path<(String, String)>,
    Query(pairs): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    everything(&state, &access, &type_name, &id, &pairs, &headers).await
}

/// `POST /fhir/Patient/{id}/$everything` with a `Parameters` body or none; the body's
/// parameters count as if they were in the URL.
pub async fn post_everything(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id)): Path<(String, String)>,
    Query(mut pairs): QueryPairs,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    pairs.extend(parameters_pairs(&state, &headers, &body)?);
    everything(&state, &access, &type_name, &id, &pairs, &headers).await
}

/// The parameters of a `Parameters` body as name/value pairs; none for an empty body.
fn parameters_pairs(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> FhirResult<Vec<(String, String)>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    format::check_resource_content_type(headers)?;
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        FhirError::bad_request("structure", format!("the body is not valid JSON: {e}"))
    })?;
    check_resource(state, ResourceType::Parameters, &value)?;
    let mut pairs = Vec::new();
    for parameter in value["parameter"].as_array().into_iter().flatten() {
        let Some(name) = parameter["name"].as_str() else {
            continue;
        };
        let value = parameter
            .as_object()
            .into_iter()
            .flatten()
            .find(|(key, _)| key.starts_with("value"))
            .and_then(|(_, value)| match value {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                Value::Bool(flag) => Some(flag.to_string()),
                _ => None,
            })
            .ok_or_else(|| bad_parameter(name, "must have a primitive value"))?;
        pairs.push((name.to_owned(), value));
    }
    Ok(pairs)
}

/// What a request asks of `$everything`.
struct Params {
    types: Vec<ResourceType>,
    since: Option<Micros>,
    after: Option<i64>,
    count: u32,
}

impl Params {
    fn parse(state: &AppState, pairs: &[(String, String)]) -> FhirResult<Self> {
        let mut params = Self {
            types: system_types(pairs)?,
            since: None,
            after: None,
            count: state.config.default_page_size,
        };
        for (name, value) in pairs {
            match name.as_str() {
                "_count" => {
                    params.count = value
                        .parse::<u32>()
                        .map_err(|_| bad_parameter("_count", "must be a whole number"))?
                        .min(state.config.max_page_size);
                }
                "_since" => {
                    params.since = Some(parse_instant(value).ok_or_else(|| {
                        bad_parameter("_since", "must be an instant such as 2024-05-01T10:00:00Z")
                    })?);
                }
                CURSOR => {
                    params.after =
                        Some(value.parse::<i64>().map_err(|_| {
                            bad_parameter(CURSOR, "is not a cursor this server gave")
                        })?);
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// The URL of this request with the paging `cursor`, for the Bundle's links.
    fn url(&self, state: &AppState, id: &str, cursor: Option<&str>) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if self.types.len() < ResourceType::ALL.len() {
            let types: Vec<&str> = self.types.iter().map(|t| t.as_str()).collect();
            pairs.push(("_type", types.join(",")));
        }
        if let Some(since) = self.since {
            pairs.push(("_since", since.to_instant()));
        }
        pairs.push(("_count", self.count.to_string()));
        if let Some(cursor) = cursor {
            pairs.push((CURSOR, cursor.to_owned()));
        }
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("{}/Patient/{id}/$everything?{query}", state.fhir_base)
    }
}

async fn everything(
    state: &AppState,
    access: &Access,
    type_name: &str,
    id: &str,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(type_name)?;
    if rt != ResourceType::Patient {
        return Err(FhirError::NotFound(format!(
            "$everything is an operation on Patient, not on {rt}"
        )));
    }
    let shape = Shape::from_request(pairs, headers)?;
    let mut params = Params::parse(state, pairs)?;
    if shape.summary == Summary::Count {
        params.count = 0;
    }
    let patient = visible_version(state, access, rt, id).await?;
    if patient.is_deleted() {
        return Err(FhirError::Gone(format!("Patient/{id} was deleted")));
    }
    // Only the types the token may read; what it reaches of each is checked on the page.
    let mut readable = Vec::with_capacity(params.types.len());
    for &rt in &params.types {
        match access.reach(state, rt, Permission::Read).await {
            Ok(_) => readable.push(rt),
            Err(FhirError::Forbidden(_)) => {}
            Err(other) => return Err(other),
        }
    }
    params.types = readable;
    let query = CompartmentQuery {
        patient: id,
        types: &params.types,
        since: params.since,
        after: params.after,
        count: params.count,
    };
    let mut page = compartment::page(&state.store, &query).await?;
    if !matches!(access, Access::Open) {
        let before = page.matches.len();
        keep_reachable(state, access, &mut page.matches).await?;
        keep_reachable(state, access, &mut page.included).await?;
        if page.matches.len() != before {
            page.total = None;
        }
    }
    for found in page.matches.iter().chain(&page.included) {
        crate::audit::note_version(state, &found.version);
    }

    let self_cursor = params.after.map(|rid| rid.to_string());
    let mut links = vec![BundleLink {
        relation: "self",
        url: params.url(state, id, self_cursor.as_deref()),
    }];
    if let Some(next) = &page.next {
        links.push(BundleLink {
            relation: "next",
            url: params.url(state, id, Some(next)),
        });
    }
    let entries = page_entries(state, &shape, &page)?;
    let bundle = Bundle::new("searchset", page.total, links, entries);
    let body = shape.bundle_to_bytes(&bundle)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response())
}
