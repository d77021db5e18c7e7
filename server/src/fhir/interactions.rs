//! Handlers for the instance- and type-level interactions, and history at every level.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir_models::ResourceType;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::audit_events;
use super::bundle::{Bundle, BundleLink};
use super::format::{self, FHIR_JSON, Return, Shape, bad_parameter};
use super::headers;
use crate::access::{Access, Reaches, outside_reach};
use crate::app::AppState;
use crate::audit;
use crate::error::{FhirError, FhirResult, Issue, operation_outcome};
use crate::search;
use crate::store::{
    Change, HistoryQuery, HistoryScope, Precondition, Version, WriteMethod, Written, condition_key,
};
use smart_auth::scope::Permission;

pub(super) type QueryPairs = Query<Vec<(String, String)>>;

/// A resource type named in a URL; an unknown one is a 404.
pub(super) fn resource_type(name: &str) -> FhirResult<ResourceType> {
    ResourceType::from_str(name).map_err(|_| {
        FhirError::NotFound(format!(
            "{name:?} is not a FHIR R4 resource type this server knows"
        ))
    })
}

/// A logical id: 1 to 64 of `A-Z a-z 0-9 - .` (http://hl7.org/fhir/R4/datatypes.html#id).
pub(super) fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub(super) fn check_id(id: &str) -> FhirResult<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(FhirError::BadRequest(vec![Issue::error(
            "invalid",
            "a resource id is 1 to 64 characters from A-Z, a-z, 0-9, '-' and '.'",
        )]))
    }
}

/// Parses a request body as a resource of type `rt`: JSON, an object, the right
/// `resourceType`, valid against the schema and the typed model.
fn parse_resource(state: &AppState, rt: ResourceType, body: &[u8]) -> FhirResult<Value> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        FhirError::bad_request("structure", format!("the body is not valid JSON: {e}"))
    })?;
    check_resource(state, rt, &value)?;
    Ok(value)
}

/// Checks that `value` is a resource of type `rt`: an object, the right `resourceType`, valid
/// against the schema and the typed model.
pub(super) fn check_resource(state: &AppState, rt: ResourceType, value: &Value) -> FhirResult<()> {
    check_resource_type(rt, value).map_err(FhirError::BadRequest)?;
    let issues = state.validator.check(rt, value);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(FhirError::BadRequest(issues))
    }
}

fn check_resource_type(rt: ResourceType, value: &Value) -> Result<(), Vec<Issue>> {
    let Some(object) = value.as_object() else {
        return Err(vec![Issue::error(
            "structure",
            "the body must be a JSON object (a FHIR resource)",
        )]);
    };
    match object.get("resourceType").and_then(Value::as_str) {
        Some(found) if found == rt.as_str() => Ok(()),
        Some(_) => Err(vec![
            Issue::error(
                "invalid",
                format!("resourceType does not match the URL, which names {rt}"),
            )
            .at(format!("{rt}.resourceType")),
        ]),
        None => Err(vec![
            Issue::error("required", "resourceType is missing").at(format!("{rt}.resourceType")),
        ]),
    }
}

/// A write of `body`, with the search index rows it gives.
pub(super) fn put_change(
    state: &AppState,
    rt: ResourceType,
    body: Value,
    method: WriteMethod,
) -> Change {
    let index = Box::new(search::index::extract(rt, &body, &state.fhir_base));
    Change::Put {
        body,
        method,
        index,
    }
}

/// The response to a successful write, as `Prefer: return=` asks.
fn write_response(
    state: &AppState,
    headers: &HeaderMap,
    shape: &Shape,
    status: StatusCode,
    version: &Version,
    message: &str,
) -> FhirResult<Response> {
    let location = state.version_url(version);
    let mut response = match Return::from_headers(headers) {
        Return::Minimal => status.into_response(),
        Return::OperationOutcome => {
            let outcome = operation_outcome(&[Issue::information("informational", message)]);
            json_response(status, shape.to_bytes(&outcome)?)
        }
        Return::Representation => match &version.body {
            Some(body) => json_response(status, shape_body(shape, body)?),
            None => status.into_response(),
        },
    };
    response
        .headers_mut()
        .extend(headers::version_headers(version, Some(&location)));
    Ok(response)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response()
}

