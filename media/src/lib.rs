//! Selective forwarding unit for video visits: rooms keyed by Encounter, WebSocket signaling,
//! simulcast layer choice.
//!
//! Map of the crate:
//! - [`token`]: short-lived media tokens (HMAC-SHA256) binding a participant and role to an
//!   Encounter until an expiry; minted by the API, verified by the SFU on join.
//! - [`ice`]: the STUN/TURN server list handed to clients, with coturn-style ephemeral TURN
//!   credentials.
//! - [`signaling`]: the JSON messages of the signaling WebSocket (`media/SIGNALING.md`).
//! - [`sfu`]: the sans-IO core — rooms keyed by Encounter id, participants (one str0m `Rtc`
//!   each, in RTP mode), forwarding with per-receiver simulcast layer choice, audio-only
//!   fallback, statistics and room events. Time is an input: the tests run it in memory, faster
//!   than real time.
//! - [`server`]: the thin tokio driver, [`MediaServer`]: one UDP socket for all participants,
//!   the core's timers, the signaling WebSocket as an axum `Router`, events, stats, metrics.

pub mod ice;
pub mod server;
pub mod sfu;
pub mod signaling;
pub mod token;

pub use ice::{IceConfig, IceServer, TurnConfig, TurnSecret};
pub use server::{MediaConfig, MediaServer};
pub use token::{MediaClaims, MediaTokenKey, Role, TokenError};
