//! The audit trail: an AuditEvent for every FHIR request that reaches for patient data (read,
//! search, write, operation, and the attempts that fail, 401 and 403 included) and for every
//! authorization event (login, token issued or refused, refresh, revocation), in the style of
//! IHE Basic Audit Log Patterns: who (the user, the app, the source address), what (the
//! interaction, the resource, the query), which patient, and the outcome.
//!
//! - [`record_requests`], the middleware around the FHIR routes, notes what the request is
//!   and who made it; handlers add the patients and resources they touched through [`note`];
//!   when the handler is done it appends one record per patient (IHE: one AuditEvent per
//!   patient) and the response leaves only once they are durable.
//! - [`Auditor`] appends records in groups, one transaction and one fsync per group, as the
//!   store's writer does: on SQLite a thread of its own, on PostgreSQL a task of its own.
//! - Each record carries the SHA-256 of the record before it and its own hash over that and
//!   every column (see [`chain_hash`]); [`verify`] walks the chain and names the first record
//!   that does not fit (`telemed audit verify`).
//! - AuditEvents are read and searched through the FHIR API (see
//!   [`crate::fhir::audit_events`]); they cannot be created, changed or deleted through it.
//!
//! When authorization is disabled (a trusted network, test data) nobody is identified and
//! nothing is audited.

mod writer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::access::Access;
use crate::app::AppState;
use crate::error::FhirError;
use crate::store::{Cell, Change, Kind, Micros, Store, Version};
use fhir_models::ResourceType;
use std::collections::HashSet;

pub use writer::Auditor;

/// One row of the audit trail, before it is chained.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub recorded: Micros,
    /// `rest`, or the DICOM code of an authentication event (`110114`).
    pub type_code: String,
    /// The interaction (`read`, `search-type`, `create`, …) or auth event (`login`, `token`,
    /// `refresh`, `revoke`, …).
    pub subtype: String,
    /// `C`, `R`, `U`, `D` or `E`.
    pub action: &'static str,
    /// `0` success, `4` minor failure (the client's), `8` serious failure (the server's).
    pub outcome: &'static str,
    /// The Patient (id) the event concerns.
    pub patient: Option<String>,
    /// Who: a fhirUser reference, a username, or `client/{id}` for a backend service.
    pub agent: Option<String>,
    pub client_id: Option<String>,
    /// The resource it was about (`Type/id`).
    pub entity: Option<String>,
    /// The AuditEvent resource, without `id` and `meta`.
    pub body: Vec<u8>,
}

/// A record's place in the chain: its hash covers the hash before it, its position and every
/// column, each field length-prefixed so that no two different rows hash alike.
pub fn chain_hash(prev: &[u8], pos: i64, record: &AuditRecord) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(prev);
    hash.update(pos.to_be_bytes());
    hash.update(record.recorded.0.to_be_bytes());
    let fields = [
        Some(record.type_code.as_str()),
        Some(record.subtype.as_str()),
        Some(record.action),
        Some(record.outcome),
        record.patient.as_deref(),
        record.agent.as_deref(),
        record.client_id.as_deref(),
        record.entity.as_deref(),
    ];
    for field in fields {
        match field {
            None => hash.update([0]),
            Some(text) => {
                hash.update([1]);
                hash.update((text.len() as u64).to_be_bytes());
                hash.update(text.as_bytes());
            }
        }
    }
    hash.update((record.body.len() as u64).to_be_bytes());
    hash.update(&record.body);
    hash.finalize().into()
}

/// What a request did, as its handler tells it: filled in while the request runs, read by
/// [`record_requests`] when it is done.
#[derive(Debug, Default)]
pub struct Note {
    /// The patients whose data the request reached or tried to reach.
    pub patients: Vec<String>,
    /// Resources (`Type/id/_history/vid`) it read or wrote, when few enough to list.
    pub entities: Vec<String>,
    /// The interaction, when the handler knows better than the route (`operation`).
    pub subtype: Option<&'static str>,
}

/// The most resources one AuditEvent lists; a search page beyond that is audited by its query.
const MAX_ENTITIES: usize = 100;

tokio::task_local! {
    /// The note of the FHIR request being handled, set by [`record_requests`].
    static NOTE: Arc<Mutex<Note>>;
}

