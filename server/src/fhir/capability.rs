//! `GET /fhir/metadata`: the CapabilityStatement, built once at start from what is routed.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir_models::ResourceType;
use fhir_models::search::{SearchParamType, SearchParameterDef};
use serde_json::{Value, json};

use super::Interaction;
use super::format::{FHIR_JSON, Shape};
use crate::app::AppState;
use crate::error::FhirResult;
use smart_auth::server::AuthConfig;

/// The CapabilityStatement of a server whose FHIR base is `fhir_base`, as of `date`; with
/// `auth`, the SMART authorization server that guards it.
pub fn capability_statement(fhir_base: &str, date: &str, auth: Option<&AuthConfig>) -> Value {
    let interactions: Vec<Value> = Interaction::TYPE_LEVEL
        .iter()
        .map(|i| json!({ "code": i.code() }))
        .collect();
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|rt| {
            let mut resource = json!({
                "type": rt.as_str(),
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{rt}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "multiple",
                "searchInclude": search_includes(*rt),
                "searchRevInclude": search_rev_includes(*rt),
                "searchParam": search_params(*rt),
            });
            if *rt == ResourceType::AuditEvent {
                audit_event_capability(&mut resource);
            }
            if *rt == ResourceType::Patient {
                resource["operation"] = json!([{
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }]);
            }
            // FHIR has no empty arrays: a type nothing refers to lists no revincludes.
            if let Some(object) = resource.as_object_mut() {
                object.retain(|_, v| v.as_array().is_none_or(|a| !a.is_empty()));
            }
            resource
        })
        .collect();
    let mut statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "telemed",
        "kind": "instance",
        "software": {
            "name": "telemed",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "implementation": {
            "description": "telemed FHIR R4 server",
            "url": fhir_base,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [
                { "code": "transaction" },
                { "code": "batch" },
                { "code": "history-system" },
                { "code": "search-system" },
            ],
            "searchParam": fhir_models::COMMON_SEARCH_PARAMETERS
                .iter()
                .map(search_param)
                .collect::<Vec<_>>(),
        }],
    });
    if let Some(auth) = auth {
        statement["rest"][0]["security"] = security(auth);
    }
    statement
}

/// `rest.security`: SMART on FHIR, with its endpoints in the `oauth-uris` extension
/// (http://hl7.org/fhir/smart-app-launch/conformance.html#using-cors).
fn security(auth: &AuthConfig) -> Value {
    let uri =
        |name: &str, endpoint: &str| json!({ "url": name, "valueUri": auth.endpoint(endpoint) });
    json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                uri("authorize", "authorize"),
                uri("token", "token"),
                uri("introspect", "introspect"),
                uri("revoke", "revoke"),
            ],
        }],
        "cors": true,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR",
            }],
            "text": "OAuth2 using the SMART App Launch 2.2 profile",
        }],
        "description": "Every request needs a SMART access token; see \
                        .well-known/smart-configuration under this base.",
    })
}

/// AuditEvent is the audit trail: read and searched, never written, each with one version
/// (see [`super::audit_events`]).
fn audit_event_capability(resource: &mut Value) {
    const SEARCHED: [&str; 8] = [
        "date", "patient", "agent", "entity", "type", "subtype", "action", "outcome",
    ];
    resource["interaction"] = json!([
        { "code": Interaction::Read.code() },
        { "code": Interaction::Vread.code() },
        { "code": Interaction::SearchType.code() },
    ]);
    resource["versioning"] = json!("no-version");
    resource["readHistory"] = json!(false);
    resource["updateCreate"] = json!(false);
    resource["conditionalCreate"] = json!(false);
    resource["conditionalRead"] = json!("not-supported");
    resource["conditionalUpdate"] = json!(false);
    resource["conditionalDelete"] = json!("not-supported");
    resource["searchInclude"] = json!([]);
    resource["searchRevInclude"] = json!([]);
    let params: Vec<Value> = fhir_models::COMMON_SEARCH_PARAMETERS
        .iter()
        .filter(|def| def.code == "_id")
        .chain(
            fhir_models::search_parameters(ResourceType::AuditEvent)
                .iter()
                .filter(|def| SEARCHED.contains(&def.code)),
        )
        .map(search_param)
        .collect();
    resource["searchParam"] = Value::Array(params);
}

fn search_param(def: &SearchParameterDef) -> Value {
    json!({
        "name": def.code,
        "definition": def.url,
        "type": def.kind.as_str(),
    })
}

/// Every parameter of `rt` that the server indexes, the common ones first.
fn search_params(rt: ResourceType) -> Vec<Value> {
    fhir_models::COMMON_SEARCH_PARAMETERS
        .iter()
        .chain(fhir_models::search_parameters(rt))
        .map(search_param)
        .collect()
}

