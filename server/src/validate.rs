//! Checks every resource a client writes: the official JSON schema of its type, then the typed
//! model (for the types that have one), before any business rule sees it.
//!
//! The R4 schema's root is a `oneOf` over all 146 types, and so is `ResourceList` (what
//! `contained`, `Bundle.entry.resource` and `Parameters.parameter.resource` point at). Validating
//! through a 146-way `oneOf` costs thousands of times more for an invalid resource than for a
//! valid one and reports only "not valid under any of the schemas". So each type gets its own
//! validator (built on first use, then cached), `ResourceList` is reduced to "an object with a
//! resourceType", and each nested resource is validated with its own type's validator, with its
//! path prefixed.

use std::str::FromStr;
use std::sync::{Arc, LazyLock, OnceLock};

use fhir_models::ResourceType;
use jsonschema::Validator;
use jsonschema::paths::LocationSegment;
use serde_json::{Value, json};

use crate::error::Issue;

/// At most this many issues are reported for one resource.
const MAX_ISSUES: usize = 20;

static SCHEMA_TEXT: &str = include_str!("../../spec/fhir.schema.json");

/// The definitions of the R4 schema, with `ResourceList` reduced (see the module doc).
static DEFINITIONS: LazyLock<Value> = LazyLock::new(|| {
    let mut schema: Value = serde_json::from_str(SCHEMA_TEXT).unwrap_or(Value::Null);
    let mut definitions = schema
        .get_mut("definitions")
        .map(Value::take)
        .unwrap_or(Value::Null);
    add_fhir_version_401(&mut definitions);
    if let Some(definitions) = definitions.as_object_mut() {
        definitions.insert(
            "ResourceList".to_owned(),
            json!({
                "type": "object",
                "required": ["resourceType"],
                "properties": { "resourceType": { "type": "string" } }
            }),
        );
    }
    definitions
});

/// The published R4 schema was generated before 4.0.1 existed: its FHIRVersion enums
/// (`CapabilityStatement.fhirVersion`, `StructureDefinition.fhirVersion`, …) end at `4.0.0`, so
/// every R4 server's own CapabilityStatement would fail it. Adds `4.0.1` wherever `4.0.0` is
/// listed, which is what the FHIRVersion value set of 4.0.1 says.
fn add_fhir_version_401(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(values)) = object.get_mut("enum")
                && values.iter().any(|v| v == "4.0.0")
                && !values.iter().any(|v| v == "4.0.1")
            {
                values.push(Value::String("4.0.1".to_owned()));
            }
            object.values_mut().for_each(add_fhir_version_401);
        }
        Value::Array(items) => items.iter_mut().for_each(add_fhir_version_401),
        _ => {}
    }
}

/// Validates resources against the official R4 JSON schema, one cached validator per type.
pub struct SchemaValidator {
    validators: Box<[OnceLock<Arc<Validator>>]>,
}

impl Default for SchemaValidator {
    fn default() -> Self {
        Self::new()
    }
}

