//! Who a FHIR request acts for, and what it may reach.
//!
//! Every request under `/fhir` (but the CapabilityStatement and the SMART configuration)
//! passes [`authenticate`]: no valid access token, no entry (401). What the token then allows
//! is decided per resource type and permission by [`Access::reach`]:
//!
//! - its SMART scopes (`patient/`, `user/`, `system/`, v1 or v2, with v2 query filters) say
//!   which types and which of create, read, update, delete and search;
//! - a `patient/` scope reaches the compartment of the token's patient only (the official R4
//!   Patient CompartmentDefinition), plus the shared data that belongs to no patient
//!   ([`SHARED_TYPES`]: practitioners, organizations, locations, medications, definitions),
//!   which it may read but not write;
//! - a `user/` scope acts as the user: a Patient user as that patient; a Practitioner the
//!   compartments of the patients whose care they take part in (an active CareTeam, an
//!   Encounter or an Appointment of the patient), unless the request breaks the glass with a
//!   reason ([`BREAK_GLASS`]); a user who is neither reaches shared data only;
//! - a `system/` scope (a backend service) reaches every resource of the type.
//!
//! A [`Reach`] narrows what a handler does: searches get a filter that only the reachable
//! resources pass, reads of anything else answer 404 (as if it did not exist), writes outside
//! it 403. Authorization can be switched off by configuration (`auth = "disabled"`, for a
//! trusted network): then every request has [`Access::Open`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fhir_models::{ResourceType, patient_compartment_params};
use serde_json::Value;
use smart_auth::scope::{Context, Filter as ScopeFilter, Grant, Permission};
use smart_auth::server::Principal;
use tokio::sync::OnceCell;

use crate::app::AppState;
use crate::error::{FhirError, FhirResult};
use crate::search::index::{IndexRows, ReferenceRow};
use crate::search::query::Filter;
use crate::store::{Cell, Change, Kind, Version};

/// The request header that breaks the glass: a practitioner reaches a patient outside their
/// care teams, giving the reason as its value. Such requests are audited as break-glass.
pub const BREAK_GLASS: &str = "x-break-glass-reason";

/// Types that hold no patient's data (definitions, directories, terminology): a `patient/`
/// scope may read and search them, though no patient compartment holds them. Every other type
/// outside the compartment (Binary, Bundle, Task, Device, …) may hold someone's data and is
/// closed to `patient/` scopes.
pub const SHARED_TYPES: &[ResourceType] = &[
    ResourceType::ActivityDefinition,
    ResourceType::CapabilityStatement,
    ResourceType::CatalogEntry,
    ResourceType::ChargeItemDefinition,
    ResourceType::CodeSystem,
    ResourceType::CompartmentDefinition,
    ResourceType::ConceptMap,
    ResourceType::DeviceDefinition,
    ResourceType::EffectEvidenceSynthesis,
    ResourceType::Endpoint,
    ResourceType::EventDefinition,
    ResourceType::Evidence,
    ResourceType::EvidenceVariable,
    ResourceType::ExampleScenario,
    ResourceType::GraphDefinition,
    ResourceType::HealthcareService,
    ResourceType::ImplementationGuide,
    ResourceType::InsurancePlan,
    ResourceType::Library,
    ResourceType::Location,
    ResourceType::Measure,
    ResourceType::Medication,
    ResourceType::MedicationKnowledge,
    ResourceType::MedicinalProduct,
    ResourceType::MedicinalProductAuthorization,
    ResourceType::MedicinalProductContraindication,
    ResourceType::MedicinalProductIndication,
    ResourceType::MedicinalProductIngredient,
    ResourceType::MedicinalProductInteraction,
    ResourceType::MedicinalProductManufactured,
    ResourceType::MedicinalProductPackaged,
    ResourceType::MedicinalProductPharmaceutical,
    ResourceType::MedicinalProductUndesirableEffect,
    ResourceType::MessageDefinition,
    ResourceType::NamingSystem,
    ResourceType::ObservationDefinition,
    ResourceType::OperationDefinition,
    ResourceType::Organization,
    ResourceType::OrganizationAffiliation,
    ResourceType::PlanDefinition,
    ResourceType::Practitioner,
    ResourceType::PractitionerRole,
    ResourceType::Questionnaire,
    ResourceType::ResearchDefinition,
    ResourceType::ResearchElementDefinition,
    ResourceType::ResearchStudy,
    ResourceType::RiskEvidenceSynthesis,
    ResourceType::SearchParameter,
    ResourceType::Slot,
    ResourceType::SpecimenDefinition,
    ResourceType::StructureDefinition,
    ResourceType::StructureMap,
    ResourceType::Substance,
    ResourceType::SubstanceNucleicAcid,
    ResourceType::SubstancePolymer,
    ResourceType::SubstanceProtein,
    ResourceType::SubstanceReferenceInformation,
    ResourceType::SubstanceSourceMaterial,
    ResourceType::SubstanceSpecification,
    ResourceType::TerminologyCapabilities,
    ResourceType::TestScript,
    ResourceType::ValueSet,
];

