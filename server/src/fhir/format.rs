//! Media types, `_format`, `_pretty`, `_summary`, `_elements` and `Prefer`: how a request says
//! what it sends and what it wants back.

use axum::http::{HeaderMap, header};
use fhir_models::ResourceType;
use serde_json::Value;

use super::bundle::{Bundle, WriteEntry};
use crate::error::FhirError;

/// The media type of every FHIR response body.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The request parameters that shape a response, parsed once per request.
#[derive(Debug, Default, Clone)]
pub struct Shape {
    pub pretty: bool,
    pub summary: Summary,
    /// `_elements`: the top-level elements to keep.
    pub elements: Option<Vec<String>>,
}

/// `_summary`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    #[default]
    False,
    True,
    Text,
    Data,
    Count,
}

impl Shape {
    /// Reads `_format`, `_pretty`, `_summary` and `_elements` from the query, and `Accept`.
    pub fn from_request(
        query: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<Self, FhirError> {
        let mut shape = Self::default();
        for (name, value) in query {
            match name.as_str() {
                "_format" => check_format(value)?,
                "_pretty" => {
                    shape.pretty = parse_bool(value)
                        .ok_or_else(|| bad_parameter("_pretty", "must be true or false"))?;
                }
                "_summary" => {
                    shape.summary = match value.as_str() {
                        "true" => Summary::True,
                        "false" => Summary::False,
                        "text" => Summary::Text,
                        "data" => Summary::Data,
                        "count" => Summary::Count,
                        _ => {
                            return Err(bad_parameter(
                                "_summary",
                                "must be one of true, false, text, data, count",
                            ));
                        }
                    };
                }
                "_elements" => {
                    let list = shape.elements.get_or_insert_with(Vec::new);
                    list.extend(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|e| !e.is_empty())
                            // `Patient.name` and `name` both name the element `name`.
                            .map(|e| e.rsplit('.').next().unwrap_or(e).to_owned()),
                    );
                }
                _ => {}
            }
        }
        if !query.iter().any(|(name, _)| name == "_format") {
            check_accept(headers)?;
        }
        Ok(shape)
    }

    /// Whether the stored bytes can be sent as they are.
    pub fn is_identity(&self) -> bool {
        !self.pretty && self.summary == Summary::False && self.elements.is_none()
    }

    /// Applies `_summary` and `_elements` to a resource: keeps `resourceType`, `id`, `meta`,
    /// the mandatory elements and what was asked for, and tags the result SUBSETTED.
    pub fn subset(&self, resource: &mut Value) {
        let Some(object) = resource.as_object_mut() else {
            return;
        };
        let rt = object
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(|name| name.parse::<ResourceType>().ok());
        let mandatory = rt.map(fhir_models::mandatory_elements).unwrap_or_default();
        let mut keep: Vec<String> = mandatory.iter().map(|e| (*e).to_owned()).collect();
        match (&self.elements, self.summary) {
            (Some(requested), _) => {
                let known = rt.map(fhir_models::elements).unwrap_or_default();
                // A choice element may be asked for without its `[x]`: `deceased`.
                keep.extend(requested.iter().map(|name| {
                    let choice = format!("{name}[x]");
                    if known.contains(&choice.as_str()) {
                        choice
                    } else {
                        name.clone()
                    }
                }));
            }
            (None, Summary::True) => {
                let summary = rt.map(fhir_models::summary_elements).unwrap_or_default();
                keep.extend(summary.iter().map(|e| (*e).to_owned()));
            }
            (None, Summary::Text) => keep.push("text".to_owned()),
            (None, Summary::Data) => {
                object.remove("text");
                mark_subsetted(object);
                return;
            }
            (None, Summary::False | Summary::Count) => return,
        }
        object.retain(|key, _| {
            is_always_kept(key)
                || keep
                    .iter()
                    .any(|name| fhir_models::element_matches(name, key))
        });
        mark_subsetted(object);
    }

    /// Serialises a Bundle as this request asked: compact by [`Bundle::to_json`], or
    /// indented for `_pretty`.
    pub fn bundle_to_bytes<E: WriteEntry>(&self, bundle: &Bundle<E>) -> Result<Vec<u8>, FhirError> {
        if self.pretty {
            return self.to_bytes(bundle);
        }
        bundle.to_json().map_err(|e| FhirError::Internal(e.into()))
    }

    /// Serialises a response body as this request asked (`_pretty`).
    pub fn to_bytes(&self, value: &impl serde::Serialize) -> Result<Vec<u8>, FhirError> {
        let bytes = if self.pretty {
            serde_json::to_vec_pretty(value)
        } else {
            serde_json::to_vec(value)
        };
        bytes.map_err(|e| FhirError::Internal(e.into()))
    }
}

fn is_always_kept(key: &str) -> bool {
    matches!(key, "resourceType" | "id" | "meta")
}

/// Adds the `SUBSETTED` tag that tells a client it is not seeing the whole resource.
fn mark_subsetted(object: &mut serde_json::Map<String, Value>) {
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let tags = meta
        .entry("tag")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(tags) = tags.as_array_mut() {
        tags.push(serde_json::json!({
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED",
            "display": "Resource encoded in summary mode"
        }));
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub fn bad_parameter(name: &str, problem: &str) -> FhirError {
    FhirError::BadRequest(vec![
        crate::error::Issue::error("invalid", format!("parameter {name} {problem}")).at(name),
    ])
}

/// Whether the request's `Content-Type` is `media_type` (parameters such as `charset` aside).
pub fn content_type_is(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(media_type))
}

fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/fhir+json")
        || essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/json+fhir")
}

