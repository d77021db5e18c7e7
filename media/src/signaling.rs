//! The JSON messages of the signaling WebSocket (documented in `media/SIGNALING.md`).
//!
//! Every message is one JSON object in one text frame, tagged by `"type"` (snake_case). The
//! server answers anything it cannot use with an [`ServerMessage::Error`] naming what was wrong,
//! and never closes the socket for a malformed message: a client bug should be visible, not fatal.

use serde::{Deserialize, Serialize};

use crate::ice::IceServer;
use crate::token::Role;

/// What a track carries, as the sender declares it (defaults: audio is the microphone, video the
/// camera). Screen share is its own track so a receiver can get it at its own layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    /// Voice.
    Microphone,
    /// Camera video (usually simulcast).
    Camera,
    /// Screen share video.
    Screen,
}

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// An audio track.
    Audio,
    /// A video track.
    Video,
}

/// The sender's description of one of its m-lines, sent with its offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackDescription {
    /// The m-line (`a=mid`) in the sender's offer.
    pub mid: String,
    /// What the track carries.
    pub source: TrackSource,
    /// Simulcast RIDs from the lowest quality to the highest. When absent the server orders
    /// them by the usual names (`q`/`l` < `h`/`m` < `f`), then alphabetically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
}

/// A published track as the other participants see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Stable id of the track in the room: `"{participant}/{mid of the sender}"`.
    pub track: String,
    /// The participant that sends it.
    pub participant: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Microphone, camera or screen.
    pub source: TrackSource,
    /// Whether the sender has muted it.
    pub muted: bool,
    /// The m-line that carries it to this receiver, once the server's offer naming it is out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
}

/// Another participant of the room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// The participant id from its media token.
    pub participant: String,
    /// Its role in the visit.
    pub role: Role,
}

/// One track's layer as forwarded to this receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackQuality {
    /// The track (see [`TrackInfo::track`]).
    pub track: String,
    /// The simulcast RID forwarded, `null` when the video is off for this receiver.
    pub layer: Option<String>,
}

/// Messages from the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message: enter the Encounter's room with a media token. Sent again with the
    /// same token on a new socket it resumes the participant.
    Join {
        /// The Encounter whose room to join; must be the one the token names.
        encounter: String,
        /// The media token from `POST Encounter/{id}/$join`.
        token: String,
    },
    /// An SDP offer from the client (its published tracks, or an ICE restart).
    Offer {
        /// The SDP text.
        sdp: String,
        /// What each sending m-line carries; m-lines not named take the defaults.
        #[serde(default)]
        tracks: Vec<TrackDescription>,
    },
    /// The client's answer to a server [`ServerMessage::Offer`].
    Answer {
        /// The `id` of the offer answered; an answer to a superseded offer is ignored.
        id: u64,
        /// The SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate of the client (`a=candidate` value, without the `a=`).
    /// An empty string marks the end of candidates.
    Candidate {
        /// The candidate line.
        candidate: String,
    },
    /// The sender muted or unmuted one of its tracks (by its own mid).
    Mute {
        /// The sender's m-line.
        mid: String,
        /// Muted or not.
        muted: bool,
    },
    /// The participant leaves for good (a closed socket without `leave` may resume).
    Leave,
}

/// Messages from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join was accepted.
    Joined {
        /// The participant id (from the token).
        participant: String,
        /// The role (from the token).
        role: Role,
        /// True when this socket took over a participant that was already in the room.
        resumed: bool,
        /// ICE servers (STUN/TURN) for the client's `RTCPeerConnection`.
        ice_servers: Vec<IceServer>,
        /// The others in the room.
        participants: Vec<ParticipantInfo>,
        /// The tracks already published in the room.
        tracks: Vec<TrackInfo>,
    },
    /// The answer to the client's offer.
    Answer {
        /// The SDP text.
        sdp: String,
    },
    /// An offer from the server: it adds or removes m-lines that carry other participants'
    /// tracks to this client. The client answers with [`ClientMessage::Answer`] and the same id.
    /// A client that has an offer of its own outstanding ignores this one: the server drops its
    /// offer when it gets the client's and offers again afterwards.
    Offer {
        /// Identifies the offer; the answer repeats it.
        id: u64,
        /// The SDP text.
        sdp: String,
        /// The tracks and the m-lines that carry them to this client.
        tracks: Vec<TrackInfo>,
    },
    /// Someone joined the room.
    ParticipantJoined(ParticipantInfo),
    /// Someone left the room (or was removed).
    ParticipantLeft {
        /// Who left.
        participant: String,
    },
    /// A track was published.
    TrackPublished(TrackInfo),
    /// A track was unpublished.
    TrackUnpublished {
        /// The track id.
        track: String,
    },
    /// A track was muted or unmuted by its sender.
    TrackMuted {
        /// The track id.
        track: String,
        /// Muted or not.
        muted: bool,
    },
    /// To a sender: the simulcast layers of one of its tracks that some receiver needs. Layers
    /// not named can be paused (`RTCRtpEncodingParameters.active = false`) until named again.
    Layers {
        /// The sender's m-line.
        mid: String,
        /// The RIDs needed (empty: nobody needs the video).
        active: Vec<String>,
    },
    /// To a receiver: what it gets, sent when it changes.
    Quality {
        /// The server's estimate of the bandwidth towards this receiver, bits per second.
        estimate_bps: u64,
        /// True while the estimate is too low for video: only audio is forwarded.
        audio_only: bool,
        /// The layer forwarded per video track.
        tracks: Vec<TrackQuality>,
    },
    /// The request could not be used. The socket stays open unless a `closed` follows.
    Error {
        /// A stable machine-readable code.
        code: ErrorCode,
        /// What was wrong, for people.
        message: String,
    },
    /// The server ends the session (room closed, participant removed, token expired).
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Error codes of [`ServerMessage::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not JSON, or not one of the messages above.
    BadMessage,
    /// The token is malformed or its signature is wrong.
    InvalidToken,
    /// The token has expired.
    TokenExpired,
    /// The token names another Encounter.
    WrongEncounter,
    /// The Encounter is finished: its room is closed for good.
    EncounterFinished,
    /// A message other than `join` came before a successful `join`.
    NotJoined,
    /// `join` came twice on one socket.
    AlreadyJoined,
    /// The SDP could not be used.
    BadSdp,
    /// A candidate could not be parsed.
    BadCandidate,
    /// The mid named is not one of the sender's tracks.
    UnknownTrack,
}

/// Reasons of [`ServerMessage::Closed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The participant left.
    Left,
    /// The Encounter finished or the room was closed by the server.
    RoomClosed,
    /// No media arrived from the participant for too long.
    NoMedia,
    /// Another socket resumed this participant.
    Replaced,
    /// The WebRTC connection failed or was closed.
    ConnectionLost,
}

