//! `GET /fhir/metadata`: the CapabilityStatement, built once at start from what is routed.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir_models::ResourceType;
use serde_json::{Value, json};

use super::Interaction;
use super::format::{FHIR_JSON, Shape};
use crate::app::AppState;
use crate::error::FhirResult;

/// The CapabilityStatement of a server whose FHIR base is `fhir_base`, as of `date`.
pub fn capability_statement(fhir_base: &str, date: &str) -> Value {
    let interactions: Vec<Value> = Interaction::TYPE_LEVEL
        .iter()
        .map(|i| json!({ "code": i.code() }))
        .collect();
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|rt| {
            json!({
                "type": rt.as_str(),
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{rt}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalRead": "full-support",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
            })
        })
        .collect();
    json!({
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
            "interaction": [{ "code": "history-system" }],
        }],
    })
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

    #[test]
    fn the_capability_statement_is_valid_fhir() {
        let statement = capability_statement("http://localhost/fhir", "2024-05-01T10:00:00Z");
        let issues = SchemaValidator::new().check(ResourceType::CapabilityStatement, &statement);
        assert_eq!(issues, vec![]);
    }

    #[test]
    fn every_resource_type_is_listed_with_its_interactions() {
        let statement = capability_statement("http://localhost/fhir", "2024-05-01T10:00:00Z");
        let resources = statement["rest"][0]["resource"]
            .as_array()
            .cloned()
            .unwrap_or_default();
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
                "create"
            ]
        );
    }
}