/// The stored body as this request wants it: as stored, or re-shaped.
fn shape_body(shape: &Shape, body: &[u8]) -> FhirResult<Vec<u8>> {
    if shape.is_identity() {
        return Ok(body.to_vec());
    }
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| FhirError::Internal(e.into()))?;
    shape.subset(&mut value);
    shape.to_bytes(&value)
}

/// `POST /fhir/{type}`: create with a server-assigned id.
pub async fn create(
    State(state): State<AppState>,
    access: Access,
    Path(type_name): Path<String>,
    Query(query): QueryPairs,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    audit_events::refuse_write(rt)?;
    let reach = access.reach(&state, rt, Permission::Create).await?;
    let shape = Shape::from_request(&query, &headers)?;
    format::check_resource_content_type(&headers)?;
    let value = parse_resource(&state, rt, &body)?;
    // http://hl7.org/fhir/R4/http.html#ccreate: one match → 200 with it, none → create,
    // several → 412.
    let condition = headers
        .get("if-none-exist")
        .map(|condition| {
            condition
                .to_str()
                .ok()
                .and_then(condition_pairs)
                .ok_or_else(|| {
                    FhirError::bad_request("invalid", "If-None-Exist must be a query string")
                })
        })
        .transpose()?;
    // Held from the search until the write has committed, so that copies of this request
    // sent at once create one resource.
    let _held = match &condition {
        Some(pairs) => Some(
            state
                .store
                .lock_conditions(vec![condition_key(rt, pairs)])
                .await?,
        ),
        None => None,
    };
    if let Some(pairs) = &condition {
        let found =
            super::search::conditional_matches(&state, &reach, rt, pairs, 2, "If-None-Exist")
                .await?;
        match found.as_slice() {
            [] => {}
            [existing] => {
                return write_response(
                    &state,
                    &headers,
                    &shape,
                    StatusCode::OK,
                    &existing.version,
                    "a resource matching If-None-Exist exists; nothing was created",
                );
            }
            _ => {
                return Err(FhirError::PreconditionFailed(
                    "If-None-Exist matches more than one resource".to_owned(),
                ));
            }
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let change = put_change(&state, rt, value, WriteMethod::Post);
    audit::note_change(rt, &id, &change);
    if !reach.admits_change(rt, &id, &change) {
        return Err(outside_reach(rt));
    }
    let (version, _) = state
        .store
        .write(rt, &id, Precondition::Absent, change)
        .await?
        .into_version()?;
    write_response(
        &state,
        &headers,
        &shape,
        StatusCode::CREATED,
        &version,
        "created",
    )
}

/// The search parameters of a condition such as `If-None-Exist` (`identifier=…`, with or
/// without a leading `Type?`); `None` if it is not a query string.
pub(super) fn condition_pairs(condition: &str) -> Option<Vec<(String, String)>> {
    let condition = condition.split_once('?').map_or(condition, |(_, q)| q);
    serde_urlencoded::from_str(condition).ok()
}

/// The current version of `rt/id` (a deleted one included); 404 if it never existed or the id
/// cannot be one.
pub(super) async fn stored_version(
    state: &AppState,
    rt: ResourceType,
    id: &str,
) -> FhirResult<Version> {
    let not_found = || FhirError::NotFound(format!("{rt} has no resource with that id"));
    if !is_valid_id(id) {
        return Err(not_found());
    }
    state.store.read(rt, id).await?.ok_or_else(not_found)
}

/// The current version of `rt/id` if `access` may read it; 404 if it never existed, cannot
/// be an id, or is out of reach (so that nobody learns what they may not see).
pub(super) async fn visible_version(
    state: &AppState,
    access: &Access,
    rt: ResourceType,
    id: &str,
) -> FhirResult<Version> {
    let reach = access.reach(state, rt, Permission::Read).await?;
    let version = stored_version(state, rt, id).await?;
    audit::note_version(state, &version);
    if reach.sees(state, &version).await? {
        Ok(version)
    } else {
        Err(FhirError::NotFound(format!(
            "{rt} has no resource with that id"
        )))
    }
}

/// `GET /fhir/{type}/{id}`.
pub async fn read(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id)): Path<(String, String)>,
    Query(query): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    let shape = Shape::from_request(&query, &headers)?;
    if rt == ResourceType::AuditEvent {
        return audit_events::read(&state, &access, &id, None, &shape).await;
    }
    let version = visible_version(&state, &access, rt, &id).await?;
    version_response(&headers, &shape, &version)
}

