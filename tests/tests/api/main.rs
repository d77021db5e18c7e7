//! End-to-end tests of the FHIR REST API: the real server on a random port, a real HTTP client.

mod bad_input;
mod beyond_schema;
mod capability;
mod concurrency;
mod conditional;
mod examples;
mod history;
mod interactions;
mod lifecycle;
mod representation;
mod search;
