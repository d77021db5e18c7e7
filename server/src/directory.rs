//! What the authorization server learns from the FHIR data: the patients and encounters its
//! pickers offer a practitioner, and whether whoever mints an EHR launch may see what it names.
//! The same rules as every FHIR request ([`crate::access`]) decide.

use std::sync::{Arc, OnceLock, Weak};

use fhir_models::ResourceType;
use futures::future::BoxFuture;
use serde_json::Value;
use smart_auth::scope::Permission;
use smart_auth::server::{Choice, Directory, Principal};
use smart_auth::store::LaunchContext;

use crate::access::{Access, Reach, TokenAccess, care_of};
use crate::app::{App, AppState};
use crate::error::FhirError;
use crate::search::execute;
use crate::search::query::{Filter, Total};

/// The [`Directory`] of this server's data. It is made before the application state it reads
/// (which holds the authorization server that holds it), and attached to it once built.
#[derive(Default)]
pub struct FhirDirectory {
    app: OnceLock<Weak<App>>,
}

impl FhirDirectory {
    /// Points the directory at the application once it exists.
    pub fn attach(&self, app: &Arc<App>) {
        let _ = self.app.set(Arc::downgrade(app));
    }

    fn state(&self) -> anyhow::Result<AppState> {
        self.app
            .get()
            .and_then(Weak::upgrade)
            .map(AppState)
            .ok_or_else(|| anyhow::anyhow!("the FHIR directory is not attached"))
    }
}

/// The patients a user may choose in a picker: a practitioner's patients, a patient
/// themselves; nobody else's.
async fn choosable(state: &AppState, user: Option<&str>) -> Result<Vec<String>, FhirError> {
    if let Some(patient) = user.and_then(|u| u.strip_prefix("Patient/")) {
        return Ok(vec![patient.to_owned()]);
    }
    match user.and_then(|u| u.strip_prefix("Practitioner/")) {
        Some(practitioner) => {
            let mut ids: Vec<String> = care_of(state, practitioner)
                .await?
                .iter()
                .cloned()
                .collect();
            ids.sort_unstable();
            Ok(ids)
        }
        None => Ok(Vec::new()),
    }
}

