//! `POST /fhir` with a `batch` or `transaction` Bundle
//! (http://hl7.org/fhir/R4/http.html#transaction).
//!
//! Both process their entries in the order the specification gives — DELETE, then POST, then
//! PUT and PATCH, then GET and HEAD — and answer with a `batch-response` or
//! `transaction-response` Bundle whose entries follow the request's order.
//!
//! - A batch's entries are independent: each is handed to the server's own router as the HTTP
//!   request it describes, so it behaves exactly like that request, and fails on its own.
//! - A transaction is all or nothing. Every write is first resolved without touching the
//!   database: ids are assigned, conditions (`ifNoneExist`, conditional update and delete,
//!   conditional references) are searched, patches are applied, and every link to an entry's
//!   `fullUrl` (`urn:uuid:`, `urn:oid:` or a URL) is rewritten to the resource's id, in
//!   references, in other `uri` values and in the narrative. Then all the writes go to the
//!   store as one database transaction. Any entry that fails rejects the whole Bundle with an
//!   OperationOutcome that names the entry; nothing is stored. GET entries run last, after the
//!   commit, and see its writes.

use std::collections::{HashMap, HashSet};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use fhir_models::ResourceType;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tower::ServiceExt as _;

use super::bundle::Bundle;
use super::format::{self, FHIR_JSON, Return};
use super::headers;
use super::interactions::{
    check_id, check_resource, check_update_id, condition_pairs, conditional_update_id, is_valid_id,
    patched, put_change, resource_type, stored_version,
};
use crate::access::{Access, Reach, outside_reach};
use crate::app::AppState;
use crate::error::{FhirError, FhirResult, Issue, operation_outcome};
use crate::store::{
    Change, Precondition, Version, WriteFailed, WriteMethod, WriteOp, Written, condition_key,
};
use smart_auth::scope::Permission;

/// Batch entries that run at once (each waits mostly on the database).
const BATCH_CONCURRENCY: usize = 16;

/// `POST /fhir`: a batch or transaction Bundle.
pub async fn batch_or_transaction(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    format::check_resource_content_type(&headers)?;
    let processed = process(&state, &access, &body, &headers).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        processed.response,
    )
        .into_response())
}

/// A Bundle processed.
pub struct Processed {
    /// The `batch-response` or `transaction-response` Bundle, serialised.
    pub response: Vec<u8>,
    /// How many entries the Bundle had.
    pub entries: usize,
    /// How many of a batch's entries failed (a transaction that fails is an error instead).
    pub failed: usize,
}

/// Processes a batch or transaction Bundle exactly as `POST /fhir` does, for `access`;
/// `headers` are the request's (`Prefer` shapes the response entries).
pub async fn process(
    state: &AppState,
    access: &Access,
    body: &[u8],
    headers: &HeaderMap,
) -> FhirResult<Processed> {
    let bundle: Value = serde_json::from_slice(body).map_err(|e| {
        FhirError::bad_request("structure", format!("the body is not valid JSON: {e}"))
    })?;
    let kind = bundle_kind(&bundle)?;
    let entries = parse_entries(state, bundle)?;
    let count = entries.len();
    let prefer = Return::from_headers(headers);
    let responses = match kind {
        Kind::Batch => batch(state, access, &entries, headers).await,
        Kind::Transaction => transaction(state, access, entries, headers, prefer).await?,
    };
    let failed = responses
        .iter()
        .filter(|entry| !entry.response.status.starts_with(['1', '2', '3']))
        .count();
    let response = Bundle::new(kind.response_type(), None, Vec::new(), responses);
    Ok(Processed {
        response: serde_json::to_vec(&response).map_err(|e| FhirError::Internal(e.into()))?,
        entries: count,
        failed,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Transaction,
}

impl Kind {
    fn response_type(self) -> &'static str {
        match self {
            Self::Batch => "batch-response",
            Self::Transaction => "transaction-response",
        }
    }
}

fn bundle_kind(bundle: &Value) -> FhirResult<Kind> {
    match bundle.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {}
        Some(other) => {
            return Err(FhirError::bad_request(
                "invalid",
                format!("POST to the base URL takes a Bundle, not a {other}"),
            ));
        }
        None => {
            return Err(FhirError::BadRequest(vec![
                Issue::error("required", "resourceType is missing").at("Bundle.resourceType"),
            ]));
        }
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("batch") => Ok(Kind::Batch),
        Some("transaction") => Ok(Kind::Transaction),
        Some(other) => Err(FhirError::BadRequest(vec![
            Issue::error(
                "not-supported",
                format!(
                    "a Bundle of type {other:?} cannot be processed here: POST a batch or a \
                     transaction, or store the Bundle with POST /fhir/Bundle"
                ),
            )
            .at("Bundle.type"),
        ])),
        None => Err(FhirError::BadRequest(vec![
            Issue::error("required", "Bundle.type is missing").at("Bundle.type"),
        ])),
    }
}

/// One entry of the request Bundle, as read.
struct Entry {
    index: usize,
    full_url: Option<String>,
    resource: Option<Value>,
    method: Method,
    /// `request.url` as sent.
    url: String,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    if_match: Option<String>,
    if_none_exist: Option<String>,
}

