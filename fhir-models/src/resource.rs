//! Reading a [`Resource`] by its `resourceType`, and the crate's non-generic entry points.
//!
//! The deserialiser reads keys until it meets `resourceType`, then hands the rest of the same
//! map to the typed model, replaying first `resourceType` and any keys it had to buffer. The
//! model thus reads straight from the caller's deserialiser, which keeps `serde_path_to_error`
//! paths exact (`entry[3].resource.name[0].given`). Keys before `resourceType` are rare (FHIR
//! JSON puts it first); their values are buffered as JSON and errors inside them carry their
//! own path in the message, which [`ModelError`] splices back in.

use std::fmt;

use serde::Deserialize;
use serde::de::value::{StrDeserializer, StringDeserializer};
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::Value;

use crate::generated::resource::check_typed_value;
use crate::{ModelError, Resource, ResourceType};

/// Marks an error message as `MARK path MARK message`: a path inside a buffered value that
/// the outer path tracker could not see.
const MARK: char = '\u{1}';

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ResourceVisitor)
    }
}

struct ResourceVisitor;

impl<'de> Visitor<'de> for ResourceVisitor {
    type Value = Resource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource (a JSON object with a resourceType)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Resource, A::Error> {
        let mut before = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "resourceType" {
                let name: String = map.next_value()?;
                let resource_type: ResourceType = name.parse().map_err(|_| {
                    A::Error::custom(format_args!("unknown resource type {name:?}"))
                })?;
                let replay = Replay {
                    tag: Tag::Key(resource_type.as_str()),
                    before: before.into_iter(),
                    pending: None,
                    rest: map,
                };
                return Resource::from_map(resource_type, replay);
            }
            let value: Value = map.next_value()?;
            before.push((key, value));
        }
        Err(A::Error::missing_field("resourceType"))
    }
}

enum Tag {
    Key(&'static str),
    Value(&'static str),
    Done,
}

/// The map as the typed model sees it: `resourceType`, then the buffered keys, then the rest.
struct Replay<A> {
    tag: Tag,
    before: std::vec::IntoIter<(String, Value)>,
    pending: Option<(String, Value)>,
    rest: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if let Tag::Key(name) = self.tag {
            self.tag = Tag::Value(name);
            return seed
                .deserialize(StrDeserializer::<A::Error>::new("resourceType"))
                .map(Some);
        }
        if let Some((key, value)) = self.before.next() {
            let result = seed.deserialize(StringDeserializer::<A::Error>::new(key.clone()));
            self.pending = Some((key, value));
            return result.map(Some);
        }
        self.rest.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if let Tag::Value(name) = self.tag {
            self.tag = Tag::Done;
            return seed.deserialize(StrDeserializer::<A::Error>::new(name));
        }
        if let Some((key, value)) = self.pending.take() {
            let mut track = serde_path_to_error::Track::new();
            return seed
                .deserialize(serde_path_to_error::Deserializer::new(value, &mut track))
                .map_err(|e| {
                    let inner = track.path().to_string();
                    let path = if inner == "." {
                        key
                    } else {
                        join(&key, &inner)
                    };
                    A::Error::custom(format_args!("{MARK}{path}{MARK}{e}"))
                });
        }
        self.rest.next_value_seed(seed)
    }
}

fn join(outer: &str, inner: &str) -> String {
    if outer.is_empty() || outer == "." {
        inner.to_owned()
    } else if inner.starts_with('[') {
        format!("{outer}{inner}")
    } else {
        format!("{outer}.{inner}")
    }
}

impl ModelError {
    /// `root` is the resource type (or what stands for it); the path tracker's path follows,
    /// then any path a buffered value put in the message.
    fn new(root: &str, path: &serde_path_to_error::Path, error: &serde_json::Error) -> Self {
        let mut path = join(root, &path.to_string());
        let mut message = error.to_string();
        while let Some(rest) = message.strip_prefix(MARK) {
            let Some((inner, tail)) = rest.split_once(MARK) else {
                break;
            };
            path = join(&path, inner);
            message = tail.to_owned();
        }
        ModelError { path, message }
    }
}

/// Deserialises `value` into the typed model of `resource_type`, if that type has one, and
/// reports the first error with the JSON path where it happened. Types without a model: Ok(()).
pub fn check_typed(resource_type: ResourceType, value: &Value) -> Result<(), ModelError> {
    check_typed_value(resource_type, value)
        .map_err(|e| ModelError::new(resource_type.as_str(), e.path(), e.inner()))
}

/// Parses a resource of any type from JSON bytes: typed if its type has a model.
pub fn parse_resource(bytes: &[u8]) -> Result<Resource, ModelError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let parsed = Resource::deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
        .and_then(|resource| de.end().map(|()| resource));
    parsed.map_err(|e| ModelError::new(&root_name(|| peek_type(bytes)), &track.path(), &e))
}

/// Reads a resource of any type from JSON: typed if its type has a model.
pub fn resource_from_value(value: &Value) -> Result<Resource, ModelError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let name = || {
            value
                .get("resourceType")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        ModelError::new(&root_name(name), e.path(), e.inner())
    })
}

/// The resource as JSON bytes, keys in FHIR's order.
pub fn resource_to_vec(resource: &Resource) -> Vec<u8> {
    // Serialising our own types into memory cannot fail: every key is a string and there are
    // no floats (decimals are `serde_json::Number`).
    serde_json::to_vec(resource).unwrap_or_default()
}

/// The resource as a JSON value.
pub fn resource_to_value(resource: &Resource) -> Value {
    serde_json::to_value(resource).unwrap_or(Value::Null)
}

fn root_name(name: impl FnOnce() -> Option<String>) -> String {
    name()
        .filter(|n| n.parse::<ResourceType>().is_ok())
        .unwrap_or_else(|| "Resource".to_owned())
}

/// The `resourceType` of JSON that failed to parse, for the error path; only on errors.
fn peek_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "resourceType")]
        resource_type: String,
    }
    serde_json::from_slice::<Peek>(bytes)
        .ok()
        .map(|p| p.resource_type)
}