fn check_format(value: &str) -> Result<(), FhirError> {
    if value == "json" || is_json_media_type(value) {
        Ok(())
    } else {
        Err(FhirError::NotAcceptable(format!(
            "_format {value:?} is not supported; this server speaks JSON (application/fhir+json)"
        )))
    }
}

/// `Accept` must allow JSON: any JSON FHIR type, `application/*` or `*/*`.
fn check_accept(headers: &HeaderMap) -> Result<(), FhirError> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().unwrap_or("");
    if accept.trim().is_empty() {
        return Ok(());
    }
    let acceptable = accept.split(',').any(|range| {
        let essence = range.split(';').next().unwrap_or("").trim();
        essence == "*/*" || essence == "application/*" || is_json_media_type(essence)
    });
    if acceptable {
        Ok(())
    } else {
        Err(FhirError::NotAcceptable(
            "Accept allows no media type this server produces; it speaks application/fhir+json"
                .to_owned(),
        ))
    }
}

/// The body of a create, update or transaction must be FHIR JSON. A missing Content-Type is
/// taken as JSON; anything else is refused with 415.
pub fn check_resource_content_type(headers: &HeaderMap) -> Result<(), FhirError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(()),
        Some(value) if value.to_str().is_ok_and(is_json_media_type) => Ok(()),
        Some(value) => Err(FhirError::UnsupportedMediaType(format!(
            "Content-Type {:?} is not supported; send application/fhir+json",
            value.to_str().unwrap_or("(not text)")
        ))),
    }
}

/// `Prefer: return=…`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// The values of the preference `name` in the `Prefer` headers (`return`, `handling`).
pub fn preferences<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(&[',', ';']))
        .filter_map(move |token| {
            let (key, value) = token.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}

/// Whether the client asked for `Prefer: handling=strict`: unknown search parameters are
/// errors rather than warnings.
pub fn handling_is_strict(headers: &HeaderMap) -> bool {
    preferences(headers, "handling").any(|v| v == "strict")
}

impl Return {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        preferences(headers, "return")
            .find_map(|value| match value {
                "minimal" => Some(Self::Minimal),
                "representation" => Some(Self::Representation),
                "OperationOutcome" => Some(Self::OperationOutcome),
                _ => None,
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn prefer_return_is_read_among_other_preferences() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "prefer",
            HeaderValue::from_static("handling=strict, return=minimal"),
        );
        assert_eq!(Return::from_headers(&headers), Return::Minimal);
        headers.insert(
            "prefer",
            HeaderValue::from_static("return=OperationOutcome"),
        );
        assert_eq!(Return::from_headers(&headers), Return::OperationOutcome);
        assert_eq!(
            Return::from_headers(&HeaderMap::new()),
            Return::Representation
        );
    }

    #[test]
    fn elements_keep_the_named_and_mandatory_elements_and_mark_the_subset() {
        let shape = Shape::from_request(
            &pairs(&[("_elements", "Patient.birthDate")]),
            &HeaderMap::new(),
        )
        .expect("valid parameters");
        let mut patient =
            json!({"resourceType": "Patient", "id": "1", "gender": "male", "birthDate": "2000"});
        shape.subset(&mut patient);
        assert_eq!(patient["birthDate"], "2000");
        assert!(patient.get("gender").is_none());
        assert_eq!(patient["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    fn a_bad_summary_value_is_refused() {
        assert!(Shape::from_request(&pairs(&[("_summary", "maybe")]), &HeaderMap::new()).is_err());
    }

    #[test]
    fn xml_is_not_acceptable_but_json_and_wildcards_are() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+xml"),
        );
        assert!(Shape::from_request(&[], &headers).is_err());
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, */*;q=0.8"),
        );
        assert!(Shape::from_request(&[], &headers).is_ok());
        assert!(Shape::from_request(&pairs(&[("_format", "xml")]), &HeaderMap::new()).is_err());
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;
    use serde_json::json;

    fn shape(name: &str, value: &str) -> Shape {
        Shape::from_request(&[(name.to_owned(), value.to_owned())], &HeaderMap::new())
            .expect("valid parameters")
    }

    #[test]
    fn summary_true_keeps_the_summary_elements_only() {
        let mut patient = json!({"resourceType": "Patient", "id": "1", "birthDate": "2000",
            "_birthDate": {"extension": []}, "deceasedBoolean": false, "photo": [{"url": "x"}],
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}});
        shape("_summary", "true").subset(&mut patient);
        assert_eq!(patient["birthDate"], "2000");
        assert!(patient.get("_birthDate").is_some());
        assert_eq!(patient["deceasedBoolean"], false);
        assert!(patient.get("photo").is_none() && patient.get("text").is_none());
        assert_eq!(patient["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    fn summary_text_and_data_keep_and_drop_the_narrative() {
        let observation = json!({"resourceType": "Observation", "id": "1", "status": "final",
            "code": {"text": "x"}, "valueString": "v", "text": {"status": "empty", "div": "<div/>"}});
        let mut text = observation.clone();
        shape("_summary", "text").subset(&mut text);
        assert!(text.get("text").is_some() && text.get("valueString").is_none());
        assert_eq!(text["status"], "final");
        let mut data = observation;
        shape("_summary", "data").subset(&mut data);
        assert!(data.get("text").is_none() && data.get("valueString").is_some());
    }

    #[test]
    fn elements_accept_a_choice_element_without_its_suffix() {
        let mut patient =
            json!({"resourceType": "Patient", "deceasedBoolean": true, "gender": "male"});
        shape("_elements", "deceased").subset(&mut patient);
        assert_eq!(patient["deceasedBoolean"], true);
        assert!(patient.get("gender").is_none());
    }
}
