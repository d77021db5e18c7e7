//! Test support shared by the end-to-end tests and the benchmark: a webrtc-rs client peer and a
//! shaping UDP relay. Each test binary uses a different part, hence `dead_code` is expected in
//! some of them.
#![allow(dead_code)]

pub mod peer;
pub mod relay;
pub mod signal;
