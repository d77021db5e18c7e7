//! The telemed FHIR R4 server.
//!
//! A request travels: [`app::router`] (tracing, body limit, panic guard, OperationOutcome for
//! every error) → [`access::authenticate`] (the SMART access token) → a handler in [`fhir`]
//! (what the token reaches; parse the request, [`validate`] the resource against the official
//! schema and its typed model) → one transaction in [`store`] (SQLite or PostgreSQL) → a
//! response with `ETag`, `Last-Modified` and `Location`. The authorization server itself is the
//! `smart-auth` crate, mounted under `/auth`.
//!
//! - [`config`]: typed configuration from defaults, a TOML file, the environment and flags.
//! - [`startup`]: [`Application`], which the `telemed` binary and the tests start.
//! - [`search`]: search parameters, index rows and the FHIRPath subset that finds them.
//! - [`error`]: [`error::FhirError`], the one error type of the API.
//! - [`import`]: `telemed import`, Bundle files loaded as `POST /fhir` would load them.
//! - [`access`]: who a request acts for (its SMART access token) and what it may reach.
//! - [`cors`]: which browser origins may call the FHIR API.
//! - [`directory`]: the FHIR data the authorization server's pickers and launches read.
//! - [`audit`]: the hash-chained audit trail of every request for patient data and every
//!   authorization event.
//! - [`admin`]: `telemed client …` and `telemed user …`, the authorization server's
//!   clients and users.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod access;
pub mod admin;
pub mod app;
pub mod audit;
pub mod config;
pub mod cors;
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
