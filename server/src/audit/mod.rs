//! The audit trail: an AuditEvent for every FHIR request that reaches for patient data (read,
//! search, write, operation, and the attempts that fail, 401 and 403 included) and for every
//! authorization event (login, token issued or refused, refresh, revocation), in the style of
//! IHE Basic Audit Log Patterns: who (the user, the app, the source address), what (the
//! interaction, the resource, the query), which patient, and the outcome.
//!
//! - [`record_requests`], the middleware around the FHIR routes, notes what the request is
//!   and who made it; handlers add the patients and resources they touched through [`note`];
//!   when the handler is done it appends one record per patient (IHE: one AuditEvent per
//!   patient), unless a write committed them already, and the response leaves only once they
//!   are durable. Commands that write through the same code on the server's machine
//!   (`telemed import`) are audited alike by [`record_local`], as the command and its user.
//! - [`Auditor`] appends records in groups, one fsync per group. On SQLite a write's records
//!   commit in the write's own transaction ([`records_for_write`]); the others are appended to
//!   an audit journal, a file beside the database that the store's writer empties into the
//!   trail in batches (see `store/journal.rs`). On PostgreSQL they are committed in groups by a
//!   task of their own.
//! - Each record carries the SHA-256 of the record before it and its own hash over that and
//!   every column (see [`chain_hash`]); [`verify`] walks the chain and names the first record
//!   that does not fit (`telemed audit verify`).
//! - AuditEvents are read and searched through the FHIR API (see
//!   [`crate::fhir::audit_events`]); they cannot be created, changed or deleted through it.
//!
//! When authorization is disabled (a trusted network, test data) nobody is identified and
//! nothing is audited.

mod render;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use crate::access::Access;
use crate::app::AppState;
use crate::error::FhirError;
use crate::store::{Cell, Change, Kind, Micros, Store, Version};
use fhir_models::ResourceType;
use std::collections::HashSet;

pub use crate::store::Auditor;
pub use render::render;

/// One row of the audit trail, before it is chained: the columns the AuditEvent resource is
/// made from when it is read ([`render`]), so that recording costs no JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub recorded: Micros,
    /// `rest`, or the DICOM code of an authentication event ([`AUTHENTICATION`]).
    pub type_code: String,
    /// The interaction (`read`, `search-type`, `create`, …) or authentication event (`login`,
    /// `token`, `refresh`, `revoke`, …).
    pub subtype: String,
    /// `C`, `R`, `U`, `D` or `E`.
    pub action: &'static str,
    /// `0` success, `4` minor failure (the client's), `8` serious failure (the server's).
    pub outcome: &'static str,
    /// The Patient (id) the event concerns.
    pub patient: Option<String>,
    /// Who: a fhirUser reference, a username, or `client/{id}` for a backend service.
    pub agent: Option<String>,
    /// The username, for an authentication event.
    pub user_name: Option<String>,
    pub client_id: Option<String>,
    /// The address the request came from.
    pub address: Option<String>,
    /// The resource the request named (`Type/id`).
    pub entity: Option<String>,
    /// The versions it read or wrote (`Type/id/_history/n`), space-separated.
    pub entities: Option<String>,
    /// A search's query string.
    pub query: Option<String>,
    /// The reason given to break the glass.
    pub purpose: Option<String>,
    /// Why an authentication event failed.
    pub detail: Option<String>,
}

/// The type code of authentication events (DICOM 110114, User Authentication).
pub const AUTHENTICATION: &str = "110114";

impl AuditRecord {
    /// The text columns, in the order the chain hashes them.
    pub(crate) fn texts(&self) -> [Option<&str>; 14] {
        [
            Some(self.type_code.as_str()),
            Some(self.subtype.as_str()),
            Some(self.action),
            Some(self.outcome),
            self.patient.as_deref(),
            self.agent.as_deref(),
            self.user_name.as_deref(),
            self.client_id.as_deref(),
            self.address.as_deref(),
            self.entity.as_deref(),
            self.entities.as_deref(),
            self.query.as_deref(),
            self.purpose.as_deref(),
            self.detail.as_deref(),
        ]
    }
}

