//! The search parameter table from the official SearchParameter definitions
//! (`spec/search-parameters.json`): for each resource type, each parameter's code, type, the part
//! of its FHIRPath `expression` that applies to that type, its target types, its canonical URL,
//! and for a date parameter whether a resource has at most one value of it (from the elements'
//! cardinality in `spec/profiles-resources.json`).
//!
//! Many definitions are shared by several types (`clinical-patient` has one expression with a
//! branch per type, joined by `|`); each type gets only its own branches, so the server never
//! evaluates the others. Composite parameters are left out: the server does not support them yet,
//! and a parameter the CapabilityStatement lists must work. Parameters without an expression
//! (`_text`, `_content`, `_query`) are left out for the same reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

struct Parameter {
    code: String,
    kind: &'static str,
    expression: String,
    targets: Vec<String>,
    url: String,
    one_row: bool,
}

/// Rust source for `fhir_models::generated::search_parameters`, from the text of
/// `search-parameters.json` and of `profiles-resources.json` (for the cardinality and types of
/// the elements the expressions name).
pub fn generate(
    search_parameters: &str,
    profiles_resources: &str,
    resource_types: &[String],
) -> Result<String, String> {
    let elements = top_level_elements(profiles_resources)?;
    let bundle: Value = serde_json::from_str(search_parameters)
        .map_err(|e| format!("search-parameters.json is not JSON: {e}"))?;
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .ok_or("search-parameters.json has no entries")?;
    let mut common: Vec<Parameter> = Vec::new();
    let mut by_type: BTreeMap<String, Vec<Parameter>> = BTreeMap::new();
    for entry in entries {
        let Some(sp) = entry.get("resource") else {
            continue;
        };
        let text = |key: &str| sp.get(key).and_then(Value::as_str).unwrap_or_default();
        let kind = match text("type") {
            "number" => "Number",
            "date" => "Date",
            "string" => "String",
            "token" => "Token",
            "reference" => "Reference",
            "quantity" => "Quantity",
            "uri" => "Uri",
            "special" => "Special",
            // Composite parameters are not supported yet.
            _ => continue,
        };
        let expression = text("expression");
        if expression.is_empty() {
            continue;
        }
        let targets: Vec<String> = sp
            .get("target")
            .and_then(Value::as_array)
            .map(|targets| {
                targets
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| resource_types.iter().any(|rt| rt == t))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let bases = sp
            .get("base")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("SearchParameter {} has no base", text("id")))?;
        for base in bases.iter().filter_map(Value::as_str) {
            let parameter = |expression: String| Parameter {
                code: text("code").to_owned(),
                kind,
                one_row: kind == "Date" && one_date_row(&expression, &elements),
                expression,
                targets: targets.clone(),
                url: text("url").to_owned(),
            };
            if base == "Resource" || base == "DomainResource" {
                common.push(parameter(expression.to_owned()));
                continue;
            }
            if !resource_types.iter().any(|rt| rt == base) {
                return Err(format!(
                    "SearchParameter {} has unknown base {base}",
                    text("id")
                ));
            }
            let mut own: Vec<String> = branches_for(expression, base)
                .into_iter()
                .map(str::to_owned)
                .collect();
            if own.is_empty() && expression.starts_with(|c: char| c.is_ascii_lowercase()) {
                // One definition (InsurancePlan-name: `name | alias`) gives paths relative to
                // its base; root them there.
                own = split_top_level_unions(expression)
                    .into_iter()
                    .map(|branch| format!("{base}.{branch}"))
                    .collect();
            }
            if own.is_empty() {
                return Err(format!(
                    "SearchParameter {}'s expression has no branch for {base}",
                    text("id")
                ));
            }
            by_type
                .entry(base.to_owned())
                .or_default()
                .push(parameter(own.join(" | ")));
        }
    }
    common.sort_by(|a, b| a.code.cmp(&b.code));
    for parameters in by_type.values_mut() {
        parameters.sort_by(|a, b| a.code.cmp(&b.code));
    }

    let mut out = String::new();
    out.push_str(
        "// @generated by `cargo run -p codegen` from spec/search-parameters.json and\n\
         // spec/profiles-resources.json. Do not edit.\n\
         //! The R4 search parameters of every resource type, from the official SearchParameter\n\
         //! definitions. Each expression holds only the branches for its own type.\n\n\
         use crate::ResourceType;\n\
         use crate::search::{SearchParamType, SearchParameterDef};\n\n",
    );
    out.push_str(
        "/// The parameters every resource type has (base `Resource` or `DomainResource`).\n",
    );
    out.push_str("pub static COMMON: &[SearchParameterDef] = &[\n");
    for parameter in &common {
        write_parameter(&mut out, parameter);
    }
    out.push_str("];\n\n");
    out.push_str("/// The parameters of `rt` beyond [`COMMON`], by code.\n");
    out.push_str("pub fn search_parameters(rt: ResourceType) -> &'static [SearchParameterDef] {\n");
    out.push_str("    match rt {\n");
    for rt in resource_types {
        match by_type.get(rt) {
            Some(parameters) => {
                let _ = writeln!(out, "        ResourceType::{rt} => &[");
                for parameter in parameters {
                    write_parameter(&mut out, parameter);
                }
                out.push_str("        ],\n");
            }
            None => {
                let _ = writeln!(out, "        ResourceType::{rt} => &[],");
            }
        }
    }
    out.push_str("    }\n}\n");
    Ok(out)
}