impl Entry {
    /// Where this entry's resource sits, for an OperationOutcome.
    fn at(&self) -> String {
        format!("Bundle.entry[{}]", self.index)
    }

    /// The rank of this entry's method in the processing order.
    fn rank(&self) -> u8 {
        match self.method.as_str() {
            "DELETE" => 0,
            "POST" => 1,
            "PUT" | "PATCH" => 2,
            _ => 3,
        }
    }

    /// `request.url` relative to the FHIR base, split at `?`.
    fn target<'a>(&'a self, state: &AppState) -> (&'a str, Option<&'a str>) {
        let url = self.url.as_str();
        let url = url
            .strip_prefix(state.fhir_base.as_str())
            .unwrap_or(url)
            .trim_start_matches('/');
        match url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (url, None),
        }
    }
}

fn parse_entries(state: &AppState, mut bundle: Value) -> FhirResult<Vec<Entry>> {
    let raw = match bundle.as_object_mut().and_then(|b| b.remove("entry")) {
        None => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(FhirError::BadRequest(vec![
                Issue::error("structure", "Bundle.entry must be an array").at("Bundle.entry"),
            ]));
        }
    };
    let limit = state.config.max_bundle_entries;
    if raw.len() > limit {
        return Err(FhirError::PayloadTooLarge(format!(
            "the Bundle has {} entries; this server takes at most {limit} in one batch or \
             transaction",
            raw.len()
        )));
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, raw)| parse_entry(index, raw))
        .collect()
}

fn parse_entry(index: usize, mut raw: Value) -> FhirResult<Entry> {
    let at = format!("Bundle.entry[{index}]");
    let invalid = |what: &str, path: &str| {
        FhirError::BadRequest(vec![
            Issue::error("invalid", format!("{at}: {what}")).at(format!("{at}{path}")),
        ])
    };
    let Some(object) = raw.as_object_mut() else {
        return Err(invalid("an entry must be an object", ""));
    };
    let resource = match object.remove("resource") {
        None => None,
        Some(resource @ Value::Object(_)) => Some(resource),
        Some(_) => return Err(invalid("resource must be a resource", ".resource")),
    };
    let Some(request) = object.get("request").and_then(Value::as_object) else {
        return Err(invalid(
            "an entry of a batch or transaction needs a request (method and url)",
            ".request",
        ));
    };
    let text = |name: &str| -> FhirResult<Option<String>> {
        match request.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(invalid(
                &format!("request.{name} must be a non-empty string"),
                &format!(".request.{name}"),
            )),
        }
    };
    let method = match text("method")?.as_deref() {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some(other) => {
            return Err(invalid(
                &format!(
                    "request.method {other:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE"
                ),
                ".request.method",
            ));
        }
        None => return Err(invalid("request.method is required", ".request.method")),
    };
    let Some(url) = text("url")? else {
        return Err(invalid("request.url is required", ".request.url"));
    };
    if resource.is_none() && matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        return Err(invalid(
            &format!("a {method} entry needs a resource"),
            ".resource",
        ));
    }
    let full_url = match object.get("fullUrl") {
        None => None,
        Some(Value::String(url)) if !url.is_empty() => Some(url.clone()),
        Some(_) => return Err(invalid("fullUrl must be a non-empty string", ".fullUrl")),
    };
    Ok(Entry {
        index,
        full_url,
        resource,
        method,
        url,
        if_none_match: text("ifNoneMatch")?,
        if_modified_since: text("ifModifiedSince")?,
        if_match: text("ifMatch")?,
        if_none_exist: text("ifNoneExist")?,
    })
}

/// An entry of the response Bundle.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<Box<RawValue>>,
    response: EntryResponse,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryResponse {
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Box<RawValue>>,
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Entry indices in processing order: DELETE, POST, PUT/PATCH, GET/HEAD, each in Bundle order.
fn processing_order(entries: &[Entry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].rank());
    order
}

// ---------------------------------------------------------------------------------------------
// Batch

async fn batch(
    state: &AppState,
    access: &Access,
    entries: &[Entry],
    headers: &HeaderMap,
) -> Vec<ResponseEntry> {
    let router = crate::app::service(state.clone());
    let order = processing_order(entries);
    let mut responses: Vec<Option<ResponseEntry>> = entries.iter().map(|_| None).collect();
    // Each method's entries run together; the next method starts when they are done.
    for group in order.chunk_by(|&a, &b| entries[a].rank() == entries[b].rank()) {
        let answered: Vec<(usize, ResponseEntry)> = futures::stream::iter(group.iter().copied())
            .map(|i| {
                let router = router.clone();
                async move {
                    let answer = dispatch(state, access, router, &entries[i], headers).await;
                    (i, answer)
                }
            })
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect()
            .await;
        for (i, response) in answered {
            responses[i] = Some(response);
        }
    }
    responses.into_iter().flatten().collect()
}

/// Runs an entry as the HTTP request it describes, through the server's own router, with the
/// access of the Bundle's request.
async fn dispatch(
    state: &AppState,
    access: &Access,
    router: crate::app::Service,
    entry: &Entry,
    headers: &HeaderMap,
) -> ResponseEntry {
    let mut request = match entry_request(state, entry, headers) {
        Ok(request) => request,
        Err(error) => return response_entry(state, error.into_response()).await,
    };
    request.extensions_mut().insert(access.clone());
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    response_entry(state, response).await
}