/// Adds to the current request's note; nothing outside an audited request.
pub fn note(update: impl FnOnce(&mut Note)) {
    let _ = NOTE.try_with(|note| {
        if let Ok(mut note) = note.lock() {
            update(&mut note);
        }
    });
}

/// Notes that the request reached `patients`.
pub fn note_patients(patients: impl IntoIterator<Item = String>) {
    note(|note| {
        for patient in patients {
            if !note.patients.contains(&patient) {
                note.patients.push(patient);
            }
        }
    });
}

/// Notes a resource the request read or wrote, with the patients whose compartment it is in.
pub fn note_resource(entity: String, patients: impl IntoIterator<Item = String>) {
    note_patients(patients);
    note(|note| {
        if note.entities.len() < MAX_ENTITIES {
            note.entities.push(entity);
        }
    });
}

/// Whether the current task is handling an audited request (so that working out what to
/// note is worth it).
pub fn is_recording() -> bool {
    NOTE.try_with(|_| ()).is_ok()
}

/// Notes a stored version the request reads, with its patients.
pub fn note_version(state: &AppState, version: &Version) {
    if !is_recording() {
        return;
    }
    let (rt, id) = (version.resource_type, &version.id);
    let patients = match &version.body {
        Some(body) => crate::access::compartments_of_body(state, rt, id, body),
        None => HashSet::new(),
    };
    note_resource(
        format!("{rt}/{id}/_history/{}", version.version_id),
        patients,
    );
}

/// Notes a write the request makes (or tries to), with the patients of what it stores.
pub fn note_change(rt: ResourceType, id: &str, change: &Change) {
    if !is_recording() {
        return;
    }
    let patients = match change {
        Change::Put { index, .. } => crate::access::compartments_of(rt, id, &index.references),
        Change::Delete => HashSet::new(),
    };
    note_resource(format!("{rt}/{id}"), patients);
}

/// The interaction a request is, from its method and route: the AuditEvent's subtype
/// (http://hl7.org/fhir/restful-interaction) and action.
fn interaction(method: &Method, route: &str) -> (&'static str, &'static str) {
    let get = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/fhir/" | "/fhir" if get => ("search-system", "E"),
        "/fhir/" | "/fhir" => ("transaction", "E"),
        "/fhir/_search" => ("search-system", "E"),
        "/fhir/_history" => ("history-system", "R"),
        "/fhir/{type}" if get => ("search-type", "E"),
        "/fhir/{type}" if *method == Method::POST => ("create", "C"),
        "/fhir/{type}" if *method == Method::PUT => ("update", "U"),
        "/fhir/{type}" if *method == Method::DELETE => ("delete", "D"),
        "/fhir/{type}/_search" => ("search-type", "E"),
        "/fhir/{type}/_history" => ("history-type", "R"),
        "/fhir/{type}/{id}" if get => ("read", "R"),
        "/fhir/{type}/{id}" if *method == Method::PUT => ("update", "U"),
        "/fhir/{type}/{id}" if *method == Method::PATCH => ("patch", "U"),
        "/fhir/{type}/{id}" if *method == Method::DELETE => ("delete", "D"),
        "/fhir/{type}/{id}/_history" => ("history-instance", "R"),
        "/fhir/{type}/{id}/_history/{vid}" => ("vread", "R"),
        "/fhir/{type}/{id}/$everything" => ("operation", "E"),
        _ => ("operation", "E"),
    }
}

/// The AuditEvent outcome of an HTTP status.
fn outcome(status: axum::http::StatusCode) -> &'static str {
    if status.is_server_error() {
        "8"
    } else if status.is_client_error() {
        "4"
    } else {
        "0"
    }
}

/// Who made a request, as the audit trail names them.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// A fhirUser reference, a username or `client/{id}`.
    pub agent: Option<String>,
    pub client_id: Option<String>,
    /// The patient in the token's context.
    pub patient: Option<String>,
    /// The break-glass reason, if given.
    pub break_glass: Option<String>,
    /// The address the request came from.
    pub address: Option<String>,
}

impl Who {
    fn of(access: &Access, address: Option<String>) -> Self {
        match access {
            Access::Open => Self {
                address,
                ..Self::default()
            },
            Access::Token(token) => {
                let claims = &token.principal.claims;
                Self {
                    agent: Some(
                        claims
                            .fhir_user
                            .clone()
                            .unwrap_or_else(|| format!("client/{}", claims.client_id)),
                    ),
                    client_id: Some(claims.client_id.clone()),
                    patient: claims.patient.clone(),
                    break_glass: token.break_glass.clone(),
                    address,
                }
            }
        }
    }
}