/// `GET /fhir/{type}/{id}/_history/{vid}`.
pub async fn vread(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id, vid)): Path<(String, String, String)>,
    Query(query): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    let shape = Shape::from_request(&query, &headers)?;
    if rt == ResourceType::AuditEvent {
        return audit_events::read(&state, &access, &id, Some(&vid), &shape).await;
    }
    let reach = access.reach(&state, rt, Permission::Read).await?;
    let not_found = || FhirError::NotFound(format!("{rt}/{id} has no version {vid}"));
    let version_id: i64 = vid.parse().map_err(|_| not_found())?;
    if !is_valid_id(&id) {
        return Err(not_found());
    }
    let version = state
        .store
        .vread(rt, &id, version_id)
        .await?
        .ok_or_else(not_found)?;
    audit::note_version(&state, &version);
    if !reach.sees(&state, &version).await? {
        return Err(not_found());
    }
    version_response(&headers, &shape, &version)
}

/// A read or vread answer: the body, 304 for a conditional read, 410 for a delete.
fn version_response(headers: &HeaderMap, shape: &Shape, version: &Version) -> FhirResult<Response> {
    let version_headers = headers::version_headers(version, None);
    let Some(body) = &version.body else {
        let mut response = FhirError::Gone(format!(
            "{}/{} was deleted",
            version.resource_type, version.id
        ))
        .into_response();
        response.headers_mut().extend(version_headers);
        return Ok(response);
    };
    let mut response = if headers::not_modified(headers, version) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        json_response(StatusCode::OK, shape_body(shape, body)?)
    };
    response.headers_mut().extend(version_headers);
    Ok(response)
}

/// The write of `value` as the next version of `rt/id` by PUT, if `access` may make it: an
/// update needs the `u` permission on what is there and on what replaces it; storing a new id
/// needs `c`.
async fn checked_put(
    state: &AppState,
    access: &Access,
    rt: ResourceType,
    id: &str,
    value: Value,
) -> FhirResult<Change> {
    let change = put_change(state, rt, value, WriteMethod::Put);
    audit::note_change(rt, id, &change);
    let current = state.store.read(rt, id).await?;
    let permission = match current.as_ref().filter(|c| !c.is_deleted()) {
        Some(_) => Permission::Update,
        None => Permission::Create,
    };
    let reach = access.reach(state, rt, permission).await?;
    let current_in_reach = match &current {
        Some(current) => reach.sees(state, current).await?,
        None => true,
    };
    if current_in_reach && reach.admits_change(rt, id, &change) {
        Ok(change)
    } else {
        Err(outside_reach(rt))
    }
}

/// Stores `change` as the next version of `rt/id` (an update, or a create with that id) and
/// answers 200 or 201: the common end of update and conditional update.
async fn put(
    state: &AppState,
    headers: &HeaderMap,
    shape: &Shape,
    rt: ResourceType,
    id: &str,
    if_match: Option<i64>,
    change: Change,
) -> FhirResult<Response> {
    let precondition = if_match.map_or(Precondition::None, Precondition::IfMatch);
    let (version, created) = state
        .store
        .write(rt, id, precondition, change)
        .await?
        .into_version()?;
    let (status, message) = if created {
        (StatusCode::CREATED, "created")
    } else {
        (StatusCode::OK, "updated")
    };
    write_response(state, headers, shape, status, &version, message)
}