/// Whether resources of `rt` can be in a Patient's compartment.
pub fn in_patient_compartment(rt: ResourceType) -> bool {
    !patient_compartment_params(rt).is_empty()
}

/// Who a request acts for.
#[derive(Clone)]
pub enum Access {
    /// Authorization is switched off: everything is reachable.
    Open,
    /// A SMART access token.
    Token(Arc<TokenAccess>),
}

/// A verified access token, with what the request learns about its user along the way.
pub struct TokenAccess {
    /// The token and its scopes.
    pub principal: Principal,
    /// The reason given to break the glass, if the request did.
    pub break_glass: Option<String>,
    /// The patients a Practitioner user takes care of, looked up once per request.
    care: OnceCell<Arc<HashSet<String>>>,
}

/// Which patients' compartments a term of a [`Reach`] covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patients {
    /// Any resource of the type, in a compartment or not.
    Any,
    /// Only resources in the compartment of one of these Patients (ids).
    These(Arc<HashSet<String>>),
}

/// One way a request may reach resources of a type: the patients whose compartments, and a
/// SMART v2 scope filter the resources must also pass.
#[derive(Debug, Clone)]
pub struct Term {
    pub patients: Patients,
    pub filter: Option<ScopeFilter>,
}

/// What a request may reach of one type with one permission.
#[derive(Debug, Clone)]
pub enum Reach {
    /// Every resource of the type.
    All,
    /// The resources that pass at least one of these terms.
    Some(Vec<Term>),
}

impl Access {
    /// What this access may reach of `rt` with `permission`; 403 if nothing at all.
    pub async fn reach(
        &self,
        state: &AppState,
        rt: ResourceType,
        permission: Permission,
    ) -> FhirResult<Reach> {
        match self {
            Self::Open => Ok(Reach::All),
            Self::Token(token) => token.reach(state, rt, permission).await,
        }
    }

    /// The token's principal, if authorization is on.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Self::Open => None,
            Self::Token(token) => Some(&token.principal),
        }
    }
}

impl TokenAccess {
    /// A token's access, breaking the glass with `reason` if given.
    pub fn new(principal: Principal, break_glass: Option<String>) -> Self {
        Self {
            principal,
            break_glass,
            care: OnceCell::new(),
        }
    }

    async fn reach(
        &self,
        state: &AppState,
        rt: ResourceType,
        permission: Permission,
    ) -> FhirResult<Reach> {
        let allowed = self.principal.scopes.allows(rt, permission);
        let mut terms = Vec::new();
        for context in Context::ALL {
            let grant = allowed.context(context);
            if grant.is_none() {
                continue;
            }
            let Some(patients) = self.patients(state, context, rt, permission).await? else {
                continue;
            };
            match grant {
                Grant::None => {}
                Grant::All => terms.push(Term {
                    patients: patients.clone(),
                    filter: None,
                }),
                Grant::Filtered(filters) => terms.extend(filters.iter().map(|filter| Term {
                    patients: patients.clone(),
                    filter: Some(filter.clone()),
                })),
            }
        }
        if terms.is_empty() {
            return Err(FhirError::Forbidden(format!(
                "the access token's scopes do not allow {} on {rt} here",
                permission_name(permission)
            )));
        }
        if terms
            .iter()
            .any(|t| t.patients == Patients::Any && t.filter.is_none())
        {
            return Ok(Reach::All);
        }
        Ok(Reach::Some(terms))
    }

