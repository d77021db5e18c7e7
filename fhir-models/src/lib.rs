//! Typed FHIR R4 resources, generated from the official JSON schema by `codegen`, and small
//! hand-written helpers.
