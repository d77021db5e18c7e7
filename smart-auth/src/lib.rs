//! SMART App Launch 2.x authorization server, bearer-token checks and scope/compartment rules.
//!
//! - [`scope`]: SMART scopes (v1, and v2 with query filters) read once per token into a
//!   [`scope::ScopeSet`] that says what a request may do, what a client or a refresh may keep,
//!   and how each scope reads on a consent page. Pure: no I/O.

pub mod scope;
