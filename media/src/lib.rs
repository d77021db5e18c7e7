//! Selective forwarding unit for video visits: rooms keyed by Encounter, WebSocket signaling,
//! simulcast layer choice.
//!
//! Map of the crate:
//! - [`token`]: short-lived media tokens (HMAC-SHA256) binding a participant and role to an
//!   Encounter until an expiry; minted by the API, verified by the SFU on join.
//! - [`ice`]: the STUN/TURN server list handed to clients, with coturn-style ephemeral TURN
//!   credentials.

pub mod ice;
pub mod token;

pub use ice::{IceConfig, IceServer, TurnConfig, TurnSecret};
pub use token::{MediaClaims, MediaTokenKey, Role, TokenError};
