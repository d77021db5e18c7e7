//! Reading a [`Resource`] by its `resourceType`, and the crate's non-generic entry points.
//!
//! Every typed model is deserialised from `&serde_json::Value` and nothing else: serde's code
//! is generic over the deserializer, and each extra deserializer type would compile all of it
//! again (several minutes of build for the 31 models). Bytes are parsed to a `Value` first; a
//! nested resource (`contained`, `Bundle.entry.resource`) is buffered as a `Value` and read
//! the same way. The nested read's path travels up inside the error message, marked, and
//! [`ModelError`] splices it back into one path.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, Error as _};
use serde_json::Value;

use crate::generated::resource::typed_from_value;
use crate::{ModelError, Resource, ResourceType};

/// Marks an error message as `MARK path MARK message`: a path inside a nested resource, which
/// the outer path tracker cannot see.
const MARK: char = '\u{1}';

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        read(&value).map_err(|(path, message)| {
            D::Error::custom(format_args!("{MARK}{path}{MARK}{message}"))
        })
    }
}

/// A resource from `value`; on error, the path inside the resource and the message.
fn read(value: &Value) -> Result<Resource, (String, String)> {
    let Some(name) = value.get("resourceType") else {
        let message = match value {
            Value::Object(_) => "missing field `resourceType`",
            _ => "expected a resource (a JSON object with a resourceType)",
        };
        return Err((String::new(), message.to_owned()));
    };
    let resource_type: ResourceType =
        name.as_str().and_then(|n| n.parse().ok()).ok_or_else(|| {
            (
                "resourceType".to_owned(),
                format!("unknown resource type {name}"),
            )
        })?;
    typed_from_value(resource_type, value).map_err(|e| split(&e.path().to_string(), e.inner()))
}

/// FHIR JSON has no `null` properties and no empty arrays (its only nulls are items of a
/// primitive's extension array, `"_given": [null, {…}]`). A typed model reads both as
/// absent and would drop them on the way out, so a typed read rejects them instead of
/// silently changing the resource. Checked once over the whole tree by the entry points.
fn lossless(value: &Value, path: &mut String) -> Result<(), (String, String)> {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match item {
                    Value::Null => {
                        return Err((
                            path.clone(),
                            "null is not allowed; leave the element out".to_owned(),
                        ));
                    }
                    Value::Array(items) if items.is_empty() => {
                        return Err((
                            path.clone(),
                            "empty arrays are not allowed; leave the element out".to_owned(),
                        ));
                    }
                    Value::Array(items) => {
                        for (index, element) in items.iter().enumerate() {
                            let len = path.len();
                            let _ = write!(path, "[{index}]");
                            match element {
                                Value::Null if key.starts_with('_') => {}
                                Value::Null => {
                                    return Err((path.clone(), "null is only allowed in the extension array of a primitive (`_name`)".to_owned()));
                                }
                                other => lossless(other, path)?,
                            }
                            path.truncate(len);
                        }
                    }
                    other => lossless(other, path)?,
                }
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `(path, message)` of an error, with any marked inner path moved from message to path.
fn split(path: &str, error: &serde_json::Error) -> (String, String) {
    let mut path = if path == "." {
        String::new()
    } else {
        path.to_owned()
    };
    let mut message = error.to_string();
    while let Some(rest) = message.strip_prefix(MARK) {
        let Some((inner, tail)) = rest.split_once(MARK) else {
            break;
        };
        path = join(&path, inner);
        message = tail.to_owned();
    }
    (path, message)
}

fn join(outer: &str, inner: &str) -> String {
    if outer.is_empty() {
        inner.to_owned()
    } else if inner.is_empty() || inner.starts_with('[') {
        format!("{outer}{inner}")
    } else {
        format!("{outer}.{inner}")
    }
}

impl ModelError {
    /// `root` names the resource (its type); `path` is inside it.
    fn at(root: &str, (path, message): (String, String)) -> Self {
        ModelError {
            path: join(root, &path),
            message,
        }
    }
}

/// The error path's first segment: the resource's own type if it has a known one.
fn root_name(value: &Value) -> &str {
    value
        .get("resourceType")
        .and_then(Value::as_str)
        .filter(|n| n.parse::<ResourceType>().is_ok())
        .unwrap_or("Resource")
}

/// Deserialises `value` into the typed model of `resource_type`, if that type has one, and
/// reports the first error with the JSON path where it happened. Types without a model: Ok(()).
pub fn check_typed(resource_type: ResourceType, value: &Value) -> Result<(), ModelError> {
    if !resource_type.has_typed_model() {
        return Ok(());
    }
    lossless(value, &mut String::new())
        .and_then(|()| {
            typed_from_value(resource_type, value)
                .map(drop)
                .map_err(|e| split(&e.path().to_string(), e.inner()))
        })
        .map_err(|e| ModelError::at(resource_type.as_str(), e))
}

/// Parses a resource of any type from JSON bytes: typed if its type has a model.
pub fn parse_resource(bytes: &[u8]) -> Result<Resource, ModelError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ModelError {
        path: "Resource".to_owned(),
        message: e.to_string(),
    })?;
    resource_from_value(&value)
}

/// Reads a resource of any type from JSON: typed if its type has a model.
pub fn resource_from_value(value: &Value) -> Result<Resource, ModelError> {
    let root = root_name(value);
    let typed = root.parse().is_ok_and(ResourceType::has_typed_model);
    let checked = if typed {
        lossless(value, &mut String::new())
    } else {
        Ok(())
    };
    checked
        .and_then(|()| read(value))
        .map_err(|e| ModelError::at(root, e))
}

/// The resource as JSON bytes, keys in FHIR's order.
pub fn resource_to_vec(resource: &Resource) -> Vec<u8> {
    // Cannot fail: every map key is a string and there are no floats (decimals are
    // `serde_json::Number`), which are serde_json's only failure cases when writing to memory.
    serde_json::to_vec(resource).unwrap_or_default()
}

/// The resource as a JSON value, keys in FHIR's order.
pub fn resource_to_value(resource: &Resource) -> Value {
    // Cannot fail, as for `resource_to_vec`.
    serde_json::to_value(resource).unwrap_or(Value::Null)
}