/// "Family, Given (birth date)" for a picker.
fn patient_label(body: &Value) -> String {
    let name = body["name"].as_array().and_then(|names| names.first());
    let family = name.and_then(|n| n["family"].as_str()).unwrap_or("");
    let given = name
        .and_then(|n| n["given"].as_array())
        .map(|given| {
            given
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let mut label = match (family.is_empty(), given.is_empty()) {
        (false, false) => format!("{family}, {given}"),
        (false, true) => family.to_owned(),
        (true, false) => given,
        (true, true) => "(no name)".to_owned(),
    };
    if let Some(birth) = body["birthDate"].as_str() {
        label.push_str(&format!(" (born {birth})"));
    }
    label
}

/// "date — type (status)" for a picker.
fn encounter_label(body: &Value) -> String {
    let start = body["period"]["start"].as_str().unwrap_or("no date");
    let kind = body["type"][0]["text"]
        .as_str()
        .or_else(|| body["type"][0]["coding"][0]["display"].as_str())
        .or_else(|| body["class"]["display"].as_str())
        .or_else(|| body["class"]["code"].as_str())
        .unwrap_or("encounter");
    let status = body["status"].as_str().unwrap_or("unknown");
    format!("{start} — {kind} ({status})")
}

/// A page of a search of `rt` by `pairs`, narrowed to `narrow` if given, as picker choices.
async fn choices(
    state: &AppState,
    rt: ResourceType,
    pairs: &[(String, String)],
    narrow: Option<Vec<Vec<Filter>>>,
    label: fn(&Value) -> String,
) -> Result<Vec<Choice>, FhirError> {
    let mut query = state.parse_search(vec![rt], pairs, false)?;
    if let Some(narrow) = narrow {
        query.narrow(narrow);
    }
    query.total = Total::None;
    let page = execute::page(&state.store, &state.planner_stats, &query).await?;
    Ok(page
        .matches
        .iter()
        .filter_map(|found| {
            let body: Value = serde_json::from_slice(found.version.body.as_deref()?).ok()?;
            Some(Choice {
                id: found.version.id.clone(),
                label: label(&body),
            })
        })
        .collect())
}

impl Directory for FhirDirectory {
    fn find_patients<'a>(
        &'a self,
        user: Option<&'a str>,
        text: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Choice>>> {
        Box::pin(async move {
            let state = self.state()?;
            let ids = choosable(&state, user).await.map_err(anyhow_of)?;
            let mut pairs = vec![("_count".to_owned(), limit.to_string())];
            if !text.trim().is_empty() {
                pairs.push(("name".to_owned(), text.trim().to_owned()));
            }
            let narrow = vec![vec![Filter::Id(ids)]];
            choices(
                &state,
                ResourceType::Patient,
                &pairs,
                Some(narrow),
                patient_label,
            )
            .await
            .map_err(anyhow_of)
        })
    }

    fn patient<'a>(
        &'a self,
        user: Option<&'a str>,
        id: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<Choice>>> {
        Box::pin(async move {
            let state = self.state()?;
            let ids = choosable(&state, user).await.map_err(anyhow_of)?;
            if !ids.iter().any(|p| p == id) {
                return Ok(None);
            }
            let narrow = vec![vec![Filter::Id(vec![id.to_owned()])]];
            let found = choices(
                &state,
                ResourceType::Patient,
                &[],
                Some(narrow),
                patient_label,
            )
            .await
            .map_err(anyhow_of)?;
            Ok(found.into_iter().next())
        })
    }

    fn encounters<'a>(
        &'a self,
        user: Option<&'a str>,
        patient: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Choice>>> {
        Box::pin(async move {
            let state = self.state()?;
            let ids = choosable(&state, user).await.map_err(anyhow_of)?;
            if !ids.iter().any(|p| p == patient) {
                return Ok(Vec::new());
            }
            let count = limit.min(state.config.max_page_size as usize);
            let pairs = vec![
                ("patient".to_owned(), format!("Patient/{patient}")),
                ("_sort".to_owned(), "-date".to_owned()),
                ("_count".to_owned(), count.to_string()),
            ];
            // The patient was checked above; their encounters need no narrowing (and an empty
            // narrowing would match nothing).
            choices(
                &state,
                ResourceType::Encounter,
                &pairs,
                None,
                encounter_label,
            )
            .await
            .map(|mut found| {
                found.truncate(limit);
                found
            })
            .map_err(anyhow_of)
        })
    }

    fn may_launch<'a>(
        &'a self,
        principal: &'a Principal,
        context: &'a LaunchContext,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let state = self.state()?;
            let access = Access::Token(Arc::new(TokenAccess::new(principal.clone(), None)));
            let named = [
                (ResourceType::Patient, context.patient.as_deref()),
                (ResourceType::Encounter, context.encounter.as_deref()),
            ];
            for (rt, id) in named {
                let Some(id) = id else { continue };
                if !readable(&state, &access, rt, id).await.map_err(anyhow_of)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }
}

/// Whether `access` may read the live resource `rt/id`.
async fn readable(
    state: &AppState,
    access: &Access,
    rt: ResourceType,
    id: &str,
) -> Result<bool, FhirError> {
    let reach = match access.reach(state, rt, Permission::Read).await {
        Ok(reach) => reach,
        Err(FhirError::Forbidden(_)) => return Ok(false),
        Err(other) => return Err(other),
    };
    let Some(version) = state.store.read(rt, id).await? else {
        return Ok(false);
    };
    Ok(match (&reach, &version.body) {
        (_, None) => false,
        (Reach::All, Some(_)) => true,
        (_, Some(body)) => reach.admits_body(state, rt, id, body),
    })
}

fn anyhow_of(error: FhirError) -> anyhow::Error {
    match error {
        FhirError::Internal(error) => error,
        other => anyhow::anyhow!("{other}"),
    }
}