fn write_parameter(out: &mut String, parameter: &Parameter) {
    let targets = parameter
        .targets
        .iter()
        .map(|t| format!("ResourceType::{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "            SearchParameterDef {{ code: {:?}, kind: SearchParamType::{}, expression: {:?}, \
         targets: &[{targets}], url: {:?}, one_row: {} }},",
        parameter.code, parameter.kind, parameter.expression, parameter.url, parameter.one_row
    );
}

/// The top-level elements of each resource type (`Appointment.start`, `Observation.effective[x]`):
/// whether each holds at most one value, and its type codes.
type Elements = BTreeMap<String, (bool, Vec<String>)>;

fn top_level_elements(profiles_resources: &str) -> Result<Elements, String> {
    let bundle: Value = serde_json::from_str(profiles_resources)
        .map_err(|e| format!("profiles-resources.json is not JSON: {e}"))?;
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .ok_or("profiles-resources.json has no entries")?;
    let mut elements = Elements::new();
    for entry in entries {
        let Some(snapshot) = entry
            .pointer("/resource/snapshot/element")
            .and_then(Value::as_array)
        else {
            continue;
        };
        for element in snapshot {
            let Some(path) = element.get("path").and_then(Value::as_str) else {
                continue;
            };
            if path.matches('.').count() != 1 {
                continue;
            }
            let single = element.get("max").and_then(Value::as_str) == Some("1");
            let types = element
                .get("type")
                .and_then(Value::as_array)
                .map(|types| {
                    types
                        .iter()
                        .filter_map(|t| t.get("code").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            elements.insert(path.to_owned(), (single, types));
        }
    }
    Ok(elements)
}

/// Whether a date parameter's expression gives each resource at most one index row: one branch
/// naming one top-level element of at most one value, of a type indexed as one range (a date,
/// dateTime, instant or Period; a Timing gives a row per event). `Appointment.start`,
/// `Encounter.period` and `(Immunization.occurrence as dateTime)` do; `Observation.effective`'s
/// four branches, a path into a repeating element, or a `where(…)` do not.
fn one_date_row(expression: &str, elements: &Elements) -> bool {
    const ONE_RANGE: [&str; 4] = ["date", "dateTime", "instant", "Period"];
    let is_path = |path: &str| {
        path.matches('.').count() == 1
            && path.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
    };
    // The element, and the type the expression takes of it (`as T`), if it names one.
    let (path, of_type) = match expression
        .strip_prefix('(')
        .and_then(|e| e.strip_suffix(')'))
        .and_then(|e| e.split_once(" as "))
    {
        Some((path, of_type)) if is_path(path) => (format!("{path}[x]"), Some(of_type)),
        Some(_) => return false,
        None if is_path(expression) => (expression.to_owned(), None),
        None => return false,
    };
    let Some((single, declared)) = elements.get(&path) else {
        return false;
    };
    let types: Vec<&str> = match of_type {
        Some(of_type) => vec![of_type],
        None => declared.iter().map(String::as_str).collect(),
    };
    *single
        && !types.is_empty()
        && types
            .iter()
            .all(|t| ONE_RANGE.contains(t) && declared.iter().any(|d| d == t))
}

/// The branches of a `|`-joined expression that start at `base` (`Patient.x`, `(Patient.x as T)`).
fn branches_for<'a>(expression: &'a str, base: &str) -> Vec<&'a str> {
    split_top_level_unions(expression)
        .into_iter()
        .filter(|branch| {
            let inner = branch.trim_start_matches('(');
            inner.strip_prefix(base).is_some_and(|rest| {
                rest.starts_with('.') || rest.starts_with(' ') || rest.is_empty()
            })
        })
        .collect()
}

/// Splits at the `|` that are outside parentheses and string literals.
fn split_top_level_unions(expression: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut start = 0;
    for (i, c) in expression.char_indices() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => depth = depth.saturating_sub(1),
            '|' if !in_string && depth == 0 => {
                parts.push(expression[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(expression[start..].trim());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_parameter_has_one_row_only_on_one_element_of_one_range() {
        let elements: Elements = [
            ("Appointment.start", true, &["instant"][..]),
            ("Encounter.period", true, &["Period"][..]),
            (
                "Immunization.occurrence[x]",
                true,
                &["dateTime", "string"][..],
            ),
            (
                "Observation.effective[x]",
                true,
                &["dateTime", "Period", "Timing", "instant"][..],
            ),
            ("CarePlan.activity", false, &["BackboneElement"][..]),
            ("Patient.name", false, &["HumanName"][..]),
            (
                "MedicationRequest.dosageInstruction",
                false,
                &["Dosage"][..],
            ),
            ("Goal.target", false, &["BackboneElement"][..]),
            ("Consent.dateTime", true, &["dateTime"][..]),
        ]
        .into_iter()
        .map(|(path, single, types)| {
            (
                path.to_owned(),
                (single, types.iter().map(|t| (*t).to_owned()).collect()),
            )
        })
        .collect();
        for one in [
            "Appointment.start",
            "Encounter.period",
            "(Immunization.occurrence as dateTime)",
            "(Observation.effective as Period)",
            "Consent.dateTime",
        ] {
            assert!(one_date_row(one, &elements), "{one}");
        }
        for more in [
            "(Observation.effective as dateTime) | (Observation.effective as Period)",
            "(Observation.effective as Timing)",
            "(Immunization.occurrence as string)",
            "Observation.effective",
            "CarePlan.activity.detail.scheduled",
            "Goal.target.due",
            "Appointment.start.where(true)",
            "Appointment.unknown",
        ] {
            assert!(!one_date_row(more, &elements), "{more}");
        }
    }

    #[test]
    fn a_shared_expression_keeps_only_the_branches_of_its_base() {
        let expression = "AllergyIntolerance.code | (MedicationRequest.medication as CodeableConcept) | Observation.code";
        assert_eq!(
            branches_for(expression, "MedicationRequest"),
            ["(MedicationRequest.medication as CodeableConcept)"]
        );
        assert_eq!(
            branches_for(expression, "Observation"),
            ["Observation.code"]
        );
        assert!(branches_for(expression, "Obs").is_empty());
    }

    #[test]
    fn unions_inside_parentheses_and_strings_do_not_split() {
        assert_eq!(
            split_top_level_unions("(A.b | A.c) | A.d.where(x='p|q')"),
            ["(A.b | A.c)", "A.d.where(x='p|q')"]
        );
    }
}
