//! Every official R4 example of a typed type survives JSON → typed model → JSON unchanged.

use std::path::PathBuf;

use fhir_models::{
    Resource, ResourceType, parse_resource, resource_from_value, resource_to_value, resource_to_vec,
};
use serde_json::Value;

/// Examples that are not valid R4 JSON themselves, so no typed model can keep them as they are.
const INVALID_EXAMPLES: &[(&str, &str)] = &[];

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/r4-examples")
}

/// The first place where `a` and `b` differ, as a path, or `None`.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = first_difference(&format!("{path}.{k}"), v, w) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{path}.{k}: missing after round trip")),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{k}: added by round trip"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(&format!("{path}[{i}]"), v, w)),
        // Value's Number equality compares the text with arbitrary_precision: `4.50` ≠ `4.5`.
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

#[test]
fn official_examples_of_typed_types_round_trip_exactly() {
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("examples directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some(type_name) = file.split('-').next() else {
            continue;
        };
        let Ok(resource_type) = type_name.parse::<ResourceType>() else {
            continue;
        };
        if !resource_type.has_typed_model() {
            continue;
        }
        let bytes = std::fs::read(&path).expect("example file");
        let original: Value = serde_json::from_slice(&bytes).expect("example is JSON");
        let expected_invalid = INVALID_EXAMPLES.iter().any(|(f, _)| *f == file);
        let outcome = resource_from_value(&original)
            .map_err(|e| format!("from value: {e}"))
            .and_then(|typed| {
                if matches!(typed, Resource::Other(_)) {
                    return Err("parsed as Other".to_owned());
                }
                match first_difference(type_name, &original, &resource_to_value(&typed)) {
                    Some(d) => Err(d),
                    None => Ok(()),
                }
            })
            .and_then(|()| {
                let typed = parse_resource(&bytes).map_err(|e| format!("from bytes: {e}"))?;
                let again: Value =
                    serde_json::from_slice(&resource_to_vec(&typed)).map_err(|e| e.to_string())?;
                match first_difference(type_name, &original, &again) {
                    Some(d) => Err(format!("via bytes: {d}")),
                    None => Ok(()),
                }
            });
        match (outcome, expected_invalid) {
            (Ok(()), false) => checked += 1,
            (Err(e), false) => failures.push(format!("{file}: {e}")),
            (Ok(()), true) => failures.push(format!("{file}: listed as invalid but round-trips")),
            (Err(_), true) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} examples round-tripped");
    assert!(checked > 100, "only {checked} examples checked");
}