/// The AuditEvent resource of a REST interaction (IHE BALP style).
#[expect(clippy::too_many_arguments, reason = "the parts of one AuditEvent")]
fn rest_event(
    recorded: Micros,
    subtype: &str,
    action: &str,
    outcome: &str,
    who: &Who,
    patient: Option<&str>,
    entities: &[String],
    query: Option<&str>,
) -> Value {
    let mut agents = Vec::new();
    if let Some(agent) = &who.agent {
        let who_value = if agent.starts_with("client/") {
            json!({ "identifier": { "system": "urn:telemed:client", "value": who.client_id } })
        } else {
            json!({ "reference": agent })
        };
        let mut human = json!({
            "type": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP", "display": "information recipient",
            }]},
            "who": who_value,
            "requestor": true,
        });
        if let Some(address) = &who.address {
            human["network"] = json!({ "address": address, "type": "2" });
        }
        agents.push(human);
        if !agent.starts_with("client/")
            && let Some(client) = &who.client_id
        {
            agents.push(json!({
                "type": { "coding": [{
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "110150", "display": "Application",
                }]},
                "who": { "identifier": { "system": "urn:telemed:client", "value": client } },
                "requestor": false,
            }));
        }
    } else {
        let mut anonymous = json!({ "who": { "display": "anonymous" }, "requestor": true });
        if let Some(address) = &who.address {
            anonymous["network"] = json!({ "address": address, "type": "2" });
        }
        agents.push(anonymous);
    }
    let mut entity = Vec::new();
    if let Some(patient) = patient {
        entity.push(json!({
            "what": { "reference": format!("Patient/{patient}") },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1" },
        }));
    }
    for what in entities {
        entity.push(json!({
            "what": { "reference": what },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2" },
        }));
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        entity.push(json!({
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24" },
            "query": base64::engine::general_purpose::STANDARD.encode(query),
        }));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest", "display": "RESTful Operation",
        },
        "subtype": [{ "system": "http://hl7.org/fhir/restful-interaction", "code": subtype }],
        "action": action,
        "recorded": recorded.to_instant(),
        "outcome": outcome,
        "agent": agents,
        "source": {
            "observer": { "display": "telemed" },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server",
            }],
        },
    });
    if let Some(reason) = &who.break_glass {
        event["purposeOfEvent"] = json!([{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": "BTG", "display": "break the glass",
            }],
            "text": reason,
        }]);
    }
    if !entity.is_empty() {
        event["entity"] = Value::Array(entity);
    }
    event
}