/// `*` and `Type:param` for each reference parameter of `rt`.
fn search_includes(rt: ResourceType) -> Vec<String> {
    std::iter::once("*".to_owned())
        .chain(
            fhir_models::search_parameters(rt)
                .iter()
                .filter(|def| def.kind == SearchParamType::Reference)
                .map(|def| format!("{rt}:{}", def.code)),
        )
        .collect()
}

/// `Source:param` for each reference parameter of any type that may point at `rt`.
fn search_rev_includes(rt: ResourceType) -> Vec<String> {
    ResourceType::ALL
        .iter()
        .flat_map(|source| {
            fhir_models::search_parameters(*source)
                .iter()
                .filter(|def| def.kind == SearchParamType::Reference && def.targets.contains(&rt))
                .map(move |def| format!("{source}:{}", def.code))
        })
        .collect()
}

/// `GET /fhir/.well-known/smart-configuration`: how to get an access token (always JSON,
/// readable from any origin); 404 when authorization is disabled.
pub async fn get_smart_configuration(State(state): State<AppState>) -> Response {
    match &state.auth {
        Some(auth) => {
            let body = smart_auth::server::discovery::smart_configuration(auth);
            (
                StatusCode::OK,
                [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
                axum::Json(body),
            )
                .into_response()
        }
        None => crate::error::FhirError::NotFound(
            "authorization is disabled on this server: it takes no access tokens".to_owned(),
        )
        .into_response(),
    }
}

/// `GET /fhir/metadata`.
pub async fn get_metadata(
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> FhirResult<Response> {
    let shape = Shape::from_request(&query, &headers)?;
    let body = if shape.is_identity() {
        state.capability_statement.clone()
    } else {
        let mut value: Value = serde_json::from_slice(&state.capability_statement)
            .map_err(|e| crate::error::FhirError::Internal(e.into()))?;
        shape.subset(&mut value);
        shape.to_bytes(&value)?.into()
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::SchemaValidator;

    /// The `rest.resource` entries of a CapabilityStatement.
    fn listed_resources() -> Vec<Value> {
        let statement = capability_statement("http://localhost/fhir", "2024-05-01T10:00:00Z", None);
        statement["rest"][0]["resource"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn the_capability_statement_is_valid_fhir() {
        let statement = capability_statement("http://localhost/fhir", "2024-05-01T10:00:00Z", None);
        let issues = SchemaValidator::new().check(ResourceType::CapabilityStatement, &statement);
        assert_eq!(issues, vec![]);
    }

    #[test]
    fn every_resource_type_is_listed_with_its_interactions() {
        let resources = listed_resources();
        assert_eq!(resources.len(), ResourceType::ALL.len());
        let procedure = resources
            .iter()
            .find(|r| r["type"] == "Procedure")
            .expect("Procedure is listed");
        let codes: Vec<&str> = procedure["interaction"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["code"].as_str())
            .collect();
        assert_eq!(
            codes,
            [
                "read",
                "vread",
                "update",
                "patch",
                "delete",
                "history-instance",
                "history-type",
                "create",
                "search-type"
            ]
        );
    }

    #[test]
    fn patient_alone_lists_the_everything_operation() {
        let resources = listed_resources();
        let with_operations: Vec<&Value> = resources
            .iter()
            .filter(|r| r.get("operation").is_some())
            .collect();
        assert_eq!(with_operations.len(), 1);
        assert_eq!(with_operations[0]["type"], "Patient");
        assert_eq!(
            with_operations[0]["operation"],
            json!([{
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            }])
        );
    }

    #[test]
    fn each_type_lists_its_search_parameters_and_includes() {
        let resources = listed_resources();
        let patient = resources
            .iter()
            .find(|r| r["type"] == "Patient")
            .expect("Patient is listed");
        let params: Vec<&Value> = patient["searchParam"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let birthdate = params
            .iter()
            .find(|p| p["name"] == "birthdate")
            .expect("birthdate is listed");
        assert_eq!(birthdate["type"], "date");
        assert_eq!(
            birthdate["definition"],
            "http://hl7.org/fhir/SearchParameter/individual-birthdate"
        );
        assert!(params.iter().any(|p| p["name"] == "_lastUpdated"));
        let includes = patient["searchInclude"].to_string();
        assert!(
            includes.contains("Patient:general-practitioner"),
            "{includes}"
        );
        let rev_includes = patient["searchRevInclude"].to_string();
        assert!(
            rev_includes.contains("Observation:subject"),
            "{rev_includes}"
        );
    }
}