/// A record's place in the chain: its hash covers the hash before it, its position and every
/// column, each field length-prefixed so that no two different rows hash alike.
pub fn chain_hash(prev: &[u8], pos: i64, record: &AuditRecord) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(prev);
    hash.update(pos.to_be_bytes());
    hash.update(record.recorded.0.to_be_bytes());
    for field in record.texts() {
        match field {
            None => hash.update([0]),
            Some(text) => {
                hash.update([1]);
                hash.update((text.len() as u64).to_be_bytes());
                hash.update(text.as_bytes());
            }
        }
    }
    hash.finalize().into()
}

/// The columns a record is read back from, its position first.
pub(crate) const RECORD_COLUMNS: &str = "chain_pos, recorded, type_code, subtype, action, \
    outcome, patient, agent, user_name, client_id, address, entity, entities, query, purpose, \
    detail";

/// The kinds of [`RECORD_COLUMNS`].
pub(crate) fn record_kinds() -> Vec<Kind> {
    let mut kinds = vec![Kind::Int; 2];
    kinds.extend([Kind::Text; 14]);
    kinds
}

/// A record and its position, read from the cells of [`RECORD_COLUMNS`] (the iterator then
/// holds whatever columns followed).
pub(crate) fn read_record(cells: &mut impl Iterator<Item = Cell>) -> (i64, AuditRecord) {
    let mut next = || cells.next().unwrap_or(Cell::Null);
    let int = |c: Cell| if let Cell::Int(n) = c { n } else { i64::MIN };
    let text = |c: Cell| if let Cell::Text(t) = c { Some(t) } else { None };
    let pos = int(next());
    let record = AuditRecord {
        recorded: Micros(int(next())),
        type_code: text(next()).unwrap_or_default(),
        subtype: text(next()).unwrap_or_default(),
        action: known_code(text(next())),
        outcome: known_code(text(next())),
        patient: text(next()),
        agent: text(next()),
        user_name: text(next()),
        client_id: text(next()),
        address: text(next()),
        entity: text(next()),
        entities: text(next()),
        query: text(next()),
        purpose: text(next()),
        detail: text(next()),
    };
    (pos, record)
}

/// What a request is and did: what [`record_requests`] knows of it from the start, and what
/// its handler adds while it runs. When the request is done, its records are made from it;
/// a write makes them earlier, to commit them with itself ([`records_for_write`]).
pub struct Note {
    /// When the request came.
    recorded: Micros,
    /// The interaction and its action code.
    subtype: &'static str,
    action: &'static str,
    /// The resource the URL names, and the query of a search.
    entity: Option<String>,
    query: Option<String>,
    /// Where the request came from.
    origin: Origin,
    /// Where the authentication leaves who made the request.
    access: Arc<Mutex<Option<Access>>>,
    /// The patients whose data the request reached or tried to reach.
    pub patients: Vec<String>,
    /// Resources (`Type/id/_history/vid`) it read or wrote, when few enough to list.
    pub entities: Vec<String>,
    /// Whether its records were committed with its write.
    recorded_with_write: bool,
}

impl Note {
    /// The note of an interaction coming from `origin`, before its handler has run.
    fn new(
        subtype: &'static str,
        action: &'static str,
        origin: Origin,
        access: Arc<Mutex<Option<Access>>>,
    ) -> Self {
        Self {
            recorded: Micros::now(),
            subtype,
            action,
            entity: None,
            query: None,
            origin,
            access,
            patients: Vec::new(),
            entities: Vec::new(),
            recorded_with_write: false,
        }
    }

    /// The request's records with `outcome`: one per patient it reached (IHE: one AuditEvent
    /// per patient), or one about no patient.
    fn records(&self, outcome: &'static str) -> Vec<AuditRecord> {
        let access = self.access.lock().ok().and_then(|slot| slot.clone());
        let who = match (&access, &self.origin.local) {
            (Some(access @ Access::Token(_)), _) => Who::of(access, self.origin.address.clone()),
            (_, Some(local)) => Who {
                agent: Some(local.agent.clone()),
                user_name: local.user_name.clone(),
                ..Who::default()
            },
            _ => Who {
                address: self.origin.address.clone(),
                ..Who::default()
            },
        };
        let mut patients = self.patients.clone();
        if patients.is_empty()
            && let Some(patient) = &who.patient
        {
            patients.push(patient.clone());
        }
        let searched = self.subtype.starts_with("search") || self.subtype.starts_with("history");
        let entities = (!self.entities.is_empty()).then(|| self.entities.join(" "));
        let record = |patient: Option<String>| AuditRecord {
            recorded: self.recorded,
            type_code: "rest".to_owned(),
            subtype: self.subtype.to_owned(),
            action: self.action,
            outcome,
            patient,
            agent: who.agent.clone(),
            user_name: who.user_name.clone(),
            client_id: who.client_id.clone(),
            address: who.address.clone(),
            entity: self.entity.clone(),
            entities: entities.clone(),
            query: self.query.clone().filter(|_| searched),
            purpose: who.break_glass.clone(),
            detail: None,
        };
        if patients.is_empty() {
            vec![record(None)]
        } else {
            patients.into_iter().map(|p| record(Some(p))).collect()
        }
    }
}