/// The middleware that audits every FHIR request it wraps (outside the authentication, so
/// that a request refused for want of a token is audited too).
pub async fn record_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auditor) = state.auditor.clone() else {
        return next.run(request).await;
    };
    let recorded = Micros::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let (subtype, action) = interaction(request.method(), &route);
    // Inside the `/fhir` router the path has lost its prefix; the original has it.
    let uri = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| request.uri().clone(), |original| original.0.clone());
    let query = uri.query().map(str::to_owned);
    let entity = instance_of(uri.path());
    // A batch entry runs inside the Bundle's request: it comes from the same address.
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .or_else(|| ADDRESS.try_with(Clone::clone).ok().flatten());
    let note = Arc::new(Mutex::new(Note::default()));
    let seen = Arc::new(Mutex::new(None::<Access>));
    let mut request = request;
    request.extensions_mut().insert(AccessSlot(seen.clone()));
    let response = ADDRESS
        .scope(address.clone(), NOTE.scope(note.clone(), next.run(request)))
        .await;
    let access = seen.lock().ok().and_then(|mut slot| slot.take());
    let who = access.as_ref().map_or_else(
        || Who {
            address: address.clone(),
            ..Who::default()
        },
        |access| Who::of(access, address.clone()),
    );
    let note = std::mem::take(&mut *note.lock().unwrap_or_else(|p| p.into_inner()));
    let subtype = note.subtype.unwrap_or(subtype);
    let outcome = outcome(response.status());
    let mut patients = note.patients;
    if patients.is_empty()
        && let Some(patient) = &who.patient
    {
        patients.push(patient.clone());
    }
    let mut entities = note.entities;
    if entities.is_empty()
        && let Some(entity) = &entity
    {
        entities.push(entity.clone());
    }
    let is_search = subtype.starts_with("search") || subtype.starts_with("history");
    let records: Vec<AuditRecord> = if patients.is_empty() {
        vec![None]
    } else {
        patients.iter().map(Some).collect()
    }
    .into_iter()
    .map(|patient| {
        let body = rest_event(
            recorded,
            subtype,
            action,
            outcome,
            &who,
            patient.map(String::as_str),
            &entities,
            if is_search { query.as_deref() } else { None },
        );
        AuditRecord {
            recorded,
            type_code: "rest".to_owned(),
            subtype: subtype.to_owned(),
            action,
            outcome,
            patient: patient.cloned(),
            agent: who.agent.clone(),
            client_id: who.client_id.clone(),
            entity: entity.clone(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    })
    .collect();
    match auditor.append(records).await {
        Ok(()) => response,
        // The response must not leave without its record: the request fails instead.
        Err(error) => {
            FhirError::Internal(error.context("cannot record the audit event")).into_response()
        }
    }
}

tokio::task_local! {
    /// The client address of the request being audited, for the batch entries it runs.
    static ADDRESS: Option<String>;
}

/// Where the authentication middleware leaves the request's [`Access`] for the audit.
#[derive(Clone)]
pub struct AccessSlot(pub Arc<Mutex<Option<Access>>>);

/// `Type/id` of an instance-level path (`/fhir/Type/id…`).
fn instance_of(path: &str) -> Option<String> {
    let mut segments = path.strip_prefix("/fhir/")?.split('/');
    let rt = segments
        .next()
        .filter(|s| !s.is_empty() && !s.starts_with(['_', '$']))?;
    let id = segments
        .next()
        .filter(|s| !s.is_empty() && !s.starts_with(['_', '$']))?;
    Some(format!("{rt}/{id}"))
}

/// The first link of the chain that does not hold, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The position in the chain (`chain_pos`, the AuditEvent's id) of the first record that
    /// does not fit.
    pub chain_pos: i64,
    pub why: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every record fits; this many were checked.
    Intact(u64),
    Broken(Broken),
}

/// Walks the whole chain, recomputing each hash.
pub async fn verify(store: &Store) -> anyhow::Result<Verified> {
    const PAGE: &str = "SELECT chain_pos, recorded, type_code, subtype, action, outcome, \
        patient, agent, client_id, entity, body, prev_hash, hash FROM audit_events \
        WHERE chain_pos > $1 ORDER BY chain_pos LIMIT 2000";
    const KINDS: [Kind; 13] = [
        Kind::Int,
        Kind::Int,
        Kind::Text,
        Kind::Text,
        Kind::Text,
        Kind::Text,
        Kind::Text,
        Kind::Text,
        Kind::Text,
        Kind::Text,
        Kind::Blob,
        Kind::Blob,
        Kind::Blob,
    ];
    let mut running = vec![0u8; 32];
    let mut expected = 1i64;
    loop {
        let rows = store
            .query(PAGE, &[Cell::Int(expected - 1)], &KINDS)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the audit trail: {e}"))?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let mut cells = row.into_iter();
            let mut next = || cells.next().unwrap_or(Cell::Null);
            let int = |c: Cell| if let Cell::Int(n) = c { n } else { i64::MIN };
            let text = |c: Cell| if let Cell::Text(t) = c { Some(t) } else { None };
            let blob = |c: Cell| if let Cell::Blob(b) = c { b } else { Vec::new() };
            let pos = int(next());
            let broken = |why: &str| Broken {
                chain_pos: expected,
                why: why.to_owned(),
            };
            if pos != expected {
                return Ok(Verified::Broken(broken(&format!(
                    "it is missing (the next record is {pos})"
                ))));
            }
            let record = AuditRecord {
                recorded: Micros(int(next())),
                type_code: text(next()).unwrap_or_default(),
                subtype: text(next()).unwrap_or_default(),
                action: leak_code(text(next())),
                outcome: leak_code(text(next())),
                patient: text(next()),
                agent: text(next()),
                client_id: text(next()),
                entity: text(next()),
                body: blob(next()),
            };
            let prev = blob(next());
            let hash = blob(next());
            if prev != running {
                return Ok(Verified::Broken(broken(
                    "its prev_hash is not the hash of the record before it",
                )));
            }
            let computed = chain_hash(&prev, pos, &record);
            if hash != computed {
                return Ok(Verified::Broken(broken(
                    "its contents do not match its hash (the record was changed)",
                )));
            }
            running = hash;
            expected += 1;
        }
    }
    let head = store
        .query(
            "SELECT last_pos, last_hash FROM audit_chain WHERE id = 1",
            &[],
            &[Kind::Int, Kind::Blob],
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the end of the audit chain: {e}"))?;
    if let Some([Cell::Int(last_pos), Cell::Blob(last_hash)]) = head.first().map(Vec::as_slice)
        && (*last_pos != expected - 1 || *last_hash != running)
    {
        return Ok(Verified::Broken(Broken {
            chain_pos: expected,
            why: format!(
                "the chain ends at record {} but its head names record {last_pos}: records \
                 were removed from the end, or the head was changed",
                expected - 1
            ),
        }));
    }
    Ok(Verified::Intact(u64::try_from(expected - 1).unwrap_or(0)))
}