/// `PUT /fhir/{type}/{id}`: update, or create with the client's id.
pub async fn update(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id)): Path<(String, String)>,
    Query(query): QueryPairs,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    audit_events::refuse_write(rt)?;
    let shape = Shape::from_request(&query, &headers)?;
    check_id(&id)?;
    format::check_resource_content_type(&headers)?;
    let if_match = headers::if_match(&headers)?;
    let value = parse_resource(&state, rt, &body)?;
    check_update_id(rt, &id, &value)?;
    let change = checked_put(&state, &access, rt, &id, value).await?;
    put(&state, &headers, &shape, rt, &id, if_match, change).await
}

/// An update carries the id of the URL in its body.
pub(super) fn check_update_id(rt: ResourceType, id: &str, value: &Value) -> FhirResult<()> {
    match value.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => Ok(()),
        Some(_) => Err(FhirError::BadRequest(vec![
            Issue::error(
                "invalid",
                "the id in the body does not match the id in the URL",
            )
            .at(format!("{rt}.id")),
        ])),
        None => Err(FhirError::BadRequest(vec![
            Issue::error(
                "required",
                "an update must carry the resource's id in the body",
            )
            .at(format!("{rt}.id")),
        ])),
    }
}

/// `PUT /fhir/{type}?…`: conditional update (http://hl7.org/fhir/R4/http.html#cond-update).
/// No match → create (with the body's id, or a new one); one → update it; several → 412.
pub async fn conditional_update(
    State(state): State<AppState>,
    access: Access,
    Path(type_name): Path<String>,
    Query(query): QueryPairs,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    audit_events::refuse_write(rt)?;
    let shape = Shape::from_request(&query, &headers)?;
    format::check_resource_content_type(&headers)?;
    let if_match = headers::if_match(&headers)?;
    let mut value = parse_resource(&state, rt, &body)?;
    let reach = access.reach(&state, rt, Permission::Update).await?;
    // Held until the write has committed: copies of this request sent at once, finding no
    // match, create one resource.
    let _held = state
        .store
        .lock_conditions(vec![condition_key(rt, &query)])
        .await?;
    let found =
        super::search::conditional_matches(&state, &reach, rt, &query, 2, "a conditional update")
            .await?;
    let matched: Vec<&str> = found.iter().map(|f| f.version.id.as_str()).collect();
    let id = conditional_update_id(rt, &matched, &mut value)?;
    let change = checked_put(&state, &access, rt, &id, value).await?;
    put(&state, &headers, &shape, rt, &id, if_match, change).await
}

/// The id a conditional update writes, from the ids its condition matched: none → the body's
/// id or a new one; one → that one; several → 412. Sets it in `value`.
pub(super) fn conditional_update_id(
    rt: ResourceType,
    matched: &[&str],
    value: &mut Value,
) -> FhirResult<String> {
    let body_id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    let id = match matched {
        [] => match body_id {
            Some(id) => {
                check_id(&id)?;
                id
            }
            None => uuid::Uuid::new_v4().to_string(),
        },
        [one] => {
            if body_id.as_ref().is_some_and(|id| id != one) {
                return Err(FhirError::BadRequest(vec![
                    Issue::error(
                        "invalid",
                        "the id in the body is not the id of the resource the condition matches",
                    )
                    .at(format!("{rt}.id")),
                ]));
            }
            (*one).to_owned()
        }
        _ => {
            return Err(FhirError::PreconditionFailed(
                "the conditional update matches more than one resource".to_owned(),
            ));
        }
    };
    if let Some(object) = value.as_object_mut() {
        object.insert("id".to_owned(), Value::String(id.clone()));
    }
    Ok(id)
}