/// The records of the current request as a successful write, for the store to commit with the
/// write; none outside an audited request, or if they were committed already.
pub fn records_for_write() -> Vec<AuditRecord> {
    NOTE.try_with(|note| match note.lock() {
        Ok(note) if !note.recorded_with_write => note.records("0"),
        _ => Vec::new(),
    })
    .unwrap_or_default()
}

/// Tells the current request that its records were committed with its write.
pub fn mark_recorded() {
    note(|note| note.recorded_with_write = true);
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
pub(crate) fn outcome(status: axum::http::StatusCode) -> &'static str {
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
    /// The operating system's user, for a command run on the server's machine.
    pub user_name: Option<String>,
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
                    user_name: None,
                }
            }
        }
    }
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
    // A batch entry runs inside the Bundle's request (or command): it comes from the same
    // address, or the same local user.
    let mut origin = ORIGIN.try_with(Clone::clone).unwrap_or_default();
    if let Some(ConnectInfo(client)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        origin.address = Some(client.ip().to_string());
    }
    let access = Arc::new(Mutex::new(None::<Access>));
    let note = Note {
        entity: instance_of(uri.path()),
        query: uri.query().map(str::to_owned),
        ..Note::new(subtype, action, origin, access.clone())
    };
    let mut request = request;
    request.extensions_mut().insert(AccessSlot(access));
    let (response, note) = with_note(note, next.run(request)).await;
    match finish(&auditor, &note, outcome(response.status())).await {
        Ok(()) => response,
        // The response must not leave without its record: the request fails instead.
        Err(error) => {
            FhirError::Internal(error.context("cannot record the audit event")).into_response()
        }
    }
}

/// Runs `work` as the audited request `note` describes (the batch entries it runs come from
/// where it comes from); returns what it gave and the note as the work left it.
async fn with_note<F: Future>(note: Note, work: F) -> (F::Output, Arc<Mutex<Note>>) {
    let origin = note.origin.clone();
    let note = Arc::new(Mutex::new(note));
    let output = ORIGIN.scope(origin, NOTE.scope(note.clone(), work)).await;
    (output, note)
}

/// Appends the records of `note` with `outcome` and returns once they are durable; nothing
/// when a write committed them already.
async fn finish(
    auditor: &Auditor,
    note: &Mutex<Note>,
    outcome: &'static str,
) -> anyhow::Result<()> {
    let records = match note.lock() {
        // A write that stood committed its records with it.
        Ok(note) if note.recorded_with_write => return Ok(()),
        Ok(note) => note.records(outcome),
        Err(poisoned) => poisoned.into_inner().records(outcome),
    };
    auditor.append(records).await
}

/// Who runs a command on the server's own machine (`telemed import`) rather than over HTTP.
#[derive(Debug, Clone)]
pub struct Local {
    /// The command, as the audit trail names the agent.
    pub agent: String,
    /// The operating system's user running it.
    pub user_name: Option<String>,
}

impl Local {
    /// The command `agent`, run by the operating system's user of this process (`USER`, else
    /// `LOGNAME`).
    pub fn command(agent: &str) -> Self {
        Self {
            agent: agent.to_owned(),
            user_name: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .ok()
                .filter(|name| !name.is_empty()),
        }
    }
}