    /// The patients whose data a scope of `context` reaches on `rt`, or `None` when such a
    /// scope reaches nothing of it.
    async fn patients(
        &self,
        state: &AppState,
        context: Context,
        rt: ResourceType,
        permission: Permission,
    ) -> FhirResult<Option<Patients>> {
        let shared = !in_patient_compartment(rt);
        let reads = matches!(permission, Permission::Read | Permission::Search);
        let one = |id: &str| Some(Patients::These(Arc::new(HashSet::from([id.to_owned()]))));
        let user = self.principal.fhir_user().and_then(|r| r.split_once('/'));
        Ok(match context {
            Context::System => Some(Patients::Any),
            Context::Patient => match self.principal.patient() {
                _ if shared => (reads && SHARED_TYPES.contains(&rt)).then_some(Patients::Any),
                Some(patient) => one(patient),
                None => None,
            },
            Context::User => match user {
                Some(("Patient", id)) if !shared => one(id),
                Some(("Patient", _)) => {
                    (reads && SHARED_TYPES.contains(&rt)).then_some(Patients::Any)
                }
                Some(("Practitioner", _)) if shared => Some(Patients::Any),
                Some(("Practitioner", id)) if self.break_glass.is_none() => {
                    let care = self
                        .care
                        .get_or_try_init(|| care_of(state, id))
                        .await?
                        .clone();
                    Some(Patients::These(care))
                }
                Some(("Practitioner", _)) => Some(Patients::Any),
                _ => (shared && reads && SHARED_TYPES.contains(&rt)).then_some(Patients::Any),
            },
        })
    }
}

fn permission_name(permission: Permission) -> &'static str {
    match permission {
        Permission::Create => "create",
        Permission::Read => "read",
        Permission::Update => "update",
        Permission::Delete => "delete",
        Permission::Search => "search",
    }
}

/// The patients a practitioner takes part in the care of: the subjects of active CareTeams
/// they are a participant of, and the patients of Encounters and Appointments they take part
/// in that were not cancelled or entered in error. One query on the reference index.
pub(crate) async fn care_of(
    state: &AppState,
    practitioner: &str,
) -> FhirResult<Arc<HashSet<String>>> {
    const SQL: &str = "\
        SELECT DISTINCT p.target_id FROM search_reference a \
        JOIN search_reference p ON p.rid = a.rid \
        WHERE a.target_type = 'Practitioner' AND a.target_id = $1 \
        AND ((a.resource_type = 'CareTeam' AND a.param = 'participant' \
              AND p.param IN ('subject', 'patient') \
              AND EXISTS (SELECT 1 FROM search_token s WHERE s.rid = a.rid \
                          AND s.param = 'status' AND s.code = 'active')) \
          OR (a.resource_type = 'Encounter' AND a.param = 'participant' \
              AND p.param IN ('subject', 'patient') \
              AND NOT EXISTS (SELECT 1 FROM search_token s WHERE s.rid = a.rid \
                              AND s.param = 'status' \
                              AND s.code IN ('cancelled', 'entered-in-error'))) \
          OR (a.resource_type = 'Appointment' AND a.param = 'actor' \
              AND p.param IN ('actor', 'patient') \
              AND NOT EXISTS (SELECT 1 FROM search_token s WHERE s.rid = a.rid \
                              AND s.param = 'status' \
                              AND s.code IN ('cancelled', 'entered-in-error', 'noshow')))) \
        AND p.target_type = 'Patient'";
    let rows = state
        .store
        .query(SQL, &[Cell::Text(practitioner.to_owned())], &[Kind::Text])
        .await?;
    Ok(Arc::new(
        rows.into_iter()
            .filter_map(|row| match row.into_iter().next() {
                Some(Cell::Text(id)) => Some(id),
                _ => None,
            })
            .collect(),
    ))
}

/// The Patients (ids) whose compartment a resource of type `rt` with these index rows is in,
/// and, for a Patient, the Patient itself (`id`).
pub fn compartments_of(rt: ResourceType, id: &str, references: &[ReferenceRow]) -> HashSet<String> {
    let params = patient_compartment_params(rt);
    let mut patients: HashSet<String> = references
        .iter()
        .filter(|row| {
            params.contains(&row.param.as_str())
                && row.target_type.as_deref() == Some(ResourceType::Patient.as_str())
        })
        .filter_map(|row| row.target_id.clone())
        .collect();
    if rt == ResourceType::Patient {
        patients.insert(id.to_owned());
    }
    patients
}