/// `DELETE /fhir/{type}?…`: conditional delete of every match (up to the page maximum).
pub async fn conditional_delete(
    State(state): State<AppState>,
    access: Access,
    Path(type_name): Path<String>,
    Query(query): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    audit_events::refuse_write(rt)?;
    let reach = access.reach(&state, rt, Permission::Delete).await?;
    let limit = state.config.max_page_size;
    let found = super::search::conditional_matches(
        &state,
        &reach,
        rt,
        &query,
        limit + 1,
        "a conditional delete",
    )
    .await?;
    if found.len() > limit as usize {
        return Err(FhirError::PreconditionFailed(format!(
            "the conditional delete matches more than {limit} resources; narrow it"
        )));
    }
    for target in &found {
        audit::note_version(&state, &target.version);
        state
            .store
            .write(rt, &target.version.id, Precondition::None, Change::Delete)
            .await?;
    }
    let text = match found.len() {
        0 => "no resource matches; nothing to delete".to_owned(),
        n => format!("deleted {n} {rt} resource(s)"),
    };
    Ok(delete_response(&headers, text))
}

/// `PATCH /fhir/{type}/{id}` with a JSON Patch (RFC 6902) document.
pub async fn patch(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id)): Path<(String, String)>,
    Query(query): QueryPairs,
    headers: HeaderMap,
    body: Bytes,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    audit_events::refuse_write(rt)?;
    let shape = Shape::from_request(&query, &headers)?;
    if !format::content_type_is(&headers, "application/json-patch+json") {
        return Err(FhirError::UnsupportedMediaType(
            "PATCH takes a JSON Patch document: Content-Type application/json-patch+json"
                .to_owned(),
        ));
    }
    let if_match = headers::if_match(&headers)?;
    let operations: json_patch::Patch = serde_json::from_slice(&body).map_err(|e| {
        FhirError::bad_request(
            "structure",
            format!("the body is not a JSON Patch document: {e}"),
        )
    })?;
    let reach = access.reach(&state, rt, Permission::Update).await?;
    let current = stored_version(&state, rt, &id).await?;
    audit::note_version(&state, &current);
    if !reach.sees(&state, &current).await? {
        return Err(FhirError::NotFound(format!(
            "{rt} has no resource with that id"
        )));
    }
    let value = patched(&state, &current, if_match, &operations)?;
    // The patch was applied to this version: a write in between must not be overwritten.
    let change = put_change(&state, rt, value, WriteMethod::Patch);
    audit::note_change(rt, &id, &change);
    if !reach.admits_change(rt, &id, &change) {
        return Err(outside_reach(rt));
    }
    let written = state
        .store
        .write(rt, &id, Precondition::IfMatch(current.version_id), change)
        .await
        .map_err(|e| match e {
            FhirError::PreconditionFailed(_) if if_match.is_none() => FhirError::Conflict(format!(
                "{rt}/{id} was changed by another request while the patch was applied; retry"
            )),
            other => other,
        })?;
    match written {
        Written::Version { version, .. } => write_response(
            &state,
            &headers,
            &shape,
            StatusCode::OK,
            &version,
            "patched",
        ),
        Written::NothingToDelete => Err(FhirError::Internal(anyhow::anyhow!(
            "a patch reported a delete"
        ))),
    }
}

/// `current` with a JSON Patch applied, checked like any other write; `if_match` is the version
/// the client expects `current` to be.
pub(super) fn patched(
    state: &AppState,
    current: &Version,
    if_match: Option<i64>,
    operations: &json_patch::Patch,
) -> FhirResult<Value> {
    let (rt, id) = (current.resource_type, &current.id);
    let Some(current_body) = &current.body else {
        return Err(FhirError::Gone(format!("{rt}/{id} was deleted")));
    };
    if let Some(expected) = if_match
        && expected != current.version_id
    {
        return Err(FhirError::PreconditionFailed(format!(
            "If-Match names version {expected} but the current version is {}",
            current.version_id
        )));
    }
    let mut value: Value =
        serde_json::from_slice(current_body).map_err(|e| FhirError::Internal(e.into()))?;
    json_patch::patch(&mut value, operations).map_err(|e| {
        FhirError::Unprocessable(vec![Issue::error(
            "processing",
            format!("the patch cannot be applied: {e}"),
        )])
    })?;
    if value.get("id").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(FhirError::Unprocessable(vec![
            Issue::error("invalid", "a patch may not change or remove the id")
                .at(format!("{rt}.id")),
        ]));
    }
    check_resource_type(rt, &value).map_err(FhirError::Unprocessable)?;
    let issues = state.validator.check(rt, &value);
    if !issues.is_empty() {
        return Err(FhirError::Unprocessable(issues));
    }
    Ok(value)
}

