//! Search at type and system level (http://hl7.org/fhir/R4/http.html#search), by GET or by
//! POST of a form, answered with a `searchset` Bundle; and the conditional interactions that
//! find their target by search.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use fhir_models::ResourceType;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::bundle::{Bundle, BundleLink, WriteEntry};
use super::format::{self, FHIR_JSON, Shape, Summary};
use super::interactions::{QueryPairs, resource_type};
use crate::access::{Access, Reach, Reaches};
use crate::app::AppState;
use crate::error::{FhirError, FhirResult, Issue, operation_outcome};
use crate::search::execute::{self, Found, Page};
use crate::search::query::{self, Filter, Limits, SearchQuery, Total};
use smart_auth::scope::Permission;

/// The parameters of a search POSTed as a form, after those of the URL.
fn form_pairs(
    mut pairs: Vec<(String, String)>,
    headers: &HeaderMap,
    body: &[u8],
) -> FhirResult<Vec<(String, String)>> {
    if !format::content_type_is(headers, "application/x-www-form-urlencoded") {
        return Err(FhirError::UnsupportedMediaType(
            "a search by POST sends its parameters as application/x-www-form-urlencoded".to_owned(),
        ));
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| {
        FhirError::bad_request("structure", format!("the form body cannot be read: {e}"))
    })?;
    pairs.extend(form);
    Ok(pairs)
}

impl AppState {
    fn search_limits(&self) -> Limits {
        Limits {
            default_count: self.config.default_page_size,
            max_count: self.config.max_page_size,
        }
    }

    /// Parses a search on `types` from its parameters.
    pub fn parse_search(
        &self,
        types: Vec<ResourceType>,
        pairs: &[(String, String)],
        strict: bool,
    ) -> FhirResult<SearchQuery> {
        query::parse(types, pairs, strict, &self.fhir_base, &self.search_limits())
    }

    /// The filters of `name=value` pairs on `types`, all of which must hold: one group of a
    /// [`SearchQuery::narrow`]. A parameter that does not select resources is an error.
    pub fn search_filters(
        &self,
        types: &[ResourceType],
        pairs: &[(String, String)],
    ) -> FhirResult<Vec<Filter>> {
        query::parse_filters(types, pairs, &self.fhir_base)
    }
}

/// `GET /fhir/{type}?…`.
pub async fn search_type(
    State(state): State<AppState>,
    access: Access,
    Path(type_name): Path<String>,
    Query(pairs): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    search(&state, &access, Some(rt), &pairs, &headers).await
}

/// `POST /fhir/{type}/_search` with a form body.
pub async fn search_type_post(
    State(state): State<AppState>,
    access: Access,
    Path(type_name): Path<String>,
    Query(pairs): QueryPairs,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    let pairs = form_pairs(pairs, &headers, &body)?;
    search(&state, &access, Some(rt), &pairs, &headers).await
}

/// `GET /fhir?_type=…&…`.
pub async fn search_system(
    State(state): State<AppState>,
    access: Access,
    Query(pairs): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    search(&state, &access, None, &pairs, &headers).await
}

/// `POST /fhir/_search` with a form body.
pub async fn search_system_post(
    State(state): State<AppState>,
    access: Access,
    Query(pairs): QueryPairs,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    let pairs = form_pairs(pairs, &headers, &body)?;
    search(&state, &access, None, &pairs, &headers).await
}

/// The types of a system search: those `_type` lists, or all.
pub(super) fn system_types(pairs: &[(String, String)]) -> FhirResult<Vec<ResourceType>> {
    let mut types = Vec::new();
    for (_, value) in pairs.iter().filter(|(name, _)| name == "_type") {
        for name in value.split(',').filter(|n| !n.is_empty()) {
            types.push(ResourceType::from_str(name).map_err(|_| {
                format::bad_parameter(
                    "_type",
                    &format!("names {name:?}, which is not a resource type"),
                )
            })?);
        }
    }
    if types.is_empty() {
        types = ResourceType::ALL.to_vec();
    }
    types.sort();
    types.dedup();
    Ok(types)
}

