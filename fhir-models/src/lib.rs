//! FHIR R4 knowledge the rest of telemed shares, generated from the official definitions in
//! `spec/` by `codegen` (committed; CI runs `cargo run -p codegen -- --check`) plus small
//! hand-written helpers. This crate knows nothing of HTTP or storage.
//!
//! - [`ResourceType`]: the closed set of the 146 R4 resource types;
//!   [`ResourceType::has_typed_model`] says which of them have typed models.
//! - [`models`]: typed structs for the resources our own logic reads (the list is in
//!   `codegen/src/typed.rs`) and every datatype and backbone element they use. They read and
//!   write FHIR JSON exactly: `_birthDate`-style extensions, `4.50` decimals, keys in FHIR order.
//! - [`Resource`]: any resource, typed where a model exists and JSON otherwise, read by its
//!   `resourceType` (`Bundle.entry.resource`, `contained`, `Parameters.parameter.resource`).
//! - [`check_typed`], [`parse_resource`], [`resource_from_value`], [`resource_to_vec`],
//!   [`resource_to_value`]: the entry points. They are not generic on purpose: serde code is
//!   monomorphised where a generic function is called, so calling `serde_json::from_*::<Patient>`
//!   in another crate compiles the models' serde code again there. Errors are [`ModelError`]s
//!   with a FHIRPath-like path (`Bundle.entry[1].resource.name[0].given[1]`).
//! - [`elements`], [`summary_elements`], [`mandatory_elements`]: each type's top-level elements,
//!   those `_summary=true` keeps and those that are required, from the StructureDefinitions.
//! - [`search_parameters`], [`COMMON_SEARCH_PARAMETERS`], [`search::search_parameter`]: the
//!   official search parameters of each type (code, type, FHIRPath expression, targets).
//! - [`patient_compartment_params`]: the Patient compartment, as the reference parameters that
//!   put a resource of each type in a Patient's compartment.
//! - [`element_matches`]: whether a JSON key is an element of a given name (choice types,
//!   primitive extensions).

mod resource;
pub mod search;

#[rustfmt::skip]
mod generated {
    pub mod compartment;
    pub mod elements;
    pub mod models;
    pub mod resource;
    pub mod resource_type;
    pub mod search_parameters;
}

pub use generated::compartment::patient_compartment_params;
pub use generated::elements::{elements, mandatory_elements, summary_elements};
pub use generated::models;
pub use generated::resource::Resource;
pub use generated::resource_type::ResourceType;
pub use generated::search_parameters::{COMMON as COMMON_SEARCH_PARAMETERS, search_parameters};
pub use resource::{
    check_typed, parse_resource, resource_from_value, resource_to_value, resource_to_vec,
};

/// The name given is not an R4 resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownResourceType;

impl std::fmt::Display for UnknownResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a FHIR R4 resource type")
    }
}

impl std::error::Error for UnknownResourceType {}

/// Why JSON did not fit a typed model, and where: `path` is FHIRPath-like, starting with the
/// resource type (`Patient.name[0].given[1]`), so it can go straight into
/// `OperationOutcome.issue.expression`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    /// Where, starting with the resource type: `Patient.name[0].given[1]`.
    pub path: String,
    /// What was wrong there, in serde's words.
    pub message: String,
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ModelError {}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the JSON property `key` holds the element `name`: `birthDate` and its primitive
/// extension `_birthDate` both hold `birthDate`; `deceasedBoolean` holds `deceased[x]`.
pub fn element_matches(name: &str, key: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    if key == name {
        return true;
    }
    name.strip_suffix("[x]").is_some_and(|stem| {
        key.strip_prefix(stem)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c.is_ascii_uppercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_r4_resource_type_round_trips_through_its_name() {
        assert_eq!(ResourceType::ALL.len(), 146);
        for (index, rt) in ResourceType::ALL.iter().enumerate() {
            assert_eq!(rt.as_str().parse::<ResourceType>(), Ok(*rt));
            assert_eq!(*rt as usize, index);
        }
        assert_eq!("patient".parse::<ResourceType>(), Err(UnknownResourceType));
    }

    #[test]
    fn summary_and_mandatory_elements_come_from_the_definitions() {
        let summary = summary_elements(ResourceType::Patient);
        assert!(summary.contains(&"birthDate") && summary.contains(&"deceased[x]"));
        assert!(!summary.contains(&"photo"));
        assert!(elements(ResourceType::Patient).contains(&"photo"));
        assert_eq!(
            mandatory_elements(ResourceType::Observation),
            ["status", "code"]
        );
    }

    #[test]
    fn the_patient_compartment_comes_from_its_definition() {
        assert_eq!(
            patient_compartment_params(ResourceType::Observation),
            ["subject", "performer"]
        );
        assert_eq!(patient_compartment_params(ResourceType::Patient), ["link"]);
        assert!(patient_compartment_params(ResourceType::Device).is_empty());
        assert!(patient_compartment_params(ResourceType::Practitioner).is_empty());
    }

    #[test]
    fn choice_elements_and_primitive_extensions_match_their_element() {
        assert!(element_matches("deceased[x]", "deceasedBoolean"));
        assert!(!element_matches("deceased", "deceasedDateTime"));
        assert!(element_matches("birthDate", "_birthDate"));
        assert!(!element_matches("birth", "birthDate"));
        assert!(!element_matches("name", "names"));
    }
}
