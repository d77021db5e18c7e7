//! End-to-end tests of the FHIR REST API: the real server on a random port, a real HTTP client.

mod access;
mod audit;
mod bad_input;
mod beyond_schema;
mod capability;
mod concurrency;
mod conditional;
mod cors;
mod everything;
mod examples;
mod history;
mod import;
mod interactions;
mod lifecycle;
mod representation;
mod search;
mod smart_backend;
mod smart_discovery;
mod smart_launch;
mod smart_refusals;
mod smart_resource;
mod smart_tokens;
mod smart_upstream;
mod transaction;