/// The Patients (ids) whose compartment the stored resource `rt/id` is in (see
/// [`compartments_of`]), read from its body.
pub fn compartments_of_body(
    state: &AppState,
    rt: ResourceType,
    id: &str,
    body: &[u8],
) -> HashSet<String> {
    let params = patient_compartment_params(rt);
    if params.is_empty() {
        return HashSet::new();
    }
    // A body that names no Patient anywhere references none: no need to parse it.
    if !body.windows(8).any(|w| w == b"Patient/") {
        return compartments_of(rt, id, &[]);
    }
    let references = match serde_json::from_slice::<Value>(body) {
        Ok(value) => crate::search::index::references_through(rt, &value, &state.fhir_base, params),
        Err(_) => Vec::new(),
    };
    compartments_of(rt, id, &references)
}

impl Reach {
    /// Whether a resource with these index rows passes: its compartments meet a term's
    /// patients, and it satisfies that term's filter (checked against the index rows, for the
    /// token parameters a filter may name; any other kind of filter parameter is not
    /// admitted, rather than guessed).
    pub fn admits(&self, rt: ResourceType, id: &str, rows: &IndexRows) -> bool {
        let Self::Some(terms) = self else {
            return true;
        };
        let compartments = compartments_of(rt, id, &rows.references);
        terms.iter().any(|term| {
            let in_reach = match &term.patients {
                Patients::Any => true,
                Patients::These(patients) => compartments.iter().any(|p| patients.contains(p)),
            };
            in_reach
                && term
                    .filter
                    .as_ref()
                    .is_none_or(|filter| filter_admits(rt, filter, rows))
        })
    }

    /// Whether a stored resource passes (see [`Self::admits`]).
    pub fn admits_body(&self, state: &AppState, rt: ResourceType, id: &str, body: &[u8]) -> bool {
        if matches!(self, Self::All) {
            return true;
        }
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        let rows = crate::search::index::extract(rt, &value, &state.fhir_base);
        self.admits(rt, id, &rows)
    }
}

/// Whether index rows satisfy a scope filter: every name/value pair names a token search
/// parameter of `rt` that one of the rows matches (`code`, `system|code`, `|code` or
/// `system|`).
fn filter_admits(rt: ResourceType, filter: &ScopeFilter, rows: &IndexRows) -> bool {
    filter.pairs().iter().all(|(name, value)| {
        let is_token = fhir_models::search::search_parameter(rt, name)
            .is_some_and(|def| def.kind == fhir_models::search::SearchParamType::Token);
        is_token
            && value.split(',').any(|one| {
                let (system, code) = match one.split_once('|') {
                    Some((system, code)) => (Some(system), code),
                    None => (None, one),
                };
                rows.tokens.iter().any(|row| {
                    row.param == *name
                        && (code.is_empty() || row.code.as_deref() == Some(code))
                        && match system {
                            None => true,
                            Some("") => row.system.is_none(),
                            Some(system) => row.system.as_deref() == Some(system),
                        }
                })
            })
    })
}

/// The middleware that authenticates every FHIR request (but the public documents) and
/// leaves its [`Access`] in the request's extensions. A request that already carries one is an
/// entry of a batch, dispatched by the server itself with the batch's access.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.extensions().get::<Access>().is_none() {
        let access = match &state.auth {
            None => Access::Open,
            Some(auth) => {
                // A token revoked through another node of the same database counts here too.
                auth.sync_revocations().await;
                match auth.authenticate(request.headers()) {
                    Ok(principal) => {
                        let reason = request
                            .headers()
                            .get(BREAK_GLASS)
                            .and_then(|v| v.to_str().ok())
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(str::to_owned);
                        Access::Token(Arc::new(TokenAccess::new(principal, reason)))
                    }
                    Err(why) => {
                        return FhirError::Unauthorized {
                            message: why.to_string(),
                            challenge: why.challenge(),
                        }
                        .into_response();
                    }
                }
            }
        };
        if let Some(slot) = request.extensions().get::<crate::audit::AccessSlot>()
            && let Ok(mut slot) = slot.0.lock()
        {
            *slot = Some(access.clone());
        }
        request.extensions_mut().insert(access);
    }
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = FhirError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Deny by default: a handler reached without the middleware has no access at all.
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            FhirError::Internal(anyhow::anyhow!(
                "a FHIR handler ran without the authentication middleware"
            ))
        })
    }
}