/// The answer to a delete: 204 under `Prefer: return=minimal`, else 200 with an
/// OperationOutcome saying what happened.
fn delete_response(headers: &HeaderMap, text: String) -> Response {
    match Return::from_headers(headers) {
        Return::Minimal => StatusCode::NO_CONTENT.into_response(),
        _ => {
            let outcome = operation_outcome(&[Issue::information("informational", text)]);
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&outcome).unwrap_or_default(),
            )
        }
    }
}

/// `DELETE /fhir/{type}/{id}`: stores a deleted version; reads then answer 410.
pub async fn delete(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    audit_events::refuse_write(rt)?;
    let reach = access.reach(&state, rt, Permission::Delete).await?;
    let if_match = headers::if_match(&headers)?;
    // What is out of reach is deleted as if it did not exist: nothing happens.
    let in_reach = match state.store.read(rt, &id).await? {
        Some(current) if is_valid_id(&id) => {
            audit::note_version(&state, &current);
            reach.sees(&state, &current).await?
        }
        _ => true,
    };
    let message = if !is_valid_id(&id) || !in_reach {
        None
    } else {
        let precondition = if_match.map_or(Precondition::None, Precondition::IfMatch);
        match state
            .store
            .write(rt, &id, precondition, Change::Delete)
            .await?
        {
            Written::Version { version, .. } => Some(version),
            Written::NothingToDelete => None,
        }
    };
    let (text, version) = match &message {
        Some(version) => (format!("deleted {rt}/{id}"), Some(version)),
        None => (format!("{rt}/{id} does not exist; nothing to delete"), None),
    };
    let mut response = delete_response(&headers, text);
    if let Some(version) = version {
        response
            .headers_mut()
            .extend(headers::version_headers(version, None));
    }
    Ok(response)
}

/// `GET /fhir/_history`.
pub async fn history_system(
    State(state): State<AppState>,
    access: Access,
    Query(query): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    history(&state, &access, HistoryScope::System, &query, &headers).await
}

/// `GET /fhir/{type}/_history`.
pub async fn history_type(
    State(state): State<AppState>,
    access: Access,
    Path(type_name): Path<String>,
    Query(query): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    if rt == ResourceType::AuditEvent {
        return Err(FhirError::MethodNotAllowed(
            "AuditEvents have no history: each is recorded once and never changes".to_owned(),
        ));
    }
    access.reach(&state, rt, Permission::Read).await?;
    history(&state, &access, HistoryScope::Type(rt), &query, &headers).await
}

/// `GET /fhir/{type}/{id}/_history`.
pub async fn history_instance(
    State(state): State<AppState>,
    access: Access,
    Path((type_name, id)): Path<(String, String)>,
    Query(query): QueryPairs,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let rt = resource_type(&type_name)?;
    if rt == ResourceType::AuditEvent {
        return Err(FhirError::MethodNotAllowed(
            "AuditEvents have no history: each is recorded once and never changes".to_owned(),
        ));
    }
    visible_version(&state, &access, rt, &id).await?;
    history(
        &state,
        &access,
        HistoryScope::Instance(rt, id),
        &query,
        &headers,
    )
    .await
}

/// The paging cursor of history Bundles: the sequence number below which the next page starts.
const CURSOR: &str = "_cursor";