/// The HTTP request an entry describes.
fn entry_request(
    state: &AppState,
    entry: &Entry,
    headers: &HeaderMap,
) -> FhirResult<Request<Body>> {
    let (path, query) = entry.target(state);
    if path.is_empty() && !matches!(entry.method, Method::GET | Method::HEAD) {
        // A Bundle inside a Bundle is stored with POST Bundle, never processed.
        return Err(bad_url(entry, "an entry cannot write to the base URL"));
    }
    let uri = match query {
        Some(query) => format!("/fhir/{path}?{query}"),
        None => format!("/fhir/{path}"),
    };
    let mut request = Request::builder().method(entry.method.clone()).uri(uri);
    for (name, value) in [
        (header::IF_MATCH, &entry.if_match),
        (header::IF_NONE_MATCH, &entry.if_none_match),
        (header::IF_MODIFIED_SINCE, &entry.if_modified_since),
    ] {
        if let Some(value) = value {
            request = request.header(name, value);
        }
    }
    if let Some(condition) = &entry.if_none_exist {
        request = request.header("if-none-exist", condition);
    }
    for prefer in headers.get_all("prefer") {
        request = request.header("prefer", prefer);
    }
    let body = match (&entry.method, &entry.resource) {
        (&Method::PATCH, Some(resource)) => {
            request = request.header(header::CONTENT_TYPE, "application/json-patch+json");
            Body::from(json_patch_bytes(entry, resource)?)
        }
        (_, Some(resource)) if entry.method != Method::GET && entry.method != Method::HEAD => {
            request = request.header(header::CONTENT_TYPE, FHIR_JSON);
            Body::from(serde_json::to_vec(resource).map_err(|e| FhirError::Internal(e.into()))?)
        }
        _ => Body::empty(),
    };
    request.body(body).map_err(|_| {
        FhirError::BadRequest(vec![
            Issue::error(
                "invalid",
                format!("{}: request.url is not a valid URL", entry.at()),
            )
            .at(format!("{}.request.url", entry.at())),
        ])
    })
}

/// The JSON Patch document a PATCH entry carries as a Binary resource.
fn json_patch_bytes(entry: &Entry, resource: &Value) -> FhirResult<Vec<u8>> {
    let unsupported = || {
        FhirError::BadRequest(vec![
            Issue::error(
                "not-supported",
                format!(
                    "{}: a PATCH entry carries its JSON Patch as a Binary resource with \
                     contentType application/json-patch+json and the patch in data",
                    entry.at()
                ),
            )
            .at(format!("{}.resource", entry.at())),
        ])
    };
    if resource.get("resourceType").and_then(Value::as_str) != Some("Binary")
        || resource.get("contentType").and_then(Value::as_str)
            != Some("application/json-patch+json")
    {
        return Err(unsupported());
    }
    let data = resource
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(unsupported)?;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| {
            FhirError::BadRequest(vec![
                Issue::error(
                    "invalid",
                    format!("{}: Binary.data is not base64", entry.at()),
                )
                .at(format!("{}.resource.data", entry.at())),
            ])
        })
}

/// A response of the router as a response entry: the resource (or OperationOutcome) and the
/// headers that matter.
async fn response_entry(state: &AppState, response: Response) -> ResponseEntry {
    let (parts, body) = response.into_parts();
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let last_modified = header(header::LAST_MODIFIED)
        .and_then(|date| httpdate::parse_http_date(&date).ok())
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|since| {
            crate::store::Micros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX)).to_instant()
        });
    let mut entry = ResponseEntry {
        full_url: None,
        resource: None,
        response: EntryResponse {
            status: status_line(parts.status),
            location: header(header::LOCATION),
            etag: header(header::ETAG),
            last_modified,
            outcome: None,
        },
    };
    let bytes = match axum::body::to_bytes(body, state.config.max_body_bytes.max(1 << 20)).await {
        Ok(bytes) => bytes,
        Err(_) => return entry,
    };
    if bytes.is_empty() {
        return entry;
    }
    let (Ok(raw), Ok(head)) = (
        serde_json::from_slice::<Box<RawValue>>(&bytes),
        serde_json::from_slice::<Head>(&bytes),
    ) else {
        return entry;
    };
    match (head.resource_type.as_deref(), head.id) {
        (Some("OperationOutcome"), _) => entry.response.outcome = Some(raw),
        (rt, id) => {
            if let (Some(rt), Some(id)) = (rt, id)
                && rt != "Bundle"
            {
                entry.full_url = Some(format!("{}/{rt}/{id}", state.fhir_base));
            }
            entry.resource = Some(raw);
        }
    }
    entry
}

/// The type and id of a resource the router answered with.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    resource_type: Option<String>,
    id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Transaction

/// What a transaction entry does, once resolved.
enum Action {
    /// GET or HEAD: run after the commit.
    Read,
    /// Store a new version of `rt/id` (POST, PUT, PATCH).
    Write {
        rt: ResourceType,
        id: String,
        precondition: Precondition,
        method: WriteMethod,
        resource: Value,
    },
    /// A POST whose `ifNoneExist` matched this resource: nothing is written.
    Matched(Version),
    /// Delete each of these (none: nothing matched).
    Delete {
        rt: ResourceType,
        ids: Vec<String>,
        precondition: Precondition,
    },
}