impl Reach {
    /// The filter groups that narrow a search of `rt` to this reach (see
    /// [`crate::search::query::SearchQuery::narrow`]), or `None` when nothing needs narrowing.
    /// A term whose scope filter cannot be read as a search of `rt` reaches nothing.
    pub fn search_groups(&self, state: &AppState, rt: ResourceType) -> Option<Vec<Vec<Filter>>> {
        let Self::Some(terms) = self else {
            return None;
        };
        let mut groups = Vec::with_capacity(terms.len());
        for term in terms {
            let mut group = Vec::new();
            if let Patients::These(patients) = &term.patients {
                group.push(compartment_filter(state, rt, patients));
            }
            if let Some(filter) = &term.filter {
                match state.search_filters(&[rt], filter.pairs()) {
                    Ok(filters) => group.extend(filters),
                    Err(_) => continue,
                }
            }
            groups.push(group);
        }
        Some(groups)
    }
}

/// The filter that only resources of `rt` in the compartment of one of `patients` pass: a
/// reference to one of them through any of the type's compartment parameters (for a Patient,
/// being one of them). Matches nothing when `patients` is empty.
fn compartment_filter(state: &AppState, rt: ResourceType, patients: &HashSet<String>) -> Filter {
    if patients.is_empty() {
        return Filter::Any(Vec::new());
    }
    let mut ids: Vec<&str> = patients.iter().map(String::as_str).collect();
    ids.sort_unstable();
    let references = ids
        .iter()
        .map(|id| format!("Patient/{id}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut groups = Vec::new();
    if rt == ResourceType::Patient {
        groups.push(vec![Filter::Id(
            ids.iter().map(|id| (*id).to_owned()).collect(),
        )]);
    }
    for param in patient_compartment_params(rt) {
        // The compartment's parameters are the type's own reference parameters; one that
        // cannot be read (never, for the generated table) only leaves its group out.
        if let Ok(filters) =
            state.search_filters(&[rt], &[((*param).to_owned(), references.clone())])
        {
            groups.push(filters);
        }
    }
    Filter::Any(groups)
}

impl Reach {
    /// Whether a stored version is within reach. A deleted version is judged by the version
    /// before it, so a patient may learn that their own resource was deleted (410) and nobody
    /// learns that another's was.
    pub async fn sees(&self, state: &AppState, version: &Version) -> FhirResult<bool> {
        if matches!(self, Self::All) {
            return Ok(true);
        }
        let (rt, id) = (version.resource_type, &version.id);
        match &version.body {
            Some(body) => Ok(self.admits_body(state, rt, id, body)),
            None if version.version_id > 1 => {
                match state.store.vread(rt, id, version.version_id - 1).await? {
                    Some(previous) => Box::pin(self.sees(state, &previous)).await,
                    None => Ok(false),
                }
            }
            None => Ok(false),
        }
    }

    /// Whether a write stays within reach: the resource it stores passes (see
    /// [`Self::admits`]); a delete always does (the resource it deletes is checked instead).
    pub fn admits_change(&self, rt: ResourceType, id: &str, change: &Change) -> bool {
        match change {
            Change::Put { index, .. } => self.admits(rt, id, index),
            Change::Delete => true,
        }
    }
}

/// The reach of one permission on each type a request meets, worked out once per type: for
/// the resources of many types a page of includes, a history or a compartment returns.
pub struct Reaches<'a> {
    access: &'a Access,
    permission: Permission,
    /// `None` for a type the access may not touch at all.
    by_type: HashMap<ResourceType, Option<Reach>>,
}

impl<'a> Reaches<'a> {
    /// The reaches of `permission` for `access`.
    pub fn new(access: &'a Access, permission: Permission) -> Self {
        Self {
            access,
            permission,
            by_type: HashMap::new(),
        }
    }

    /// Whether the access may see `version` (see [`Reach::sees`]).
    pub async fn sees(&mut self, state: &AppState, version: &Version) -> FhirResult<bool> {
        let rt = version.resource_type;
        let reach = match self.by_type.entry(rt) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => {
                let reach = match self.access.reach(state, rt, self.permission).await {
                    Ok(reach) => Some(reach),
                    Err(FhirError::Forbidden(_)) => None,
                    Err(other) => return Err(other),
                };
                new.insert(reach)
            }
        };
        match reach {
            Some(reach) => reach.sees(state, version).await,
            None => Ok(false),
        }
    }

    /// Whether any type met so far is reached only in part (or not at all).
    pub fn narrowed(&self) -> bool {
        self.by_type
            .values()
            .any(|reach| !matches!(reach, Some(Reach::All)))
    }
}

/// The error of a write that would leave the token's reach.
pub fn outside_reach(rt: ResourceType) -> FhirError {
    FhirError::Forbidden(format!(
        "the access token may not write this {rt}: it would be outside the patients and \
         filters its scopes reach"
    ))
}
