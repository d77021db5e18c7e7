//! Index rows: what a resource contributes to each search parameter of its type, found with the
//! parameter's FHIRPath expression and reduced to comparable values (http://hl7.org/fhir/R4/search.html).
//!
//! - token: `system`, `code` and the `text` a `:text` search reads (codings, identifiers,
//!   codes, booleans, contact points). An identifier also gives a row under `{code}:of-type`
//!   (system = type system `|` type code), a reference with an identifier a row under
//!   `{code}:identifier`.
//! - string: the normalised form (lower case, accents removed) for the default and `:contains`
//!   searches, and the exact text for `:exact`.
//! - date: the range a value covers, `[low, high]` in microseconds (`2024` covers the year).
//! - reference: the target's type and id for a local reference, the URL otherwise.
//! - quantity and number: the value (a range for Range), with system and code for a quantity.
//! - uri: the text.
//! - position (`Location.near`): latitude and longitude.

use std::sync::LazyLock;

use fhir_models::ResourceType;
use fhir_models::search::{SearchParamType, SearchParameterDef};
use serde_json::Value;

use super::dates::{DateRange, parse_date_range};
use super::fhirpath::{self, Expr, Item};
use super::{indexed, normalize};

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub param: String,
    pub system: Option<String>,
    pub code: Option<String>,
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StringRow {
    pub param: String,
    pub normalized: String,
    pub exact: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DateRow {
    pub param: String,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceRow {
    pub param: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NumberRow {
    pub param: String,
    pub low: f64,
    pub high: f64,
    /// Only for quantities.
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UriRow {
    pub param: String,
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PositionRow {
    pub param: String,
    pub latitude: f64,
    pub longitude: f64,
}

/// Every index row of one resource, by table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexRows {
    pub tokens: Vec<TokenRow>,
    pub strings: Vec<StringRow>,
    pub dates: Vec<DateRow>,
    pub references: Vec<ReferenceRow>,
    pub numbers: Vec<NumberRow>,
    pub quantities: Vec<NumberRow>,
    pub uris: Vec<UriRow>,
    pub positions: Vec<PositionRow>,
}

impl IndexRows {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
            && self.strings.is_empty()
            && self.dates.is_empty()
            && self.references.is_empty()
            && self.numbers.is_empty()
            && self.quantities.is_empty()
            && self.uris.is_empty()
            && self.positions.is_empty()
    }
}

/// A search parameter with its expression parsed once.
pub struct Compiled {
    pub def: &'static SearchParameterDef,
    pub expr: Expr,
}

/// The parameters each type indexes, parsed at first use. `_id` and `_lastUpdated` are columns
/// of `resources`, not index rows.
static COMPILED: LazyLock<Vec<Vec<Compiled>>> = LazyLock::new(|| {
    ResourceType::ALL
        .iter()
        .map(|rt| {
            fhir_models::search_parameters(*rt)
                .iter()
                .chain(fhir_models::COMMON_SEARCH_PARAMETERS)
                .filter(|def| def.code != "_id" && def.code != "_lastUpdated")
                .filter_map(|def| {
                    // Every expression of the table parses (a unit test says so).
                    let expr = fhirpath::parse(def.expression).ok()?;
                    Some(Compiled { def, expr })
                })
                .collect()
        })
        .collect()
});

/// Parses every expression now, so the first write does not pay for it.
pub fn warm() {
    LazyLock::force(&COMPILED);
}

/// The index rows of `resource`, a resource of type `rt`. `fhir_base` (`https://h/fhir`)
/// makes absolute references to this server local ones.
pub fn extract(rt: ResourceType, resource: &Value, fhir_base: &str) -> IndexRows {
    let mut rows = IndexRows::default();
    for compiled in &COMPILED[rt as usize] {
        let code = compiled.def.code;
        for item in fhirpath::evaluate(&compiled.expr, resource) {
            match compiled.def.kind {
                SearchParamType::Token => token_rows(code, item, &mut rows),
                SearchParamType::String => {
                    if let Item::Json { value, .. } = item {
                        string_rows(code, value, &mut rows.strings);
                    }
                }
                SearchParamType::Date => {
                    if let Item::Json { value, .. } = item {
                        date_rows(code, value, &mut rows.dates);
                    }
                }
                SearchParamType::Reference => {
                    if let Item::Json { value, .. } = item {
                        reference_rows(code, value, fhir_base, &mut rows);
                    }
                }
                SearchParamType::Quantity => {
                    if let Item::Json { value, .. } = item {
                        quantity_rows(code, value, &mut rows.quantities);
                    }
                }
                SearchParamType::Number => {
                    if let Item::Json { value, .. } = item {
                        number_rows(code, value, &mut rows.numbers);
                    }
                }
                SearchParamType::Uri => {
                    if let Item::Json {
                        value: Value::String(uri),
                        ..
                    } = item
                    {
                        rows.uris.push(UriRow {
                            param: code.to_owned(),
                            uri: indexed(uri).to_owned(),
                        });
                    }
                }
                SearchParamType::Special => {
                    if let Item::Json { value, .. } = item
                        && let (Some(latitude), Some(longitude)) = (
                            value.get("latitude").and_then(number),
                            value.get("longitude").and_then(number),
                        )
                    {
                        rows.positions.push(PositionRow {
                            param: code.to_owned(),
                            latitude,
                            longitude,
                        });
                    }
                }
            }
        }
    }
    rows
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

fn text_of(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(|t| indexed(t).to_owned())
}

/// The `system` codes of ContactPoint: a contact point's system is not a URI.
const CONTACT_POINT_SYSTEMS: [&str; 7] = ["phone", "fax", "email", "pager", "url", "sms", "other"];

fn token_rows(code: &str, item: Item<'_>, rows: &mut IndexRows) {
    let tokens = &mut rows.tokens;
    let mut push = |system: Option<String>, value: Option<String>, text: Option<String>| {
        if system.is_some() || value.is_some() || text.is_some() {
            tokens.push(TokenRow {
                param: code.to_owned(),
                system,
                code: value,
                text: text.map(|t| normalize(&t)),
            });
        }
    };
    let value = match item {
        Item::Boolean(b) => {
            push(None, Some(b.to_string()), None);
            return;
        }
        Item::Json { value, .. } => value,
    };
    match value {
        Value::String(text) => push(None, Some(indexed(text).to_owned()), None),
        Value::Bool(b) => push(None, Some(b.to_string()), None),
        Value::Object(object) => {
            if object.contains_key("coding") || object.contains_key("text") {
                // CodeableConcept.
                for coding in object
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(
                        text_of(coding, "system"),
                        text_of(coding, "code"),
                        text_of(coding, "display"),
                    );
                }
                push(None, None, text_of(value, "text"));
            } else if object.contains_key("value") {
                let system = text_of(value, "system");
                if system
                    .as_deref()
                    .is_some_and(|s| CONTACT_POINT_SYSTEMS.contains(&s))
                {
                    // ContactPoint: searched by its value.
                    push(None, text_of(value, "value"), None);
                    return;
                }
                // Identifier.
                let identifier_type = value.get("type");
                push(
                    system,
                    text_of(value, "value"),
                    identifier_type.and_then(|t| text_of(t, "text")),
                );
                for coding in identifier_type
                    .and_then(|t| t.get("coding"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    rows.tokens.push(TokenRow {
                        param: format!("{code}:of-type"),
                        system: Some(
                            indexed(&format!(
                                "{}|{}",
                                coding.get("system").and_then(Value::as_str).unwrap_or(""),
                                coding.get("code").and_then(Value::as_str).unwrap_or("")
                            ))
                            .to_owned(),
                        ),
                        code: text_of(value, "value"),
                        text: None,
                    });
                }
            } else {
                // Coding.
                push(
                    text_of(value, "system"),
                    text_of(value, "code"),
                    text_of(value, "display"),
                );
            }
        }
        _ => {}
    }
}

fn string_rows(code: &str, value: &Value, rows: &mut Vec<StringRow>) {
    let mut push = |text: &str| {
        if !text.is_empty() {
            rows.push(StringRow {
                param: code.to_owned(),
                normalized: normalize(text),
                exact: indexed(text).to_owned(),
            });
        }
    };
    match value {
        Value::String(text) => push(text),
        Value::Object(object) => {
            // HumanName, Address and the like: every text part is a value of the parameter.
            for (key, part) in object {
                if matches!(key.as_str(), "id" | "extension" | "use" | "type" | "period") {
                    continue;
                }
                match part {
                    Value::String(text) => push(text),
                    Value::Array(items) => {
                        items.iter().filter_map(Value::as_str).for_each(&mut push)
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn date_rows(code: &str, value: &Value, rows: &mut Vec<DateRow>) {
    let mut push = |range: DateRange| {
        rows.push(DateRow {
            param: code.to_owned(),
            low: range.low,
            high: range.high,
        });
    };
    match value {
        Value::String(text) => {
            if let Ok(range) = parse_date_range(text) {
                push(range);
            }
        }
        Value::Object(object) => {
            if object.contains_key("start") || object.contains_key("end") {
                // Period: an absent end is ongoing, an absent start is unknown.
                let start = object.get("start").and_then(Value::as_str);
                let end = object.get("end").and_then(Value::as_str);
                let low = start
                    .and_then(|s| parse_date_range(s).ok())
                    .map_or(i64::MIN, |r| r.low);
                let high = end
                    .and_then(|s| parse_date_range(s).ok())
                    .map_or(i64::MAX, |r| r.high);
                push(DateRange { low, high });
            } else if let Some(events) = object.get("event").and_then(Value::as_array) {
                // Timing.
                for event in events.iter().filter_map(Value::as_str) {
                    if let Ok(range) = parse_date_range(event) {
                        push(range);
                    }
                }
            }
        }
        _ => {}
    }
}

fn reference_rows(code: &str, value: &Value, fhir_base: &str, rows: &mut IndexRows) {
    let mut push = |target_type: Option<&str>, target_id: Option<&str>, url: Option<&str>| {
        rows.references.push(ReferenceRow {
            param: code.to_owned(),
            target_type: target_type.map(str::to_owned),
            target_id: target_id.map(|t| indexed(t).to_owned()),
            url: url.map(|u| indexed(u).to_owned()),
        });
    };
    let literal = match value {
        // canonical and uri elements searched as references.
        Value::String(text) => Some(text.as_str()),
        Value::Object(_) => value.get("reference").and_then(Value::as_str),
        _ => None,
    };
    match literal {
        Some(text) if text.starts_with('#') => {}
        Some(text) => {
            let local = text
                .strip_prefix(fhir_base)
                .and_then(|rest| rest.strip_prefix('/'))
                .or_else(|| (!text.contains(':')).then_some(text));
            match local.and_then(fhirpath::parse_reference) {
                Some((ty, id)) => push(Some(ty), Some(id), None),
                None => {
                    let declared = value.get("type").and_then(Value::as_str);
                    push(declared, None, Some(text));
                }
            }
        }
        None => {}
    }
    if let Some(identifier) = value.get("identifier") {
        if literal.is_none() {
            // A logical reference only: its type is still searchable with `:Type`.
            if let Some(declared) = value.get("type").and_then(Value::as_str) {
                push(Some(declared), None, None);
            }
        }
        rows.tokens.push(TokenRow {
            param: format!("{code}:identifier"),
            system: text_of(identifier, "system"),
            code: text_of(identifier, "value"),
            text: None,
        });
    }
}

fn quantity_rows(code: &str, value: &Value, rows: &mut Vec<NumberRow>) {
    let mut push = |quantity: &Value, low: f64, high: f64| {
        let system = text_of(quantity, "system").or_else(|| {
            quantity
                .get("currency")
                .map(|_| "urn:iso:std:iso:4217".to_owned())
        });
        let unit_code = text_of(quantity, "code").or_else(|| text_of(quantity, "currency"));
        let unit = text_of(quantity, "unit");
        rows.push(NumberRow {
            param: code.to_owned(),
            low,
            high,
            system,
            code: unit_code.clone(),
        });
        // `value||unit` matches the human unit too.
        if let Some(unit) = unit.filter(|u| Some(u) != unit_code.as_ref()) {
            rows.push(NumberRow {
                param: code.to_owned(),
                low,
                high,
                system: None,
                code: Some(unit),
            });
        }
    };
    if let Some(v) = value.get("value").and_then(number) {
        push(value, v, v);
    } else if value.get("low").is_some() || value.get("high").is_some() {
        // Range.
        let low = value.get("low");
        let high = value.get("high");
        let unit_from = low.or(high).unwrap_or(value);
        push(
            unit_from,
            low.and_then(|l| l.get("value"))
                .and_then(number)
                .unwrap_or(f64::MIN),
            high.and_then(|h| h.get("value"))
                .and_then(number)
                .unwrap_or(f64::MAX),
        );
    }
}

fn number_rows(code: &str, value: &Value, rows: &mut Vec<NumberRow>) {
    if let Some(v) = number(value) {
        rows.push(NumberRow {
            param: code.to_owned(),
            low: v,
            high: v,
            system: None,
            code: None,
        });
    }
}

/// The references of `resource` (of type `rt`) through the reference parameters named in
/// `params` only, as index rows: what the compartment of a resource is read from, without
/// extracting every other parameter.
pub fn references_through(
    rt: ResourceType,
    resource: &Value,
    fhir_base: &str,
    params: &[&str],
) -> Vec<ReferenceRow> {
    let mut rows = IndexRows::default();
    for compiled in &COMPILED[rt as usize] {
        let def = compiled.def;
        if def.kind != SearchParamType::Reference || !params.contains(&def.code) {
            continue;
        }
        for item in fhirpath::evaluate(&compiled.expr, resource) {
            if let Item::Json { value, .. } = item {
                reference_rows(def.code, value, fhir_base, &mut rows);
            }
        }
    }
    rows.references
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const BASE: &str = "https://ehr.example/fhir";

    fn extract_json(resource: Value) -> IndexRows {
        let rt = resource["resourceType"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("type");
        extract(rt, &resource, BASE)
    }

    #[test]
    fn a_patient_gives_identifier_name_birthdate_and_reference_rows() {
        let rows = extract_json(json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "42",
                            "type": {"coding": [{"system": "http://t", "code": "MR"}]}}],
            "name": [{"family": "Müller", "given": ["José"]}],
            "birthDate": "1980-05",
            "generalPractitioner": [{"reference": "https://ehr.example/fhir/Practitioner/7"}],
            "managingOrganization": {"reference": "http://elsewhere/fhir/Organization/1"}}));
        assert!(rows.tokens.contains(&TokenRow {
            param: "identifier".into(),
            system: Some("urn:mrn".into()),
            code: Some("42".into()),
            text: None
        }));
        assert!(rows.tokens.contains(&TokenRow {
            param: "identifier:of-type".into(),
            system: Some("http://t|MR".into()),
            code: Some("42".into()),
            text: None
        }));
        assert!(
            rows.strings
                .iter()
                .any(|s| s.param == "family" && s.normalized == "muller" && s.exact == "Müller")
        );
        assert!(
            rows.strings
                .iter()
                .any(|s| s.param == "name" && s.normalized == "jose")
        );
        let birthdate = rows
            .dates
            .iter()
            .find(|d| d.param == "birthdate")
            .expect("birthdate");
        assert_eq!(
            birthdate.high - birthdate.low + 1,
            31 * 24 * 3600 * 1_000_000
        );
        assert!(rows.references.contains(&ReferenceRow {
            param: "general-practitioner".into(),
            target_type: Some("Practitioner".into()),
            target_id: Some("7".into()),
            url: None
        }));
        assert!(rows.references.iter().any(|r| r.param == "organization"
            && r.url.as_deref() == Some("http://elsewhere/fhir/Organization/1")));
    }

    #[test]
    fn an_observation_gives_code_quantity_and_date_rows() {
        let rows = extract_json(json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5", "display": "Glucose"}]},
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2024-01-01T10:00:00Z"},
            "valueQuantity": {"value": 5.4, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}));
        assert!(
            rows.tokens
                .iter()
                .any(|t| t.param == "code" && t.text.as_deref() == Some("glucose"))
        );
        assert!(
            rows.quantities
                .iter()
                .any(|q| q.param == "value-quantity" && q.low == 5.4)
        );
        let date = rows.dates.iter().find(|d| d.param == "date").expect("date");
        assert_eq!(date.high, i64::MAX);
        assert!(
            rows.references
                .iter()
                .any(|r| r.param == "patient" && r.target_id.as_deref() == Some("p1"))
        );
        assert!(rows.references.iter().any(|r| r.param == "subject"));
    }

    #[test]
    fn a_reference_by_identifier_is_searchable_by_identifier() {
        let rows = extract_json(json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"},
            "subject": {"identifier": {"system": "urn:mrn", "value": "42"}}}));
        assert!(
            rows.tokens
                .iter()
                .any(|t| t.param == "subject:identifier" && t.code.as_deref() == Some("42"))
        );
    }

    #[test]
    fn deceased_is_a_boolean_token() {
        let rows =
            extract_json(json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}));
        assert!(
            rows.tokens
                .iter()
                .any(|t| t.param == "deceased" && t.code.as_deref() == Some("true"))
        );
    }

    #[test]
    fn meta_tags_and_profiles_are_indexed() {
        let rows = extract_json(json!({"resourceType": "Patient",
            "meta": {"tag": [{"system": "urn:t", "code": "vip"}], "profile": ["http://p"]}}));
        assert!(
            rows.tokens
                .iter()
                .any(|t| t.param == "_tag" && t.code.as_deref() == Some("vip"))
        );
        assert!(
            rows.uris
                .iter()
                .any(|u| u.param == "_profile" && u.uri == "http://p")
        );
    }

    #[test]
    fn a_location_has_a_position() {
        let rows = extract_json(json!({"resourceType": "Location",
            "position": {"latitude": 42.25, "longitude": -83.69}}));
        assert_eq!(
            rows.positions,
            [PositionRow {
                param: "near".into(),
                latitude: 42.25,
                longitude: -83.69
            }]
        );
    }
}