impl SchemaValidator {
    pub fn new() -> Self {
        Self {
            validators: ResourceType::ALL.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    /// Builds the validators of `types` now, so their first request does not pay for it.
    pub fn warm(&self, types: &[ResourceType]) {
        for &rt in types {
            let _ = self.validator(rt);
        }
    }

    fn validator(&self, rt: ResourceType) -> Option<Arc<Validator>> {
        let slot = self.validators.get(rt as usize)?;
        if let Some(validator) = slot.get() {
            return Some(validator.clone());
        }
        let schema = json!({
            "$schema": "http://json-schema.org/draft-06/schema#",
            "$ref": format!("#/definitions/{rt}"),
            "definitions": &*DEFINITIONS,
        });
        match jsonschema::options()
            .with_draft(jsonschema::Draft::Draft6)
            .build(&schema)
        {
            Ok(validator) => Some(slot.get_or_init(|| Arc::new(validator)).clone()),
            Err(error) => {
                tracing::error!(resource_type = %rt, %error, "cannot build a schema validator");
                None
            }
        }
    }

    /// Every schema and model error in `resource` (a resource of type `rt`), nested resources
    /// included, each with the FHIRPath of the element at fault. Empty when it is valid.
    pub fn check(&self, rt: ResourceType, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        self.check_at(rt, resource, rt.as_str(), true, &mut issues);
        if issues.is_empty() {
            json_rules(resource, rt.as_str(), &mut issues);
        }
        issues
    }

    /// `typed`: whether to check `resource` against its typed model here. A typed container
    /// reads its nested resources into their models itself, so they are not read twice.
    fn check_at(
        &self,
        rt: ResourceType,
        resource: &Value,
        path: &str,
        typed: bool,
        issues: &mut Vec<Issue>,
    ) {
        let Some(validator) = self.validator(rt) else {
            issues.push(
                Issue::error("exception", format!("no schema is available for {rt}")).at(path),
            );
            return;
        };
        let before = issues.len();
        for error in validator.iter_errors(resource) {
            if issues.len() >= MAX_ISSUES {
                return;
            }
            let mut expression = path.to_owned();
            for segment in error.instance_path().segments() {
                match segment {
                    LocationSegment::Property(name) => {
                        expression.push('.');
                        expression.push_str(&name);
                    }
                    LocationSegment::Index(index) => {
                        expression.push_str(&format!("[{index}]"));
                    }
                }
            }
            // Masked: the message never quotes the value, which may be PHI.
            issues.push(Issue::error("structure", error.masked().to_string()).at(expression));
        }
        if issues.len() > before {
            return;
        }
        for (nested_path, nested) in nested_resources(rt, resource, path) {
            if issues.len() >= MAX_ISSUES {
                return;
            }
            match nested
                .get("resourceType")
                .and_then(Value::as_str)
                .map(ResourceType::from_str)
            {
                Some(Ok(nested_rt)) => self.check_at(
                    nested_rt,
                    nested,
                    &nested_path,
                    // A resource is read into its model exactly when its container is: a typed
                    // container reads what it holds; an untyped one (JSON) does not.
                    !rt.has_typed_model(),
                    issues,
                ),
                _ => issues.push(
                    Issue::error(
                        "structure",
                        "resourceType is not a known FHIR R4 resource type",
                    )
                    .at(format!("{nested_path}.resourceType")),
                ),
            }
        }
        if issues.len() > before {
            return;
        }
        // Last the typed model, for the types our own logic reads: it catches what the schema
        // cannot say (an integer out of range, for one). Nested resources were checked first, so
        // their errors name their own elements.
        if !typed {
            return;
        }
        if let Err(error) = fhir_models::check_typed(rt, resource) {
            let at = error.path.strip_prefix(rt.as_str()).map_or_else(
                || format!("{path}.{}", error.path),
                |rest| format!("{path}{rest}"),
            );
            issues.push(Issue::error("structure", error.message).at(at));
        }
    }
}

/// Largest string FHIR allows (http://hl7.org/fhir/R4/datatypes.html#string: 1 MB).
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// The rules of FHIR's JSON form and of every element that the JSON schema cannot express
/// (http://hl7.org/fhir/R4/json.html, ele-1, ext-1), checked over the whole tree:
/// no empty objects or arrays, `null` only inside a primitive's `_x` array and that array as
/// long as its values, strings of at most 1 MB, and an extension with either a value or nested
/// extensions, not both and not neither.
fn json_rules(value: &Value, path: &str, issues: &mut Vec<Issue>) {
    fn fail(issues: &mut Vec<Issue>, text: &str, at: &str) {
        if issues.len() < MAX_ISSUES {
            issues.push(Issue::error("structure", text).at(at));
        }
    }
    if issues.len() >= MAX_ISSUES {
        return;
    }
    match value {
        Value::String(s) if s.len() > MAX_STRING_BYTES => {
            fail(issues, "a string may not be longer than 1 MB", path);
        }
        Value::Object(object) if object.is_empty() => {
            fail(
                issues,
                "an element must have a value or children (ele-1)",
                path,
            );
        }
        Value::Object(object) => {
            for (key, child) in object {
                let child_path = format!("{path}.{key}");
                let Value::Array(items) = child else {
                    if child.is_null() {
                        fail(issues, "null is not allowed here", &child_path);
                    } else {
                        json_rules(child, &child_path, issues);
                    }
                    continue;
                };
                if items.is_empty() {
                    fail(issues, "an array may not be empty", &child_path);
                    continue;
                }
                if let Some(primitive) = key.strip_prefix('_')
                    && let Some(values) = object.get(primitive).and_then(Value::as_array)
                    && values.len() != items.len()
                {
                    let text = format!(
                        "{key} must have as many entries as {primitive} (null where a value has \
                         no extension)"
                    );
                    fail(issues, &text, &child_path);
                }
                let is_extension_list = key == "extension" || key == "modifierExtension";
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{child_path}[{i}]");
                    if item.is_null() {
                        // Nulls keep a primitive's extensions aligned with its values.
                        if !key.starts_with('_') {
                            fail(issues, "null is not allowed here", &item_path);
                        }
                        continue;
                    }
                    if is_extension_list && let Some(extension) = item.as_object() {
                        let has_value = extension.keys().any(|k| {
                            k.strip_prefix("value")
                                .and_then(|rest| rest.chars().next())
                                .is_some_and(|c| c.is_ascii_uppercase())
                        });
                        if !extension.is_empty() && has_value == extension.contains_key("extension")
                        {
                            fail(
                                issues,
                                "an extension has either a value or nested extensions, not both \
                                 and not neither (ext-1)",
                                &item_path,
                            );
                        }
                    }
                    json_rules(item, &item_path, issues);
                }
            }
        }
        _ => {}
    }
}

/// The resources held inside `resource`, with their paths: `contained`, Bundle entries and
/// outcomes, and Parameters values (parts included).
fn nested_resources<'a>(
    rt: ResourceType,
    resource: &'a Value,
    path: &str,
) -> Vec<(String, &'a Value)> {
    let mut found = Vec::new();
    let items = |value: &'a Value, key: &str| -> Vec<(usize, &'a Value)> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().enumerate().collect())
            .unwrap_or_default()
    };
    for (i, item) in items(resource, "contained") {
        found.push((format!("{path}.contained[{i}]"), item));
    }
    match rt {
        ResourceType::Bundle => {
            for (i, entry) in items(resource, "entry") {
                if let Some(r) = entry.get("resource") {
                    found.push((format!("{path}.entry[{i}].resource"), r));
                }
                if let Some(outcome) = entry.get("response").and_then(|r| r.get("outcome")) {
                    found.push((format!("{path}.entry[{i}].response.outcome"), outcome));
                }
            }
        }
        ResourceType::Parameters => {
            fn parameters<'a>(
                list: &'a Value,
                path: &str,
                key: &str,
                found: &mut Vec<(String, &'a Value)>,
            ) {
                let Some(list) = list.get(key).and_then(Value::as_array) else {
                    return;
                };
                for (i, parameter) in list.iter().enumerate() {
                    let here = format!("{path}.{key}[{i}]");
                    if let Some(r) = parameter.get("resource") {
                        found.push((format!("{here}.resource"), r));
                    }
                    parameters(parameter, &here, "part", found);
                }
            }
            parameters(resource, path, "parameter", &mut found);
        }
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expressions(issues: &[Issue]) -> Vec<String> {
        issues.iter().filter_map(|i| i.expression.clone()).collect()
    }

    #[test]
    fn a_valid_patient_has_no_issues() {
        let patient =
            json!({"resourceType": "Patient", "birthDate": "1974-12-25", "gender": "male"});
        assert_eq!(
            SchemaValidator::new().check(ResourceType::Patient, &patient),
            vec![]
        );
    }

    #[test]
    fn an_invalid_element_is_named_by_its_path() {
        let patient = json!({"resourceType": "Patient", "name": [{"given": ["a", 5]}]});
        let issues = SchemaValidator::new().check(ResourceType::Patient, &patient);
        assert_eq!(expressions(&issues), vec!["Patient.name[0].given[1]"]);
    }

    #[test]
    fn a_bundle_entry_is_validated_with_its_own_type() {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": {"resourceType": "Patient", "gender": "male"}},
                {"resource": {"resourceType": "Observation", "status": "final",
                              "code": {"text": "x"}, "valueQuantity": {"value": "high"}}}
            ]
        });
        let issues = SchemaValidator::new().check(ResourceType::Bundle, &bundle);
        let mut paths = expressions(&issues);
        paths.dedup();
        assert_eq!(paths, vec!["Bundle.entry[1].resource.valueQuantity.value"]);
    }

    #[test]
    fn a_contained_resource_of_unknown_type_is_refused() {
        let patient =
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Nope", "id": "x"}]});
        let issues = SchemaValidator::new().check(ResourceType::Patient, &patient);
        assert_eq!(
            expressions(&issues),
            vec!["Patient.contained[0].resourceType"]
        );
    }

    #[test]
    fn error_messages_do_not_quote_the_value() {
        let patient = json!({"resourceType": "Patient", "birthDate": "Jane Doe's secret"});
        let issues = SchemaValidator::new().check(ResourceType::Patient, &patient);
        assert!(!issues.is_empty());
        assert!(
            issues.iter().all(|i| !i.diagnostics.contains("secret")),
            "{issues:?}"
        );
    }
}