/// The links a transaction rewrites: an entry's `fullUrl` → the `Type/id` it became.
#[derive(Default)]
struct Links {
    by_full_url: HashMap<String, String>,
    /// Conditional references (`Patient?identifier=…`) → the `Type/id` they match.
    conditional: HashMap<String, String>,
}

/// The resources a transaction touches, to refuse two entries on one resource.
#[derive(Default)]
struct Claims {
    by_resource: HashMap<(ResourceType, String), usize>,
    deleted: HashSet<(ResourceType, String)>,
}

impl Claims {
    fn claim(&mut self, entry: &Entry, rt: ResourceType, id: &str) -> FhirResult<()> {
        if let Some(first) = self.by_resource.insert((rt, id.to_owned()), entry.index) {
            return Err(FhirError::BadRequest(vec![
                Issue::error(
                    "invalid",
                    format!(
                        "{}: Bundle.entry[{first}] and Bundle.entry[{}] both resolve to {rt}/{id}; \
                         a transaction may touch a resource only once",
                        entry.at(),
                        entry.index
                    ),
                )
                .at(entry.at()),
            ]));
        }
        Ok(())
    }
}

async fn transaction(
    state: &AppState,
    access: &Access,
    mut entries: Vec<Entry>,
    headers: &HeaderMap,
    prefer: Return,
) -> FhirResult<Vec<ResponseEntry>> {
    let order = processing_order(&entries);
    // The conditions of its conditional creates and updates are held from their searches
    // until the transaction has committed, as for the same requests made one by one.
    let _held = state
        .store
        .lock_conditions(condition_keys(state, &entries))
        .await?;
    let mut claims = Claims::default();
    let mut links = Links::default();
    let mut actions: Vec<Option<Action>> = entries.iter().map(|_| None).collect();
    for &i in &order {
        let entry = &mut entries[i];
        let action = resolve(state, access, entry, &mut claims, &mut links)
            .await
            .map_err(|e| at_entry(entry, e))?;
        actions[i] = Some(action);
    }

    // Conditional references are searched once each, against the data before the transaction;
    // a failure names the first entry that holds the reference.
    let mut wanted = HashMap::new();
    for &i in &order {
        if let Some(Action::Write { resource, .. }) = &actions[i] {
            collect_conditional_references(resource, i, &mut wanted);
        }
    }
    for (reference, i) in wanted {
        let target = resolve_conditional_reference(state, access, &reference, &claims)
            .await
            .map_err(|e| at_entry(&entries[i], e))?;
        links.conditional.insert(reference, target);
    }

    let mut ops = Vec::new();
    let mut op_entries = Vec::new();
    for &i in &order {
        let entry = &entries[i];
        match actions[i].as_mut() {
            Some(Action::Write {
                rt,
                id,
                precondition,
                method,
                resource,
            }) => {
                rewrite_links(resource, &links, entry).map_err(|e| at_entry(entry, e))?;
                let change = put_change(state, *rt, std::mem::take(resource), *method);
                crate::audit::note_change(*rt, id, &change);
                check_write(state, access, *rt, id, *method, &change)
                    .await
                    .map_err(|e| at_entry(entry, e))?;
                ops.push(WriteOp {
                    rt: *rt,
                    id: id.clone(),
                    precondition: *precondition,
                    change,
                });
                op_entries.push(i);
            }
            Some(Action::Delete {
                rt,
                ids,
                precondition,
            }) => {
                for id in ids {
                    ops.push(WriteOp {
                        rt: *rt,
                        id: id.clone(),
                        precondition: *precondition,
                        change: Change::Delete,
                    });
                    op_entries.push(i);
                }
            }
            Some(Action::Read | Action::Matched(_)) | None => {}
        }
    }

    let written = match state.store.write_all(ops).await {
        Ok(written) => written,
        Err(WriteFailed { op, error }) => {
            return Err(match op.and_then(|op| op_entries.get(op)) {
                Some(&i) => at_entry(&entries[i], error),
                None => error,
            });
        }
    };

    let mut responses: Vec<Option<ResponseEntry>> = entries.iter().map(|_| None).collect();
    let mut deletes: HashMap<usize, Vec<Written>> = HashMap::new();
    for (written, &i) in written.into_iter().zip(&op_entries) {
        match actions[i] {
            Some(Action::Delete { .. }) => deletes.entry(i).or_default().push(written),
            _ => {
                let (version, created) = written.into_version()?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                responses[i] = Some(version_entry(state, &version, status, prefer)?);
            }
        }
    }
    let router = crate::app::service(state.clone());
    for &i in &order {
        let entry = &entries[i];
        let response = match &actions[i] {
            Some(Action::Matched(version)) => {
                version_entry(state, version, StatusCode::OK, prefer)?
            }
            Some(Action::Delete { .. }) => delete_entry(deletes.remove(&i).unwrap_or_default()),
            Some(Action::Read) => dispatch(state, access, router.clone(), entry, headers).await,
            Some(Action::Write { .. }) | None => continue,
        };
        responses[i] = Some(response);
    }
    Ok(responses.into_iter().flatten().collect())
}