/// Audits `work`, done on this machine by `local` as the interaction `subtype` with `action`
/// (see [`interaction`]), the way [`record_requests`] audits a request: the writes it makes
/// commit their records with them, the batch entries it runs through the router are recorded
/// as `local`'s, and otherwise one record per patient it reached is appended, with the
/// outcome `outcome_of` gives its result. Returns once they are durable; an error if they
/// could not be made so. Nothing is recorded when authorization, and so the audit, is off.
pub async fn record_local<T>(
    state: &AppState,
    local: Local,
    (subtype, action): (&'static str, &'static str),
    work: impl Future<Output = T>,
    outcome_of: impl FnOnce(&T) -> &'static str,
) -> anyhow::Result<T> {
    let Some(auditor) = state.auditor.clone() else {
        return Ok(work.await);
    };
    let origin = Origin {
        address: None,
        local: Some(Arc::new(local)),
    };
    let note = Note::new(subtype, action, origin, Arc::new(Mutex::new(None)));
    let (output, note) = with_note(note, work).await;
    finish(&auditor, &note, outcome_of(&output))
        .await
        .context("cannot record the audit event")?;
    Ok(output)
}

/// Where the work being audited comes from, for the batch entries it runs through the router.
#[derive(Clone, Default)]
struct Origin {
    /// The client's address, for a request over HTTP.
    address: Option<String>,
    /// Who runs it, for work done on the server's machine.
    local: Option<Arc<Local>>,
}

tokio::task_local! {
    /// Where the request being audited comes from, for the batch entries it runs.
    static ORIGIN: Origin;
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
    /// Every record fits: this many in the chain, and this many in the audit journal (SQLite),
    /// waiting to join it. While servers run, records move from the one to the other, so the
    /// two counts are a snapshot that may count a record twice or miss one.
    Intact {
        chained: u64,
        waiting: u64,
    },
    Broken(Broken),
    /// A segment of the audit journal (its file name) was changed: its entry that does not
    /// match its hash, counting from 1.
    JournalBroken {
        segment: String,
        entry: usize,
        why: &'static str,
    },
}

/// Walks the whole chain, recomputing each hash, and then the entries of the audit journal
/// that wait to join it.
pub async fn verify(store: &Store) -> anyhow::Result<Verified> {
    let page = format!(
        "SELECT {RECORD_COLUMNS}, prev_hash, hash FROM audit_events WHERE chain_pos > $1 \
         ORDER BY chain_pos LIMIT 2000"
    );
    let mut kinds = record_kinds();
    kinds.extend([Kind::Blob; 2]);
    let mut running = vec![0u8; 32];
    let mut expected = 1i64;
    loop {
        let rows = store
            .query(&page, &[Cell::Int(expected - 1)], &kinds)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the audit trail: {e}"))?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let mut cells = row.into_iter();
            let (pos, record) = read_record(&mut cells);
            let blob = |c: Option<Cell>| {
                if let Some(Cell::Blob(b)) = c {
                    b
                } else {
                    Vec::new()
                }
            };
            let broken = |why: &str| Broken {
                chain_pos: expected,
                why: why.to_owned(),
            };
            if pos != expected {
                return Ok(Verified::Broken(broken(&format!(
                    "it is missing (the next record is {pos})"
                ))));
            }
            let prev = blob(cells.next());
            let hash = blob(cells.next());
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
    let journal = store
        .verify_journal()
        .context("cannot read the audit journal")?;
    if let Some((segment, broken)) = journal.broken {
        return Ok(Verified::JournalBroken {
            segment,
            entry: broken.entry,
            why: broken.why,
        });
    }
    Ok(Verified::Intact {
        chained: u64::try_from(expected - 1).unwrap_or(0),
        waiting: journal.waiting,
    })
}

/// The action and outcome codes are a closed set; any other stored value cannot match a hash
/// made from a record, so it becomes a marker that fails the check.
pub(crate) fn known_code(code: Option<String>) -> &'static str {
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
    let agent = event
        .fhir_user
        .clone()
        .or_else(|| event.username.clone())
        .or_else(|| event.client_id.as_ref().map(|c| format!("client/{c}")));
    AuditRecord {
        recorded: Micros::now(),
        type_code: AUTHENTICATION.to_owned(),
        subtype: event.kind.to_owned(),
        action: "E",
        outcome: if event.success { "0" } else { "4" },
        patient: event.patient.clone(),
        agent,
        user_name: event.username.clone(),
        client_id: event.client_id.clone(),
        address: event.address.clone(),
        entity: None,
        entities: None,
        query: None,
        purpose: None,
        detail: event.detail.clone(),
    }
}