#[cfg(test)]
mod typed_tests {
    use super::*;

    /// A typed resource inside an untyped container is still read into its model.
    #[test]
    fn a_typed_resource_in_an_untyped_container_is_checked_by_its_model() {
        let procedure = json!({"resourceType": "Procedure", "status": "completed",
            "subject": {"reference": "#p"},
            "contained": [{"resourceType": "Patient", "id": "p", "multipleBirthInteger": 3000000000u64}]});
        let issues = SchemaValidator::new().check(ResourceType::Procedure, &procedure);
        let paths: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert_eq!(paths, ["Procedure.contained[0].multipleBirthInteger"]);
    }

    /// Under a typed container, an untyped resource's own contents are still checked.
    #[test]
    fn a_typed_resource_under_an_untyped_one_in_a_typed_bundle_is_checked() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "Procedure", "status": "completed",
                "subject": {"reference": "#p"},
                "contained": [{"resourceType": "Patient", "id": "p", "multipleBirthInteger": 3000000000u64}]}}]});
        let issues = SchemaValidator::new().check(ResourceType::Bundle, &bundle);
        let paths: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert_eq!(
            paths,
            ["Bundle.entry[0].resource.contained[0].multipleBirthInteger"]
        );
    }

    /// A typed container reads its typed entries itself, with the full path.
    #[test]
    fn a_typed_resource_in_a_typed_container_is_checked_once_with_its_full_path() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "multipleBirthInteger": 3000000000u64}}]});
        let issues = SchemaValidator::new().check(ResourceType::Bundle, &bundle);
        let paths: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert_eq!(paths, ["Bundle.entry[0].resource.multipleBirthInteger"]);
    }
}