/// The conditions of the entries that create or update by a search: a POST's `ifNoneExist`
/// and a PUT's `Type?search` (see [`crate::store::ConditionGuard`]). An entry whose condition
/// cannot be read has none here; resolving it reports the error.
fn condition_keys(state: &AppState, entries: &[Entry]) -> Vec<i64> {
    entries
        .iter()
        .filter_map(|entry| {
            let (path, query) = entry.target(state);
            let condition = match entry.method.as_str() {
                "POST" => entry.if_none_exist.as_deref()?,
                "PUT" => query?,
                _ => return None,
            };
            let rt = resource_type(path).ok()?;
            Some(condition_key(rt, &condition_pairs(condition)?))
        })
        .collect()
}

/// Whether `access` may make this write: the resource there now (if any) and the one that
/// replaces it within the reach of the write's permission (create for a new resource, update
/// for an existing one).
async fn check_write(
    state: &AppState,
    access: &Access,
    rt: ResourceType,
    id: &str,
    method: WriteMethod,
    change: &Change,
) -> FhirResult<()> {
    if matches!(access, Access::Open) {
        return Ok(());
    }
    let current = match method {
        WriteMethod::Post => None,
        _ => state.store.read(rt, id).await?,
    };
    let permission = match current.as_ref().filter(|c| !c.is_deleted()) {
        Some(_) => Permission::Update,
        None => Permission::Create,
    };
    let reach = access.reach(state, rt, permission).await?;
    let current_in_reach = match &current {
        Some(current) => reach.sees(state, current).await?,
        None => true,
    };
    if current_in_reach && reach.admits_change(rt, id, change) {
        Ok(())
    } else {
        Err(outside_reach(rt))
    }
}