async fn history(
    state: &AppState,
    access: &Access,
    scope: HistoryScope,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> FhirResult<Response> {
    let shape = Shape::from_request(query, headers)?;
    let mut count = state.config.default_page_size;
    let mut since = None;
    let mut before_seq = None;
    for (name, value) in query {
        match name.as_str() {
            "_count" => {
                count = value
                    .parse::<u32>()
                    .map_err(|_| bad_parameter("_count", "must be a whole number"))?
                    .min(state.config.max_page_size);
            }
            "_since" => {
                since = Some(headers::parse_instant(value).ok_or_else(|| {
                    bad_parameter("_since", "must be an instant such as 2024-05-01T10:00:00Z")
                })?);
            }
            CURSOR => {
                before_seq = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| bad_parameter(CURSOR, "is not a cursor this server gave"))?,
                );
            }
            _ => {}
        }
    }
    let request = HistoryQuery {
        scope,
        since,
        before_seq,
        count,
    };
    let (mut versions, total) = state.store.history(&request).await?;
    let has_next = versions.len() > count as usize;
    versions.truncate(count as usize);
    // Paging runs on the versions before they are narrowed, so a page may come back with fewer
    // entries than `_count` (or none) and still have a next one; its total would count what
    // the token may not see, so it is left out.
    let narrowed = keep_visible_versions(state, access, &mut versions).await?;
    let total = if narrowed { None } else { Some(total) };

    let path = match &request.scope {
        HistoryScope::System => "_history".to_owned(),
        HistoryScope::Type(rt) => format!("{rt}/_history"),
        HistoryScope::Instance(rt, id) => format!("{rt}/{id}/_history"),
    };
    let link = |cursor: Option<i64>| {
        let mut pairs: Vec<(&str, String)> = vec![("_count", count.to_string())];
        if let Some(since) = since {
            pairs.push(("_since", since.to_instant()));
        }
        if let Some(cursor) = cursor {
            pairs.push((CURSOR, cursor.to_string()));
        }
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("{}/{path}?{query}", state.fhir_base)
    };
    let mut links = vec![BundleLink {
        relation: "self",
        url: link(before_seq),
    }];
    if has_next && let Some(last) = versions.last() {
        links.push(BundleLink {
            relation: "next",
            url: link(Some(last.seq)),
        });
    }

    let entries = versions
        .iter()
        .map(|version| history_entry(state, version))
        .collect::<FhirResult<Vec<_>>>()?;
    let bundle = Bundle::new("history", total, links, entries);
    Ok(json_response(StatusCode::OK, shape.to_bytes(&bundle)?))
}

fn history_entry<'a>(state: &AppState, version: &'a Version) -> FhirResult<BundleEntry<'a>> {
    let rt = version.resource_type;
    let resource = match &version.body {
        Some(body) => Some(
            serde_json::from_slice::<&RawValue>(body).map_err(|e| FhirError::Internal(e.into()))?,
        ),
        None => None,
    };
    let (url, status) = match version.method {
        WriteMethod::Post => (rt.to_string(), "201 Created"),
        WriteMethod::Put if version.version_id == 1 => {
            (format!("{rt}/{}", version.id), "201 Created")
        }
        WriteMethod::Put | WriteMethod::Patch => (format!("{rt}/{}", version.id), "200 OK"),
        WriteMethod::Delete => (format!("{rt}/{}", version.id), "200 OK"),
    };
    Ok(BundleEntry {
        full_url: format!("{}/{rt}/{}", state.fhir_base, version.id),
        resource,
        request: EntryRequest {
            method: version.method.as_str(),
            url,
        },
        response: EntryResponse {
            status,
            etag: version.etag(),
            last_modified: version.last_updated.to_instant(),
        },
    })
}

/// Drops the versions `access` may not read; returns whether its reach narrowed any type the
/// versions are of (whether or not it dropped one).
async fn keep_visible_versions(
    state: &AppState,
    access: &Access,
    versions: &mut Vec<Version>,
) -> FhirResult<bool> {
    if matches!(access, Access::Open) {
        return Ok(false);
    }
    let mut reaches = Reaches::new(access, Permission::Read);
    let mut kept = Vec::with_capacity(versions.len());
    for version in versions.drain(..) {
        if reaches.sees(state, &version).await? {
            audit::note_version(state, &version);
            kept.push(version);
        }
    }
    *versions = kept;
    Ok(reaches.narrowed())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleEntry<'a> {
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    request: EntryRequest,
    response: EntryResponse,
}

#[derive(Serialize)]
struct EntryRequest {
    method: &'static str,
    url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryResponse {
    status: &'static str,
    etag: String,
    last_modified: String,
}