async fn search(
    state: &AppState,
    access: &Access,
    rt: Option<ResourceType>,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> FhirResult<Response> {
    if rt == Some(ResourceType::AuditEvent) {
        return super::audit_events::search(state, access, pairs, headers).await;
    }
    let shape = Shape::from_request(pairs, headers)?;
    let types = match rt {
        Some(rt) => vec![rt],
        None => system_types(pairs)?,
    };
    let mut query = state.parse_search(types, pairs, format::handling_is_strict(headers))?;
    narrow_to_access(state, access, &mut query).await?;
    let mut page = if shape.summary == Summary::Count {
        Page {
            total: Some(execute::count(&state.store, &state.planner_stats, &query).await?),
            ..Page::default()
        }
    } else {
        execute::page(&state.store, &state.planner_stats, &query).await?
    };
    keep_reachable(state, access, &mut page.included).await?;
    for found in page.matches.iter().chain(&page.included) {
        crate::audit::note_version(state, &found.version);
    }
    let bundle = searchset(state, rt, &query, &shape, &page)?;
    let body = shape.bundle_to_bytes(&bundle)?;
    Ok(axum::response::IntoResponse::into_response((
        StatusCode::OK,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body,
    )))
}

/// Narrows a search to what `access` may search: one type to its reach; several types (a
/// system search) to those it may search whole, refusing a mix that would need narrowing per
/// type.
async fn narrow_to_access(
    state: &AppState,
    access: &Access,
    query: &mut SearchQuery,
) -> FhirResult<()> {
    if matches!(access, Access::Open) {
        return Ok(());
    }
    if let [rt] = query.types[..] {
        let reach = access.reach(state, rt, Permission::Search).await?;
        if let Some(groups) = reach.search_groups(state, rt) {
            query.narrow(groups);
        }
        return Ok(());
    }
    let mut whole = Vec::new();
    for &rt in &query.types {
        match access.reach(state, rt, Permission::Search).await {
            Ok(Reach::All) => whole.push(rt),
            Ok(Reach::Some(_)) => {
                return Err(FhirError::Forbidden(format!(
                    "the access token reaches only some {rt} resources; search each type on \
                     its own (GET [base]/{rt}?…) so the search can be narrowed to them"
                )));
            }
            Err(FhirError::Forbidden(_)) => {}
            Err(other) => return Err(other),
        }
    }
    if whole.is_empty() {
        return Err(FhirError::Forbidden(
            "the access token may search none of these types".to_owned(),
        ));
    }
    query.types = whole;
    Ok(())
}

/// Drops the resources `access` may not read from `found` (the includes of a page, which
/// reach across types and patients).
pub(super) async fn keep_reachable(
    state: &AppState,
    access: &Access,
    found: &mut Vec<Found>,
) -> FhirResult<()> {
    if matches!(access, Access::Open) || found.is_empty() {
        return Ok(());
    }
    let mut reaches = Reaches::new(access, Permission::Read);
    let mut kept = Vec::with_capacity(found.len());
    for one in found.drain(..) {
        if reaches.sees(state, &one.version).await? {
            kept.push(one);
        }
    }
    *found = kept;
    Ok(())
}

/// An entry of a `searchset` Bundle.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Entry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    resource: EntryResource<'a>,
    search: EntrySearch,
}

/// The resource of an entry, as JSON text.
pub(super) enum EntryResource<'a> {
    /// A version's body as stored: the server wrote it, so it goes into the Bundle as it is.
    Stored(&'a [u8]),
    /// Made for this response: a subset of a body (`_summary`, `_elements`), an
    /// OperationOutcome.
    Made(String),
}

impl EntryResource<'_> {
    fn json(&self) -> &[u8] {
        match self {
            Self::Stored(body) => body,
            Self::Made(text) => text.as_bytes(),
        }
    }
}

impl Serialize for EntryResource<'_> {
    /// As its JSON text, unchanged (the form `_pretty` takes: the frame indented, each
    /// resource as it is).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue =
            serde_json::from_slice(self.json()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl WriteEntry for Entry<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.push(b'{');
        if let Some(full_url) = &self.full_url {
            out.extend_from_slice(br#""fullUrl":"#);
            serde_json::to_writer(&mut *out, full_url)?;
            out.push(b',');
        }
        out.extend_from_slice(br#""resource":"#);
        out.extend_from_slice(self.resource.json());
        out.extend_from_slice(br#","search":"#);
        serde_json::to_writer(&mut *out, &self.search)?;
        out.push(b'}');
        Ok(())
    }
}

#[derive(Serialize)]
struct EntrySearch {
    mode: &'static str,
}

fn searchset<'a>(
    state: &AppState,
    rt: Option<ResourceType>,
    query: &SearchQuery,
    shape: &Shape,
    page: &'a Page,
) -> FhirResult<Bundle<Entry<'a>>> {
    let path = match rt {
        Some(rt) => format!("{}/{rt}", state.fhir_base),
        None => state.fhir_base.clone(),
    };
    let link = |cursor: Option<&str>| {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if rt.is_none() {
            let types: Vec<&str> = query.types.iter().map(|t| t.as_str()).collect();
            if types.len() < ResourceType::ALL.len() {
                pairs.push(("_type", types.join(",")));
            }
        }
        pairs.extend(query.canonical.iter().map(|(k, v)| (k.as_str(), v.clone())));
        pairs.push(("_count", query.count.to_string()));
        if let Some(cursor) = cursor {
            pairs.push(("_cursor", cursor.to_owned()));
        }
        let text = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("{path}?{text}")
    };
    let self_cursor = query.cursor.map(|c| c.encode());
    let mut links = vec![BundleLink {
        relation: "self",
        url: link(self_cursor.as_deref()),
    }];
    if let Some(next) = &page.next {
        links.push(BundleLink {
            relation: "next",
            url: link(Some(next)),
        });
    }
    if let Some(previous) = &page.previous {
        links.push(BundleLink {
            relation: "previous",
            url: link(Some(previous)),
        });
    }
    let mut entries = page_entries(state, shape, page)?;
    if !query.warnings.is_empty() {
        let outcome = operation_outcome(&query.warnings);
        entries.push(Entry {
            full_url: None,
            resource: EntryResource::Made(outcome.to_string()),
            search: EntrySearch { mode: "outcome" },
        });
    }
    Ok(Bundle::new("searchset", page.total, links, entries))
}