/// Resolves what entry `entry` of a transaction does, claiming the resources it touches and
/// recording the link from its `fullUrl`.
async fn resolve(
    state: &AppState,
    access: &Access,
    entry: &mut Entry,
    claims: &mut Claims,
    links: &mut Links,
) -> FhirResult<Action> {
    if matches!(entry.method, Method::GET | Method::HEAD) {
        return Ok(Action::Read);
    }
    // A POST or PUT writes the entry's resource: taken, not copied.
    let resource = if matches!(entry.method, Method::POST | Method::PUT) {
        entry.resource.take()
    } else {
        None
    };
    let entry = &*entry;
    let (path, query) = entry.target(state);
    let mut segments = path.split('/');
    let type_name = segments.next().unwrap_or_default();
    let id = segments.next();
    if segments.next().is_some() || (id.is_some() && query.is_some()) {
        return Err(bad_url(
            entry,
            "a write names a type (Type, Type?search) or a resource (Type/id)",
        ));
    }
    let rt = resource_type(type_name).map_err(|_| {
        bad_url(
            entry,
            &format!("{type_name:?} is not a FHIR R4 resource type"),
        )
    })?;
    super::audit_events::refuse_write(rt)?;
    let if_match = match &entry.if_match {
        Some(tag) => Some(headers::parse_version_tag(tag).ok_or_else(|| {
            FhirError::BadRequest(vec![
                Issue::error("invalid", "ifMatch must be a version tag such as W/\"3\"")
                    .at(format!("{}.request.ifMatch", entry.at())),
            ])
        })?),
        None => None,
    };
    let precondition = if_match.map_or(Precondition::None, Precondition::IfMatch);
    let action = match entry.method.as_str() {
        "DELETE" => {
            let reach = access.reach(state, rt, Permission::Delete).await?;
            let ids = match (id, query) {
                // An id that cannot exist names nothing to delete; one out of reach neither.
                (Some(id), _) if is_valid_id(id) => match state.store.read(rt, id).await? {
                    Some(current) => {
                        crate::audit::note_version(state, &current);
                        if reach.sees(state, &current).await? {
                            vec![id.to_owned()]
                        } else {
                            Vec::new()
                        }
                    }
                    None => vec![id.to_owned()],
                },
                (Some(_), _) => Vec::new(),
                (None, Some(query)) => {
                    let limit = state.config.max_page_size;
                    let found =
                        matches(state, &reach, rt, query, limit + 1, "a conditional delete")
                            .await?;
                    if found.len() > limit as usize {
                        return Err(FhirError::PreconditionFailed(format!(
                            "the conditional delete matches more than {limit} resources; narrow it"
                        )));
                    }
                    found
                }
                (None, None) => {
                    return Err(bad_url(entry, "a DELETE names Type/id or Type?search"));
                }
            };
            for id in &ids {
                claims.claim(entry, rt, id)?;
                claims.deleted.insert((rt, id.clone()));
            }
            Action::Delete {
                rt,
                ids,
                precondition,
            }
        }
        "POST" => {
            if id.is_some() || query.is_some() {
                return Err(bad_url(entry, "a POST (create) names only the type"));
            }
            let resource = checked_resource(state, resource, rt)?;
            let mut matched = None;
            if let Some(condition) = &entry.if_none_exist {
                let pairs = condition_pairs(condition).ok_or_else(|| {
                    FhirError::BadRequest(vec![
                        Issue::error("invalid", "ifNoneExist must be a query string")
                            .at(format!("{}.request.ifNoneExist", entry.at())),
                    ])
                })?;
                let reach = access.reach(state, rt, Permission::Create).await?;
                let found =
                    conditional_matches(state, &reach, rt, &pairs, "ifNoneExist", claims).await?;
                match found.as_slice() {
                    [] => {}
                    [one] => matched = Some(stored_version(state, rt, one).await?),
                    _ => {
                        return Err(FhirError::PreconditionFailed(
                            "ifNoneExist matches more than one resource".to_owned(),
                        ));
                    }
                }
            }
            match matched {
                Some(version) => {
                    claims.claim(entry, rt, &version.id)?;
                    link(links, entry, rt, &version.id);
                    Action::Matched(version)
                }
                None => {
                    let id = uuid::Uuid::new_v4().to_string();
                    claims.claim(entry, rt, &id)?;
                    link(links, entry, rt, &id);
                    let mut resource = resource;
                    if let Some(object) = resource.as_object_mut() {
                        object.insert("id".to_owned(), Value::String(id.clone()));
                    }
                    Action::Write {
                        rt,
                        id,
                        precondition: Precondition::Absent,
                        method: WriteMethod::Post,
                        resource,
                    }
                }
            }
        }
        "PUT" => {
            let mut resource = checked_resource(state, resource, rt)?;
            let id = match (id, query) {
                (Some(id), _) => {
                    check_id(id)?;
                    check_update_id(rt, id, &resource)?;
                    id.to_owned()
                }
                (None, Some(query)) => {
                    let reach = access.reach(state, rt, Permission::Update).await?;
                    let found =
                        matches_pairs(state, &reach, rt, query, "a conditional update", claims)
                            .await?;
                    let found: Vec<&str> = found.iter().map(String::as_str).collect();
                    conditional_update_id(rt, &found, &mut resource)?
                }
                (None, None) => {
                    return Err(bad_url(entry, "a PUT names Type/id or Type?search"));
                }
            };
            claims.claim(entry, rt, &id)?;
            link(links, entry, rt, &id);
            Action::Write {
                rt,
                id,
                precondition,
                method: WriteMethod::Put,
                resource,
            }
        }
        "PATCH" => {
            let reach = access.reach(state, rt, Permission::Update).await?;
            let id = match (id, query) {
                (Some(id), _) => id.to_owned(),
                (None, Some(query)) => {
                    let found =
                        matches_pairs(state, &reach, rt, query, "a conditional patch", claims)
                            .await?;
                    match <[String; 1]>::try_from(found) {
                        Ok([one]) => one,
                        Err(found) if found.is_empty() => {
                            return Err(FhirError::NotFound(
                                "the conditional patch matches no resource".to_owned(),
                            ));
                        }
                        Err(_) => {
                            return Err(FhirError::PreconditionFailed(
                                "the conditional patch matches more than one resource".to_owned(),
                            ));
                        }
                    }
                }
                (None, None) => {
                    return Err(bad_url(entry, "a PATCH names Type/id or Type?search"));
                }
            };
            let resource = entry.resource.as_ref().unwrap_or(&Value::Null);
            let operations: json_patch::Patch =
                serde_json::from_slice(&json_patch_bytes(entry, resource)?).map_err(|e| {
                    FhirError::bad_request(
                        "structure",
                        format!("the Binary's data is not a JSON Patch document: {e}"),
                    )
                })?;
            let current = stored_version(state, rt, &id).await?;
            if !reach.sees(state, &current).await? {
                return Err(FhirError::NotFound(format!(
                    "{rt} has no resource with that id"
                )));
            }
            let value = patched(state, &current, if_match, &operations)?;
            claims.claim(entry, rt, &id)?;
            link(links, entry, rt, &id);
            Action::Write {
                rt,
                id,
                // The patch was applied to this version: a write in between must not be lost.
                precondition: Precondition::IfMatch(current.version_id),
                method: WriteMethod::Patch,
                resource: value,
            }
        }
        _ => return Err(bad_url(entry, "unsupported method")),
    };
    Ok(action)
}

fn bad_url(entry: &Entry, problem: &str) -> FhirError {
    FhirError::BadRequest(vec![
        Issue::error(
            "invalid",
            format!(
                "{}: {} {:?}: {problem}",
                entry.at(),
                entry.method,
                entry.url
            ),
        )
        .at(format!("{}.request.url", entry.at())),
    ])
}

/// An entry's resource, checked to be a valid resource of the type its URL names.
fn checked_resource(
    state: &AppState,
    resource: Option<Value>,
    rt: ResourceType,
) -> FhirResult<Value> {
    let resource = resource.unwrap_or(Value::Null);
    check_resource(state, rt, &resource)?;
    Ok(resource)
}

/// Records that `entry`'s fullUrl now means `rt/id`.
fn link(links: &mut Links, entry: &Entry, rt: ResourceType, id: &str) {
    if let Some(full_url) = &entry.full_url {
        links
            .by_full_url
            .insert(full_url.clone(), format!("{rt}/{id}"));
    }
}

