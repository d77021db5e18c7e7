//! Selective forwarding unit for video visits: rooms keyed by Encounter, WebSocket signaling, simulcast layer choice.