/// The entries of a page: its matches, then its includes, shaped as the request asks.
pub(super) fn page_entries<'a>(
    state: &AppState,
    shape: &Shape,
    page: &'a Page,
) -> FhirResult<Vec<Entry<'a>>> {
    let mut entries = Vec::with_capacity(page.matches.len() + page.included.len() + 1);
    for (found, mode) in page
        .matches
        .iter()
        .map(|f| (f, "match"))
        .chain(page.included.iter().map(|f| (f, "include")))
    {
        entries.push(entry(state, shape, found, mode)?);
    }
    Ok(entries)
}

fn entry<'a>(
    state: &AppState,
    shape: &Shape,
    found: &'a Found,
    mode: &'static str,
) -> FhirResult<Entry<'a>> {
    let version = &found.version;
    let body = version
        .body
        .as_deref()
        .ok_or_else(|| FhirError::Internal(anyhow::anyhow!("a search found a deleted resource")))?;
    let resource = if shape.summary == Summary::False && shape.elements.is_none() {
        EntryResource::Stored(body)
    } else {
        let mut value: Value =
            serde_json::from_slice(body).map_err(|e| FhirError::Internal(e.into()))?;
        shape.subset(&mut value);
        EntryResource::Made(value.to_string())
    };
    Ok(Entry {
        full_url: Some(format!(
            "{}/{}/{}",
            state.fhir_base, version.resource_type, version.id
        )),
        resource,
        search: EntrySearch { mode },
    })
}

/// The resources of type `rt` within `reach` that a conditional request's query matches, at most `limit`
/// (the caller asks for one more than it can take, to know when there are too many).
pub async fn conditional_matches(
    state: &AppState,
    reach: &Reach,
    rt: ResourceType,
    pairs: &[(String, String)],
    limit: u32,
    what: &str,
) -> FhirResult<Vec<Found>> {
    // A condition the server does not understand must not match everything.
    let mut query = state.parse_search(vec![rt], pairs, true)?;
    if query.filters.is_empty() {
        return Err(FhirError::BadRequest(vec![Issue::error(
            "invalid",
            format!("{what} needs search parameters to find its target"),
        )]));
    }
    // Only what the request may reach can match: a condition never reveals the rest.
    if let Some(groups) = reach.search_groups(state, rt) {
        query.narrow(groups);
    }
    query.count = limit;
    query.total = Total::None;
    query.includes.clear();
    query.revincludes.clear();
    Ok(execute::page(&state.store, &state.planner_stats, &query)
        .await?
        .matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Bundle written by hand, each stored resource copied as it is, is the Bundle serde
    /// writes, byte for byte: with entries or without, with a total and links or without.
    #[test]
    fn a_searchset_written_by_hand_is_the_one_serde_writes() {
        let stored = r#"{"resourceType":"Patient","id":"p\"1","name":[{"family":"M\u00fcller \u2028 \\ Ölçer"}]}"#
            .as_bytes();
        let entries = || {
            vec![
                Entry {
                    full_url: Some("http://example.org/fhir/Patient/p\"1".to_owned()),
                    resource: EntryResource::Stored(stored),
                    search: EntrySearch { mode: "match" },
                },
                Entry {
                    full_url: Some("http://example.org/fhir/Patient/p2".to_owned()),
                    resource: EntryResource::Made(
                        r#"{"resourceType":"Patient","id":"p2"}"#.to_owned(),
                    ),
                    search: EntrySearch { mode: "include" },
                },
                Entry {
                    full_url: None,
                    resource: EntryResource::Made(
                        r#"{"resourceType":"OperationOutcome","issue":[]}"#.to_owned(),
                    ),
                    search: EntrySearch { mode: "outcome" },
                },
            ]
        };
        let link = || {
            vec![BundleLink {
                relation: "self",
                url: "http://example.org/fhir/Patient?name=m%C3%BC&_count=2".to_owned(),
            }]
        };
        let bundles = [
            Bundle::new("searchset", Some(3), link(), entries()),
            Bundle::new("searchset", None, Vec::new(), entries()),
            Bundle::new("searchset", Some(0), link(), Vec::new()),
        ];
        for bundle in bundles {
            let by_hand = bundle.to_json().expect("written");
            let by_serde = serde_json::to_vec(&bundle).expect("serialised");
            assert_eq!(
                String::from_utf8(by_hand).expect("UTF-8"),
                String::from_utf8(by_serde).expect("UTF-8")
            );
        }
    }
}