/// The ids of the live resources of type `rt` that a condition matches, leaving out those this
/// transaction deletes.
async fn conditional_matches(
    state: &AppState,
    reach: &Reach,
    rt: ResourceType,
    pairs: &[(String, String)],
    what: &str,
    claims: &Claims,
) -> FhirResult<Vec<String>> {
    // Enough matches to tell none, one and several apart once this transaction's deletes are
    // left out.
    let limit = u32::try_from(claims.deleted.len())
        .unwrap_or(u32::MAX)
        .saturating_add(2);
    let found = super::search::conditional_matches(state, reach, rt, pairs, limit, what).await?;
    Ok(found
        .into_iter()
        .map(|found| found.version.id)
        .filter(|id| !claims.deleted.contains(&(rt, id.clone())))
        .collect())
}

async fn matches_pairs(
    state: &AppState,
    reach: &Reach,
    rt: ResourceType,
    query: &str,
    what: &str,
    claims: &Claims,
) -> FhirResult<Vec<String>> {
    conditional_matches(state, reach, rt, &query_pairs(query, what)?, what, claims).await
}

/// The ids a conditional delete's search matches (up to `limit`).
async fn matches(
    state: &AppState,
    reach: &Reach,
    rt: ResourceType,
    query: &str,
    limit: u32,
    what: &str,
) -> FhirResult<Vec<String>> {
    let pairs = query_pairs(query, what)?;
    let found = super::search::conditional_matches(state, reach, rt, &pairs, limit, what).await?;
    Ok(found.into_iter().map(|found| found.version.id).collect())
}

/// The search parameters of a condition's query string.
fn query_pairs(query: &str, what: &str) -> FhirResult<Vec<(String, String)>> {
    condition_pairs(query)
        .ok_or_else(|| FhirError::bad_request("invalid", format!("{what}: not a query string")))
}

/// Whether a reference is conditional: `Type?search`.
fn is_conditional_reference(reference: &str) -> bool {
    reference
        .split_once('?')
        .is_some_and(|(path, _)| !path.is_empty() && !path.contains('/') && !path.contains(':'))
}

/// Every conditional reference in `value`, the resource of entry `entry`, with the first
/// entry that holds it.
fn collect_conditional_references(value: &Value, entry: usize, into: &mut HashMap<String, usize>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match value {
                    Value::String(reference)
                        if key == "reference" && is_conditional_reference(reference) =>
                    {
                        into.entry(reference.clone()).or_insert(entry);
                    }
                    _ => collect_conditional_references(value, entry, into),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_conditional_references(item, entry, into);
            }
        }
        _ => {}
    }
}

/// The `Type/id` a conditional reference matches: exactly one resource, or 412.
async fn resolve_conditional_reference(
    state: &AppState,
    access: &Access,
    reference: &str,
    claims: &Claims,
) -> FhirResult<String> {
    let (type_name, query) = reference.split_once('?').unwrap_or((reference, ""));
    let rt = type_name.parse::<ResourceType>().map_err(|_| {
        FhirError::bad_request(
            "invalid",
            format!("the conditional reference {reference:?} does not name a resource type"),
        )
    })?;
    let what = format!("the conditional reference {reference:?}");
    let reach = access.reach(state, rt, Permission::Search).await?;
    let found = matches_pairs(state, &reach, rt, query, &what, claims).await?;
    match found.as_slice() {
        [one] => Ok(format!("{rt}/{one}")),
        [] => Err(FhirError::PreconditionFailed(format!(
            "{what} matches no resource"
        ))),
        _ => Err(FhirError::PreconditionFailed(format!(
            "{what} matches more than one resource"
        ))),
    }
}

/// Rewrites every link to an entry's fullUrl in `resource` to the `Type/id` it became, and every
/// conditional reference to the resource it matched; a `urn:uuid:` or `urn:oid:` reference that
/// names no entry is an error.
fn rewrite_links(resource: &mut Value, links: &Links, entry: &Entry) -> FhirResult<()> {
    // A relative reference in an entry whose fullUrl is a URL is relative to that URL's base.
    let base = entry
        .full_url
        .as_deref()
        .filter(|url| url.starts_with("http://") || url.starts_with("https://"))
        .and_then(|url| {
            let mut parts = url.rsplitn(3, '/');
            let (_id, _type) = (parts.next()?, parts.next()?);
            parts.next()
        });
    let mut dangling = None;
    rewrite_value(resource, links, base, &mut dangling);
    match dangling {
        None => Ok(()),
        Some(reference) => Err(FhirError::BadRequest(vec![
            Issue::error(
                "invalid",
                format!("the reference {reference:?} names no entry of this transaction"),
            )
            .at(format!("{}.resource", entry.at())),
        ])),
    }
}

fn rewrite_value(
    value: &mut Value,
    links: &Links,
    base: Option<&str>,
    dangling: &mut Option<String>,
) {
    match value {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    Value::String(text) if key == "reference" => {
                        if let Some(target) = reference_target(text, links, base) {
                            *text = target;
                        } else if (text.starts_with("urn:uuid:") || text.starts_with("urn:oid:"))
                            && dangling.is_none()
                        {
                            *dangling = Some(text.clone());
                        }
                    }
                    Value::String(text) if key == "div" => {
                        if text.contains("urn:") {
                            rewrite_narrative(text, links);
                        }
                    }
                    Value::String(text) => {
                        if let Some(target) = links.by_full_url.get(text.as_str()) {
                            *text = target.clone();
                        }
                    }
                    _ => rewrite_value(value, links, base, dangling),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_value(item, links, base, dangling);
            }
        }
        _ => {}
    }
}