impl ServerMessage {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_parse_as_documented() {
        let cases = [
            (
                json!({"type": "join", "encounter": "e1", "token": "t"}),
                ClientMessage::Join {
                    encounter: "e1".into(),
                    token: "t".into(),
                },
            ),
            (
                json!({"type": "offer", "sdp": "v=0"}),
                ClientMessage::Offer {
                    sdp: "v=0".into(),
                    tracks: vec![],
                },
            ),
            (
                json!({"type": "offer", "sdp": "v=0", "tracks": [{"mid": "1", "source": "screen"}]}),
                ClientMessage::Offer {
                    sdp: "v=0".into(),
                    tracks: vec![TrackDescription {
                        mid: "1".into(),
                        source: TrackSource::Screen,
                        layers: None,
                    }],
                },
            ),
            (
                json!({"type": "answer", "id": 3, "sdp": "v=0"}),
                ClientMessage::Answer {
                    id: 3,
                    sdp: "v=0".into(),
                },
            ),
            (
                json!({"type": "candidate", "candidate": ""}),
                ClientMessage::Candidate {
                    candidate: String::new(),
                },
            ),
            (
                json!({"type": "mute", "mid": "0", "muted": true}),
                ClientMessage::Mute {
                    mid: "0".into(),
                    muted: true,
                },
            ),
            (json!({"type": "leave"}), ClientMessage::Leave),
        ];
        for (wire, msg) in cases {
            assert_eq!(
                serde_json::from_value::<ClientMessage>(wire.clone()).ok(),
                Some(msg),
                "{wire}"
            );
        }
    }

    #[test]
    fn server_messages_serialize_as_documented() {
        let cases = [
            (
                ServerMessage::ParticipantJoined(ParticipantInfo {
                    participant: "p".into(),
                    role: Role::RelatedPerson,
                }),
                json!({"type": "participant_joined", "participant": "p", "role": "related-person"}),
            ),
            (
                ServerMessage::Layers {
                    mid: "1".into(),
                    active: vec!["q".into()],
                },
                json!({"type": "layers", "mid": "1", "active": ["q"]}),
            ),
            (
                ServerMessage::Quality {
                    estimate_bps: 400_000,
                    audio_only: true,
                    tracks: vec![TrackQuality {
                        track: "a/1".into(),
                        layer: None,
                    }],
                },
                json!({"type": "quality", "estimate_bps": 400_000, "audio_only": true, "tracks": [{"track": "a/1", "layer": null}]}),
            ),
            (
                ServerMessage::error(ErrorCode::EncounterFinished, "x"),
                json!({"type": "error", "code": "encounter_finished", "message": "x"}),
            ),
            (
                ServerMessage::Closed {
                    reason: CloseReason::NoMedia,
                },
                json!({"type": "closed", "reason": "no_media"}),
            ),
            (
                ServerMessage::TrackPublished(TrackInfo {
                    track: "a/1".into(),
                    participant: "a".into(),
                    kind: TrackKind::Video,
                    source: TrackSource::Camera,
                    muted: false,
                    mid: None,
                }),
                json!({"type": "track_published", "track": "a/1", "participant": "a", "kind": "video", "source": "camera", "muted": false}),
            ),
        ];
        for (msg, wire) in cases {
            assert_eq!(serde_json::to_value(&msg).ok(), Some(wire));
        }
    }

    #[test]
    fn every_message_type_in_the_document_exists() {
        let doc = include_str!("../SIGNALING.md");
        let client = ["join", "offer", "answer", "candidate", "mute", "leave"];
        let server = [
            "joined",
            "answer",
            "offer",
            "participant_joined",
            "participant_left",
            "track_published",
            "track_unpublished",
            "track_muted",
            "layers",
            "quality",
            "error",
            "closed",
        ];
        for t in client.iter().chain(server.iter()) {
            assert!(doc.contains(&format!("| `{t}` |")), "{t} is documented");
        }
    }
}
