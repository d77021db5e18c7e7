//! The telemed FHIR R4 server.
pub mod config;