/// What a `Reference.reference` becomes, if it points into the transaction.
fn reference_target(reference: &str, links: &Links, base: Option<&str>) -> Option<String> {
    if let Some(target) = links.by_full_url.get(reference) {
        return Some(target.clone());
    }
    if let Some(target) = links.conditional.get(reference) {
        return Some(target.clone());
    }
    let base = base?;
    if reference.contains(':') {
        return None;
    }
    links
        .by_full_url
        .get(&format!("{base}/{reference}"))
        .cloned()
}

/// Rewrites `href` and `src` attributes of the narrative that name an entry's fullUrl.
fn rewrite_narrative(div: &mut String, links: &Links) {
    for (full_url, target) in &links.by_full_url {
        if full_url.starts_with("urn:") && div.contains(full_url.as_str()) {
            for attribute in ["href", "src"] {
                for quote in ['"', '\''] {
                    let from = format!("{attribute}={quote}{full_url}{quote}");
                    if div.contains(&from) {
                        *div = div.replace(&from, &format!("{attribute}={quote}{target}{quote}"));
                    }
                }
            }
        }
    }
}

/// Names the entry in an error, so the client knows which one failed.
fn at_entry(entry: &Entry, error: FhirError) -> FhirError {
    let at = entry.at();
    let prefix = |text: String| {
        if text.starts_with(&at) {
            text
        } else {
            format!("{at} ({} {}): {text}", entry.method, entry.url)
        }
    };
    let issues = |issues: Vec<Issue>| {
        issues
            .into_iter()
            .map(|mut issue| {
                issue.diagnostics = prefix(std::mem::take(&mut issue.diagnostics));
                issue.expression = Some(match issue.expression.take() {
                    Some(expression) if expression.starts_with("Bundle.") => expression,
                    // `Patient.name[0]` → `Bundle.entry[3].resource.name[0]`
                    Some(expression) => match expression.split_once('.') {
                        Some((_, rest)) => format!("{at}.resource.{rest}"),
                        None => format!("{at}.resource"),
                    },
                    None => at.clone(),
                });
                issue
            })
            .collect()
    };
    match error {
        FhirError::BadRequest(list) => FhirError::BadRequest(issues(list)),
        FhirError::Unprocessable(list) => FhirError::Unprocessable(issues(list)),
        FhirError::NotFound(text) => FhirError::NotFound(prefix(text)),
        FhirError::Gone(text) => FhirError::Gone(prefix(text)),
        FhirError::MethodNotAllowed(text) => FhirError::MethodNotAllowed(prefix(text)),
        FhirError::NotAcceptable(text) => FhirError::NotAcceptable(prefix(text)),
        FhirError::Conflict(text) => FhirError::Conflict(prefix(text)),
        FhirError::PreconditionFailed(text) => FhirError::PreconditionFailed(prefix(text)),
        FhirError::PayloadTooLarge(text) => FhirError::PayloadTooLarge(prefix(text)),
        FhirError::UnsupportedMediaType(text) => FhirError::UnsupportedMediaType(prefix(text)),
        FhirError::Forbidden(text) => FhirError::Forbidden(prefix(text)),
        FhirError::Unauthorized { message, challenge } => FhirError::Unauthorized {
            message: prefix(message),
            challenge,
        },
        FhirError::Internal(error) => FhirError::Internal(error),
    }
}

/// The response entry of a stored (or matched) version, with the resource as `Prefer` asks.
fn version_entry(
    state: &AppState,
    version: &Version,
    status: StatusCode,
    prefer: Return,
) -> FhirResult<ResponseEntry> {
    let raw = |bytes: &[u8]| {
        serde_json::from_slice::<Box<RawValue>>(bytes).map_err(|e| FhirError::Internal(e.into()))
    };
    let (resource, outcome) = match prefer {
        Return::Minimal => (None, None),
        Return::Representation => (version.body.as_deref().map(raw).transpose()?, None),
        Return::OperationOutcome => {
            let outcome =
                operation_outcome(&[Issue::information("informational", status_line(status))]);
            let bytes = serde_json::to_vec(&outcome).map_err(|e| FhirError::Internal(e.into()))?;
            (None, Some(raw(&bytes)?))
        }
    };
    Ok(ResponseEntry {
        full_url: Some(format!(
            "{}/{}/{}",
            state.fhir_base, version.resource_type, version.id
        )),
        resource,
        response: EntryResponse {
            status: status_line(status),
            location: Some(state.version_url(version)),
            etag: Some(version.etag()),
            last_modified: Some(version.last_updated.to_instant()),
            outcome,
        },
    })
}

/// The response entry of a delete: 204, with the version it stored when there was one.
fn delete_entry(written: Vec<Written>) -> ResponseEntry {
    let version = written.into_iter().find_map(|w| match w {
        Written::Version { version, .. } => Some(version),
        Written::NothingToDelete => None,
    });
    ResponseEntry {
        full_url: None,
        resource: None,
        response: EntryResponse {
            status: status_line(StatusCode::NO_CONTENT),
            location: None,
            etag: version.as_ref().map(Version::etag),
            last_modified: version.map(|v| v.last_updated.to_instant()),
            outcome: None,
        },
    }
}