/// The action and outcome codes are a closed set; any other stored value cannot match a hash
/// made from a record, so it becomes a marker that fails the check.
fn leak_code(code: Option<String>) -> &'static str {
    const CODES: [&str; 9] = ["C", "R", "U", "D", "E", "0", "4", "8", "12"];
    code.and_then(|c| CODES.iter().find(|k| **k == c).copied())
        .unwrap_or("?")
}

/// The authorization server's events, into the same trail.
pub struct AuthTrail(pub Auditor);

impl smart_auth::server::AuditSink for AuthTrail {
    fn record(
        &self,
        event: smart_auth::server::AuthEvent,
    ) -> futures::future::BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { self.0.append(vec![auth_record(&event)]).await })
    }
}

/// The audit record of an authorization event (DICOM 110114, User Authentication).
fn auth_record(event: &smart_auth::server::AuthEvent) -> AuditRecord {
    let recorded = Micros::now();
    let outcome = if event.success { "0" } else { "4" };
    let agent = event
        .fhir_user
        .clone()
        .or_else(|| event.username.clone())
        .or_else(|| event.client_id.as_ref().map(|c| format!("client/{c}")));
    let mut agents = Vec::new();
    if let Some(username) = &event.username {
        let mut user = json!({
            "who": match &event.fhir_user {
                Some(reference) => json!({ "reference": reference, "display": username }),
                None => json!({ "display": username }),
            },
            "altId": username,
            "requestor": true,
        });
        if let Some(address) = &event.address {
            user["network"] = json!({ "address": address, "type": "2" });
        }
        agents.push(user);
    }
    if let Some(client) = &event.client_id {
        let mut app = json!({
            "type": { "coding": [{
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110150", "display": "Application",
            }]},
            "who": { "identifier": { "system": "urn:telemed:client", "value": client } },
            "requestor": event.username.is_none(),
        });
        if event.username.is_none()
            && let Some(address) = &event.address
        {
            app["network"] = json!({ "address": address, "type": "2" });
        }
        agents.push(app);
    }
    if agents.is_empty() {
        let mut anonymous = json!({ "who": { "display": "anonymous" }, "requestor": true });
        if let Some(address) = &event.address {
            anonymous["network"] = json!({ "address": address, "type": "2" });
        }
        agents.push(anonymous);
    }
    let subtype = if event.kind == "login" {
        json!({ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login" })
    } else {
        json!({ "system": "urn:telemed:auth-event", "code": event.kind })
    };
    let mut body = json!({
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110114", "display": "User Authentication",
        },
        "subtype": [subtype],
        "action": "E",
        "recorded": recorded.to_instant(),
        "outcome": outcome,
        "agent": agents,
        "source": {
            "observer": { "display": "telemed authorization server" },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server",
            }],
        },
    });
    if let Some(detail) = &event.detail {
        body["outcomeDesc"] = json!(detail);
    }
    if let Some(patient) = &event.patient {
        body["entity"] = json!([{
            "what": { "reference": format!("Patient/{patient}") },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1" },
        }]);
    }
    AuditRecord {
        recorded,
        type_code: "110114".to_owned(),
        subtype: event.kind.to_owned(),
        action: "E",
        outcome,
        patient: event.patient.clone(),
        agent,
        client_id: event.client_id.clone(),
        entity: None,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}
