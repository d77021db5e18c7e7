//! The telemed FHIR R4 server.
//!
//! A request travels: [`app::router`] (tracing, body limit, panic guard, OperationOutcome for
//! every error) → a handler in [`fhir`] (parse the request, [`validate`] the resource against the
//! official schema and its typed model) → one transaction in [`store`] (SQLite or PostgreSQL) →
//! a response with `ETag`, `Last-Modified` and `Location`.
//!
//! - [`config`]: typed configuration from defaults, a TOML file, the environment and flags.
//! - [`startup`]: [`Application`], which the `telemed` binary and the tests start.
//! - [`search`]: search parameters, index rows and the FHIRPath subset that finds them.
//! - [`error`]: [`error::FhirError`], the one error type of the API.
//! - [`import`]: `telemed import`, Bundle files loaded as `POST /fhir` would load them.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod access;
pub mod app;
pub mod config;
pub mod directory;
pub mod error;
pub mod fhir;
pub mod import;
pub mod search;
pub mod startup;
pub mod store;
pub mod validate;

pub use config::Config;
pub use startup::Application;
