//! The sans-IO core of the SFU: rooms, participants, tracks and forwarding decisions.
//!
//! [`Sfu`] does no I/O and reads no clock. Its inputs carry the time (`now`): a UDP datagram
//! ([`Sfu::handle_udp`]), a signaling message ([`Sfu::handle_message`]), a closed socket
//! ([`Sfu::disconnect`]), a timeout ([`Sfu::handle_timeout`]), the end of an Encounter
//! ([`Sfu::close_room`]). Its outputs ([`Sfu::poll_output`]) are datagrams to send, signaling
//! messages to send, and room events; [`Sfu::poll_timeout`] says when to call it next. The
//! tokio driver ([`crate::server`]) and the in-memory tests drive it the same way.
//!
//! Each participant is one str0m [`Rtc`] in RTP mode: packets are forwarded as RTP, never
//! assembled into frames, and their payloads are never read (see [`forward`]).

pub mod forward;
pub mod layers;
pub mod stats;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, CodecSpec};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output as RtcOutput, Rtc};
use tracing::{debug, info, warn};

use crate::ice::IceConfig;
use crate::signaling::{
    ClientMessage, CloseReason, ErrorCode, ParticipantInfo, ServerMessage, TrackDescription,
    TrackInfo, TrackKind, TrackQuality, TrackSource,
};
use crate::token::{MediaClaims, MediaTokenKey, Role, TokenError};

use forward::{Decision, Forwarder, LayerFrames, PacketMeta, Request};
use layers::{Allocator, TrackNeed};
use stats::{DelayHistogram, ParticipantStats, RateMeter, RoomStats, Totals};

/// How often the core looks at rooms, layers and timers when nothing else happens.
const TICK: Duration = Duration::from_millis(250);
/// Nominal bitrates of simulcast layers not (yet) measured, low to high (a paused layer has no
/// rate to measure). The usual 180p/360p/720p ladder of browsers.
const NOMINAL_LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_500_000];
/// Frames a layer must have sent since it (re)started before its rate is trusted: the rate
/// meter's two-second window at 30 frames per second.
const STEADY_FRAMES: u32 = 60;
/// Nominal rate of a single-layer video (screen share) not yet measured.
const NOMINAL_SINGLE_BPS: u64 = 800_000;
/// Nominal rate of an audio track not yet measured (Opus speech with headers).
const NOMINAL_AUDIO_BPS: u64 = 40_000;
/// A receiver's PLI is passed to the sender at most this often per layer.
const PLI_INTERVAL: Duration = Duration::from_millis(300);
/// The BWE starts from this estimate: enough for the lowest layer, under the highest.
const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(800);
/// Packets a receiver's `Rtc` may hold (its pacer queue) that are followed for the
/// forwarding delay, and for how long; the rest are forgotten (str0m drops what waits too
/// long, and a paused stream drops what it is given).
const IN_FLIGHT_MAX: usize = 512;
const IN_FLIGHT_MAX_AGE: Duration = Duration::from_secs(3);
/// RTP header extension id of frame marking in the server's offers (the ids str0m uses by
/// default are 1-4, 10, 11 and 13).
const FRAME_MARKING_EXT_ID: u8 = 9;

/// Identifies a signaling connection (one WebSocket) to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Configuration of the core.
pub struct SfuConfig {
    /// The address advertised as the server's only ICE candidate: the public IP (for NAT'd
    /// deployments) and the UDP port. Datagrams are handed in as if sent to it.
    pub candidate_addr: SocketAddr,
    /// Verifies media tokens.
    pub token_key: MediaTokenKey,
    /// ICE servers handed to clients.
    pub ice: IceConfig,
    /// A room nobody is in closes after this long.
    pub idle_room_timeout: Duration,
    /// A participant from whom nothing arrived on the media path (RTP, RTCP, STUN consent
    /// checks) for this long is removed. A browser sends consent checks every few seconds even
    /// with every track muted, so only a participant that is gone goes silent.
    pub no_media_timeout: Duration,
}

/// Events of a room's life, for its owner (the server records them on the Encounter).
///
/// The SFU's logs and metrics never name an Encounter or a participant: they say `room` and
/// `peer`, numbers the SFU gives a room when it opens and a participant when it joins. These
/// events are where the numbers meet the ids, so an owner that records them can find a visit in
/// the logs without the logs holding who had one.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    /// The room opened (its first participant joined).
    Opened {
        /// The Encounter id.
        encounter: String,
        /// The number the SFU's logs and metrics know this room by while it is open.
        room: u64,
        /// When.
        at: SystemTime,
    },
    /// A participant joined (or resumed on a new connection).
    ParticipantJoined {
        /// The Encounter id.
        encounter: String,
        /// The participant id.
        participant: String,
        /// The number the SFU's logs and metrics know this participant by for its stay (a
        /// resumed participant keeps its number).
        peer: u64,
        /// Its role.
        role: Role,
        /// True when an existing participant came back on a new socket.
        resumed: bool,
        /// When.
        at: SystemTime,
    },
    /// A participant left or was removed.
    ParticipantLeft {
        /// The Encounter id.
        encounter: String,
        /// The participant id.
        participant: String,
        /// Why.
        reason: CloseReason,
        /// Its statistics over its stay.
        stats: Box<ParticipantStats>,
        /// When.
        at: SystemTime,
    },
    /// A receiver's bandwidth fell below what video needs: it gets audio only.
    QualityDegraded {
        /// The Encounter id.
        encounter: String,
        /// The participant id.
        participant: String,
        /// The estimate that made the decision, bits per second.
        estimate_bps: u64,
        /// When.
        at: SystemTime,
    },
    /// A receiver's video came back.
    QualityRestored {
        /// The Encounter id.
        encounter: String,
        /// The participant id.
        participant: String,
        /// The estimate, bits per second.
        estimate_bps: u64,
        /// When.
        at: SystemTime,
    },
    /// The room closed.
    Closed {
        /// The Encounter id.
        encounter: String,
        /// Why.
        reason: RoomCloseReason,
        /// When.
        at: SystemTime,
    },
}

/// Why a room closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomCloseReason {
    /// The Encounter finished ([`Sfu::close_room`]).
    Finished,
    /// Nobody was in it for the idle timeout.
    Idle,
}

/// Output of the core.
#[derive(Debug)]
pub enum Output {
    /// Send a datagram from the server's socket.
    Transmit {
        /// Destination.
        destination: SocketAddr,
        /// The datagram.
        contents: Vec<u8>,
        /// When the media packet this datagram forwards reached the host (`received` of
        /// [`Sfu::handle_udp`]); `None` for anything else (RTCP, STUN, DTLS, retransmissions).
        /// The driver reports the time to the send as the forwarding delay.
        forwards: Option<Instant>,
    },
    /// Send a message on a signaling connection.
    Signal {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: ServerMessage,
    },
    /// Close a signaling connection (after the messages queued for it).
    CloseSignal {
        /// The connection.
        conn: ConnId,
    },
    /// A room event.
    Event(RoomEvent),
}

type PeerKey = u64;

/// A packet kept for forwarding: the parts of an [`RtpPacket`] a receiver's stream needs.
#[derive(Clone, Debug)]
struct Held {
    pt: Pt,
    marker: bool,
    ext: ExtensionValues,
    payload: Arc<[u8]>,
    at: Instant,
}

/// One simulcast layer (or the only stream) of a published track.
#[derive(Debug)]
struct InLayer {
    rid: Option<Rid>,
    /// The SSRC last seen on the layer.
    ssrc: Option<Ssrc>,
    rate: RateMeter,
    /// The rate measured over a whole window of steady sending. A layer that is paused or
    /// has just resumed measures low, and taking that for its rate would buy it cheaply.
    known_bps: Option<u64>,
    frames: LayerFrames,
    last_pli: Option<Instant>,
}

/// A track a participant publishes.
#[derive(Debug)]
struct InTrack {
    mid: Mid,
    id: String,
    kind: TrackKind,
    source: TrackSource,
    muted: bool,
    /// Lowest quality first.
    layers: Vec<InLayer>,
    clock_rate: u32,
    /// Payload types of the sender and their codecs.
    codecs: Vec<(Pt, CodecSpec)>,
    /// The layers last announced to the sender as needed.
    announced: Option<Vec<String>>,
}

/// A track forwarded to a participant.
#[derive(Debug)]
struct Subscription {
    source: PeerKey,
    source_mid: Mid,
    track: String,
    kind: TrackKind,
    /// The m-line towards the receiver, once put in an offer.
    mid: Option<Mid>,
    /// The outgoing stream, once the offer naming it was answered.
    ssrc: Option<Ssrc>,
    /// Incoming payload type → outgoing one (`None`: the receiver lacks the codec).
    pts: Vec<(Pt, Option<Pt>)>,
    fwd: Forwarder<Held>,
    /// The sender unpublished the track: the m-line goes inactive at the next offer.
    removed: bool,
}

/// The server's offer waiting for the client's answer.
struct PendingOffer {
    id: u64,
    pending: SdpPendingOffer,
}

/// A participant: one WebRTC connection and the signaling socket that drives it.
struct Peer {
    encounter: String,
    participant: String,
    /// The number of its room, for logs.
    room: u64,
    role: Role,
    conn: Option<ConnId>,
    rtc: Rtc,
    /// The local ICE username fragment of `rtc`, its key in `Sfu::by_ufrag`.
    ufrag: String,
    rtc_timeout: Instant,
    /// The `a=fingerprint` of the client's first offer: another one is a new RTCPeerConnection.
    remote_fingerprint: Option<String>,
    offered: bool,
    descriptions: Vec<TrackDescription>,
    published: Vec<InTrack>,
    ssrc_index: HashMap<Ssrc, (usize, usize)>,
    subs: Vec<Subscription>,
    pending_offer: Option<PendingOffer>,
    next_offer_id: u64,
    joined_at: Instant,
    last_media: Instant,
    estimate: Option<u64>,
    alloc: Allocator,
    audio_only_since: Option<Instant>,
    audio_only_total: Duration,
    last_quality: Option<ServerMessage>,
    stats: ParticipantStats,
    rate_in: RateMeter,
    rate_out: RateMeter,
    /// Packets written to this receiver's `Rtc` and not yet seen leaving it: (SSRC, sequence
    /// number, arrival of the media), oldest first.
    in_flight: VecDeque<(u32, u16, Instant)>,
}

/// A room: the participants of one Encounter.
struct Room {
    /// The number logs and metrics know the room by (see [`RoomEvent`]).
    number: u64,
    peers: Vec<PeerKey>,
    opened_at: Instant,
    empty_since: Option<Instant>,
}

enum Conn {
    /// Connected, not joined yet.
    Open,
    Joined(PeerKey),
}

/// The SFU core. See the module documentation.
pub struct Sfu {
    config: SfuConfig,
    /// Wall-clock time at `epoch.0`: token expiry is in unix seconds, the core's clock is
    /// `Instant`, and reading the system clock would make the core impure.
    epoch: (Instant, SystemTime),
    rooms: HashMap<String, Room>,
    peers: HashMap<PeerKey, Peer>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    /// Each participant by the ICE username fragment of its `Rtc`, which a STUN check from an
    /// address not seen yet names: such a check finds its participant without a search.
    by_ufrag: HashMap<String, PeerKey>,
    conns: HashMap<ConnId, Conn>,
    finished: HashSet<String>,
    out: VecDeque<Output>,
    /// Events of participants' `Rtc`s not handled yet (handled in order, after each input, so a
    /// handler never mutates an `Rtc` that is being drained).
    events: VecDeque<(PeerKey, Event)>,
    next_key: u64,
    next_room: u64,
    next_tick: Instant,
    totals: Totals,
    forward_delay: DelayHistogram,
    /// Every participant's next `Rtc` timeout, ordered: the driver asks for the earliest after
    /// every input, and a scan of all participants there would cost O(participants) per packet.
    timers: BTreeSet<(Instant, PeerKey)>,
    /// Reused list of a packet's receivers (no allocation per forwarded packet).
    scratch: Vec<PeerKey>,
    /// When the datagram being handled reached the host, inside [`Sfu::handle_udp`].
    received: Option<Instant>,
    /// Participants whose `Rtc` panicked, to be removed once the call under way is done (see
    /// [`Sfu::break_peer`]).
    broken: Vec<PeerKey>,
}

impl Sfu {
    /// A new core; `now` and `wall_now` are the same moment on the two clocks.
    pub fn new(config: SfuConfig, now: Instant, wall_now: SystemTime) -> Self {
        Sfu {
            config,
            epoch: (now, wall_now),
            rooms: HashMap::new(),
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            conns: HashMap::new(),
            finished: HashSet::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_key: 1,
            next_room: 1,
            next_tick: now + TICK,
            totals: Totals::default(),
            forward_delay: DelayHistogram::default(),
            timers: BTreeSet::new(),
            scratch: Vec::new(),
            received: None,
            broken: Vec::new(),
        }
    }

    /// The address advertised to clients as the server's candidate.
    pub fn candidate_addr(&self) -> SocketAddr {
        self.config.candidate_addr
    }

    /// Register a new signaling connection.
    pub fn connect(&mut self) -> ConnId {
        let id = ConnId(self.next_key);
        self.next_key += 1;
        self.conns.insert(id, Conn::Open);
        id
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Sfu::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Instant {
        match self.timers.first() {
            Some((t, _)) => (*t).min(self.next_tick),
            None => self.next_tick,
        }
    }

    fn wall(&self, now: Instant) -> SystemTime {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0)
    }

    // ----------------------------------------------------------------- signaling

    /// A text frame from a signaling connection. Malformed input gets an error reply.
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(msg) => self.handle_message(now, conn, msg),
            Err(e) => self.signal(
                conn,
                ServerMessage::error(
                    ErrorCode::BadMessage,
                    format!("not a signaling message: {e}"),
                ),
            ),
        }
    }

    /// A message from a signaling connection.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: ClientMessage) {
        let state = match self.conns.get(&conn) {
            Some(Conn::Open) => None,
            Some(Conn::Joined(k)) => Some(*k),
            None => return,
        };
        match (msg, state) {
            (ClientMessage::Join { encounter, token }, None) => {
                self.join(now, conn, &encounter, &token);
            }
            (ClientMessage::Join { .. }, Some(_)) => self.signal(
                conn,
                ServerMessage::error(ErrorCode::AlreadyJoined, "this socket has joined already"),
            ),
            (_, None) => self.signal(
                conn,
                ServerMessage::error(ErrorCode::NotJoined, "send join first"),
            ),
            (ClientMessage::Offer { sdp, tracks }, Some(k)) => {
                self.client_offer(now, k, &sdp, tracks)
            }
            (ClientMessage::Answer { id, sdp }, Some(k)) => self.client_answer(now, k, id, &sdp),
            (ClientMessage::Candidate { candidate }, Some(k)) => {
                self.client_candidate(now, k, &candidate)
            }
            (ClientMessage::Mute { mid, muted }, Some(k)) => self.client_mute(k, &mid, muted),
            (ClientMessage::Leave, Some(k)) => self.remove_peer(now, k, CloseReason::Left),
        }
        self.process_events(now);
        self.remove_broken(now);
    }

    /// A signaling connection closed. The participant stays (its media may go on, and it may
    /// resume with its token) until the no-media timeout.
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(Conn::Joined(k)) = self.conns.remove(&conn)
            && let Some(peer) = self.peers.get_mut(&k)
            && peer.conn == Some(conn)
        {
            peer.conn = None;
        }
    }

    fn signal(&mut self, conn: ConnId, msg: ServerMessage) {
        self.out.push_back(Output::Signal { conn, msg });
    }

    fn signal_peer(&mut self, k: PeerKey, msg: ServerMessage) {
        if let Some(conn) = self.peers.get(&k).and_then(|p| p.conn) {
            self.out.push_back(Output::Signal { conn, msg });
        }
    }

    fn join(&mut self, now: Instant, conn: ConnId, encounter: &str, token: &str) {
        let wall = self.wall(now);
        let claims = match self.config.token_key.verify(token, wall) {
            Ok(c) => c,
            Err(e) => {
                let (code, text) = match e {
                    TokenError::Expired => (ErrorCode::TokenExpired, "the media token has expired"),
                    _ => (ErrorCode::InvalidToken, "the media token is not valid"),
                };
                self.signal(conn, ServerMessage::error(code, text));
                return;
            }
        };
        if claims.encounter != encounter {
            self.signal(
                conn,
                ServerMessage::error(
                    ErrorCode::WrongEncounter,
                    "the media token is for another Encounter",
                ),
            );
            return;
        }
        if self.finished.contains(encounter) {
            self.signal(
                conn,
                ServerMessage::error(ErrorCode::EncounterFinished, "the Encounter is finished"),
            );
            return;
        }
        let existing = self
            .rooms
            .get(encounter)
            .into_iter()
            .flat_map(|r| r.peers.iter())
            .copied()
            .find(|k| {
                self.peers
                    .get(k)
                    .is_some_and(|p| p.participant == claims.participant)
            });
        let (k, resumed) = match existing {
            Some(k) => {
                self.resume(k, conn, &claims);
                (k, true)
            }
            None => (self.add_peer(now, conn, &claims), false),
        };
        self.conns.insert(conn, Conn::Joined(k));
        let others: Vec<ParticipantInfo> = self
            .room_peers(k)
            .filter(|o| *o != k)
            .filter_map(|o| self.peers.get(&o))
            .map(|p| ParticipantInfo {
                participant: p.participant.clone(),
                role: p.role,
            })
            .collect();
        let tracks = self.tracks_for(k);
        // TURN servers log usernames, so they get the participant's number, not its id.
        let ice_servers = self.config.ice.servers(&format!("peer-{k}"), wall);
        self.signal(
            conn,
            ServerMessage::Joined {
                participant: claims.participant.clone(),
                role: claims.role,
                resumed,
                ice_servers,
                participants: others,
                tracks,
            },
        );
        self.out
            .push_back(Output::Event(RoomEvent::ParticipantJoined {
                encounter: encounter.to_owned(),
                participant: claims.participant.clone(),
                peer: k,
                role: claims.role,
                resumed,
                at: wall,
            }));
        if resumed {
            // The client may have kept its RTCPeerConnection: let it see where things stand.
            self.last_quality_reset(k);
            self.update_quality(k);
        }
    }

    fn resume(&mut self, k: PeerKey, conn: ConnId, claims: &MediaClaims) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        let old = peer.conn.replace(conn);
        peer.role = claims.role;
        info!(
            room = peer.room,
            peer = k,
            "participant resumed on a new connection"
        );
        if let Some(old) = old {
            self.conns.remove(&old);
            self.signal(
                old,
                ServerMessage::Closed {
                    reason: CloseReason::Replaced,
                },
            );
            self.out.push_back(Output::CloseSignal { conn: old });
        }
    }

    fn add_peer(&mut self, now: Instant, conn: ConnId, claims: &MediaClaims) -> PeerKey {
        let k = self.next_key;
        self.next_key += 1;
        let rtc = self.new_rtc(now);
        let wall = self.wall(now);
        let room = self
            .rooms
            .entry(claims.encounter.clone())
            .or_insert_with(|| {
                let number = self.next_room;
                self.next_room += 1;
                info!(room = number, "room opened");
                self.out.push_back(Output::Event(RoomEvent::Opened {
                    encounter: claims.encounter.clone(),
                    room: number,
                    at: wall,
                }));
                self.totals.rooms_opened += 1;
                Room {
                    number,
                    peers: Vec::new(),
                    opened_at: now,
                    empty_since: None,
                }
            });
        room.peers.push(k);
        room.empty_since = None;
        let room = room.number;
        let peer = Peer {
            encounter: claims.encounter.clone(),
            participant: claims.participant.clone(),
            room,
            role: claims.role,
            conn: Some(conn),
            rtc,
            ufrag: String::new(),
            rtc_timeout: now,
            remote_fingerprint: None,
            offered: false,
            descriptions: Vec::new(),
            published: Vec::new(),
            ssrc_index: HashMap::new(),
            subs: Vec::new(),
            pending_offer: None,
            next_offer_id: 1,
            joined_at: now,
            last_media: now,
            estimate: None,
            alloc: Allocator::default(),
            audio_only_since: None,
            audio_only_total: Duration::ZERO,
            last_quality: None,
            stats: ParticipantStats::new(claims.participant.clone(), k, claims.role),
            rate_in: RateMeter::default(),
            rate_out: RateMeter::default(),
            in_flight: VecDeque::new(),
        };
        self.peers.insert(k, peer);
        self.index_ufrag(k);
        self.timers.insert((now, k));
        self.totals.participants_joined += 1;
        info!(room, peer = k, "participant joined");
        let info = ParticipantInfo {
            participant: claims.participant.clone(),
            role: claims.role,
        };
        let others: Vec<PeerKey> = self.room_peers(k).filter(|o| *o != k).collect();
        for o in &others {
            self.signal_peer(*o, ServerMessage::ParticipantJoined(info.clone()));
        }
        // Everything already published in the room goes to the newcomer.
        for o in others {
            let tracks: Vec<(Mid, String, TrackKind, u32)> = self
                .peers
                .get(&o)
                .map(|p| {
                    p.published
                        .iter()
                        .map(|t| (t.mid, t.id.clone(), t.kind, t.clock_rate))
                        .collect()
                })
                .unwrap_or_default();
            for (mid, id, kind, clock) in tracks {
                self.subscribe(k, o, mid, id, kind, clock);
            }
        }
        k
    }

    fn new_rtc(&self, now: Instant) -> Rtc {
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .enable_bwe(Some(INITIAL_ESTIMATE))
            .set_stats_interval(Some(Duration::from_secs(1)))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_h264(true)
            .enable_av1(true)
            .set_extension(FRAME_MARKING_EXT_ID, Extension::FrameMarking);
        // Forwarded packets keep their own timing; the SFU's send buffer must cover a
        // keyframe burst towards a slow receiver.
        config = config.set_send_buffer_video(2000);
        let mut rtc = config.build(now);
        if let Ok(c) = Candidate::host(self.config.candidate_addr, "udp") {
            rtc.add_local_candidate(c);
        }
        rtc
    }

    fn room_peers(&self, k: PeerKey) -> impl Iterator<Item = PeerKey> + '_ {
        self.peers
            .get(&k)
            .and_then(|p| self.rooms.get(&p.encounter))
            .into_iter()
            .flat_map(|r| r.peers.iter().copied())
    }

    /// The tracks of the room as `k` sees them.
    fn tracks_for(&self, k: PeerKey) -> Vec<TrackInfo> {
        let Some(peer) = self.peers.get(&k) else {
            return Vec::new();
        };
        peer.subs
            .iter()
            .filter(|s| !s.removed)
            .filter_map(|s| {
                let src = self.peers.get(&s.source)?;
                let t = src.published.iter().find(|t| t.mid == s.source_mid)?;
                Some(TrackInfo {
                    track: t.id.clone(),
                    participant: src.participant.clone(),
                    kind: t.kind,
                    source: t.source,
                    muted: t.muted,
                    mid: s.mid.map(|m| m.to_string()),
                })
            })
            .collect()
    }

    fn client_offer(&mut self, now: Instant, k: PeerKey, sdp: &str, tracks: Vec<TrackDescription>) {
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(o) => o,
            Err(e) => {
                self.signal_peer(
                    k,
                    ServerMessage::error(ErrorCode::BadSdp, format!("offer: {e}")),
                );
                return;
            }
        };
        let fingerprint = sdp
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=fingerprint:"))
            .map(str::to_owned);
        let new_connection = {
            let Some(peer) = self.peers.get(&k) else {
                return;
            };
            peer.offered && fingerprint.is_some() && fingerprint != peer.remote_fingerprint
        };
        if new_connection {
            // The client resumed with a new RTCPeerConnection: start a new Rtc for it and
            // renegotiate everything, keeping the participant, its stats and its room.
            self.replace_rtc(now, k);
        }
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        peer.descriptions = tracks;
        // The client's offer wins over ours (str0m rolls ours back); the m-lines ours added
        // will be offered again.
        if peer.pending_offer.take().is_some() {
            for s in peer.subs.iter_mut().filter(|s| s.ssrc.is_none()) {
                s.mid = None;
            }
        }
        let Some(accepted) = contained(|| peer.rtc.sdp_api().accept_offer(offer)) else {
            self.remove_for_broken_description(now, k, "offer");
            return;
        };
        match accepted {
            Ok(answer) => {
                peer.offered = true;
                if peer.remote_fingerprint.is_none() {
                    peer.remote_fingerprint = fingerprint;
                }
                let sdp = answer.to_sdp_string();
                self.drain(now, k);
                // An offer that restarts ICE changes the server's username fragment too.
                self.index_ufrag(k);
                self.signal_peer(k, ServerMessage::Answer { sdp });
                // MediaAdded events of the offer are handled before our own offer is made.
                self.process_events(now);
                self.maybe_offer(now, k);
            }
            Err(e) => {
                self.drain(now, k);
                // A refused offer may have restarted ICE before str0m found what it refused.
                self.index_ufrag(k);
                self.signal_peer(
                    k,
                    ServerMessage::error(ErrorCode::BadSdp, format!("offer: {e}")),
                );
            }
        }
    }

    /// A description str0m panicked on (see [`contained`]): the participant is told, then
    /// removed (its `Rtc` stopped part-way through the description and cannot be trusted).
    fn remove_for_broken_description(&mut self, now: Instant, k: PeerKey, what: &'static str) {
        self.signal_peer(
            k,
            ServerMessage::error(ErrorCode::BadSdp, format!("{what}: not usable")),
        );
        self.break_peer(now, k, what);
    }

    /// A participant whose `Rtc` panicked in `what` (see [`contained`]). It gets a new,
    /// unconnected `Rtc` at once, so that nothing calls into the broken one again, and is
    /// removed (`closed: connection_lost`) once the call under way is done: removing it in the
    /// middle of a packet's forwarding or a timer round would pull it from under its callers.
    fn break_peer(&mut self, now: Instant, k: PeerKey, what: &'static str) {
        let room = self.peers.get(&k).map(|p| p.room);
        warn!(
            room,
            peer = k,
            "str0m panicked on the participant's {what}: participant removed"
        );
        let rtc = self.new_rtc(now);
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        peer.rtc = rtc;
        self.index_ufrag(k);
        if !self.broken.contains(&k) {
            self.broken.push(k);
        }
    }

    /// Files participant `k` in `by_ufrag` under its `Rtc`'s username fragment: after the `Rtc`
    /// is made, and after a description is applied (an offer that restarts ICE gives the server's
    /// side a new one too).
    fn index_ufrag(&mut self, k: PeerKey) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag == peer.ufrag {
            return;
        }
        let old = std::mem::replace(&mut peer.ufrag, ufrag.clone());
        unindex_ufrag(&mut self.by_ufrag, &old, k);
        self.by_ufrag.insert(ufrag, k);
    }

    /// Removes the participants [`Sfu::break_peer`] set aside.
    fn remove_broken(&mut self, now: Instant) {
        while let Some(k) = self.broken.pop() {
            self.remove_peer(now, k, CloseReason::ConnectionLost);
        }
    }

    fn replace_rtc(&mut self, now: Instant, k: PeerKey) {
        let rtc = self.new_rtc(now);
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        peer.rtc = rtc;
        retime(&mut self.timers, k, &mut peer.rtc_timeout, now);
        peer.remote_fingerprint = None;
        peer.offered = false;
        peer.pending_offer = None;
        peer.ssrc_index.clear();
        self.by_addr.retain(|_, v| *v != k);
        for s in &mut peer.subs {
            s.mid = None;
            s.ssrc = None;
            s.pts.clear();
            s.fwd = Forwarder::new(s.fwd_clock());
        }
        let mids: Vec<Mid> = peer.published.iter().map(|t| t.mid).collect();
        for mid in mids {
            self.unpublish(now, k, mid);
        }
        self.index_ufrag(k);
    }

    fn client_answer(&mut self, now: Instant, k: PeerKey, id: u64, sdp: &str) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        let Some(pending) = peer.pending_offer.take_if(|p| p.id == id) else {
            debug!(
                room = peer.room,
                peer = k,
                id,
                "answer to a superseded offer ignored"
            );
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                self.signal_peer(
                    k,
                    ServerMessage::error(ErrorCode::BadSdp, format!("answer: {e}")),
                );
                return;
            }
        };
        let Some(accepted) =
            contained(|| peer.rtc.sdp_api().accept_answer(pending.pending, answer))
        else {
            self.remove_for_broken_description(now, k, "answer");
            return;
        };
        match accepted {
            Ok(()) => {
                // The streams towards the receiver exist now.
                for s in peer.subs.iter_mut() {
                    if s.ssrc.is_none()
                        && let Some(mid) = s.mid
                    {
                        s.ssrc = peer
                            .rtc
                            .direct_api()
                            .stream_tx_by_mid(mid, None)
                            .map(|tx| tx.ssrc());
                        match s.ssrc {
                            Some(ssrc) => {
                                debug!(room = peer.room, peer = k, %mid, %ssrc, "track negotiated");
                            }
                            None => {
                                warn!(room = peer.room, peer = k, %mid, "no stream on the m-line answered for a track");
                            }
                        }
                    }
                }
                peer.subs.retain(|s| !(s.removed && s.mid.is_none()));
                self.drain(now, k);
                self.index_ufrag(k);
                self.process_events(now);
                self.allocate(now, k);
                self.maybe_offer(now, k);
            }
            Err(e) => {
                self.drain(now, k);
                self.signal_peer(
                    k,
                    ServerMessage::error(ErrorCode::BadSdp, format!("answer: {e}")),
                );
            }
        }
    }

    fn client_candidate(&mut self, now: Instant, k: PeerKey, candidate: &str) {
        let line = candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        match Candidate::from_sdp_string(line) {
            Ok(c) => {
                if let Some(peer) = self.peers.get_mut(&k) {
                    peer.rtc.add_remote_candidate(c);
                    self.drain(now, k);
                }
            }
            Err(e) => self.signal_peer(
                k,
                ServerMessage::error(ErrorCode::BadCandidate, format!("candidate: {e}")),
            ),
        }
    }

    fn client_mute(&mut self, k: PeerKey, mid: &str, muted: bool) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        let Some(t) = peer.published.iter_mut().find(|t| &*t.mid == mid) else {
            self.signal_peer(
                k,
                ServerMessage::error(ErrorCode::UnknownTrack, format!("no track with mid {mid}")),
            );
            return;
        };
        if t.muted == muted {
            return;
        }
        t.muted = muted;
        let track = t.id.clone();
        let others: Vec<PeerKey> = self.room_peers(k).filter(|o| *o != k).collect();
        for o in others {
            self.signal_peer(
                o,
                ServerMessage::TrackMuted {
                    track: track.clone(),
                    muted,
                },
            );
        }
    }

    /// Make an offer to `k` for subscriptions not negotiated yet, unless one is out.
    fn maybe_offer(&mut self, now: Instant, k: PeerKey) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        if peer.pending_offer.is_some() || !peer.offered {
            return;
        }
        let needs = peer.subs.iter().any(|s| s.mid.is_none() && !s.removed)
            || peer.subs.iter().any(|s| s.removed && s.mid.is_some());
        if !needs {
            return;
        }
        let mut change = peer.rtc.sdp_api();
        for s in &mut peer.subs {
            if s.removed {
                if let Some(mid) = s.mid.take() {
                    change.set_direction(mid, Direction::Inactive);
                }
            } else if s.mid.is_none() {
                let kind = match s.kind {
                    TrackKind::Audio => MediaKind::Audio,
                    TrackKind::Video => MediaKind::Video,
                };
                let stream = s.track.split('/').next().unwrap_or_default().to_owned();
                s.mid = Some(change.add_media(
                    kind,
                    Direction::SendOnly,
                    Some(stream),
                    Some(s.track.clone()),
                    None,
                ));
            }
        }
        let Some((offer, pending)) = change.apply() else {
            peer.subs.retain(|s| !(s.removed && s.mid.is_none()));
            self.drain(now, k);
            return;
        };
        peer.subs.retain(|s| !(s.removed && s.mid.is_none()));
        let id = peer.next_offer_id;
        peer.next_offer_id += 1;
        peer.pending_offer = Some(PendingOffer { id, pending });
        let sdp = offer.to_sdp_string();
        debug!(room = peer.room, peer = k, id, "offer made");
        self.drain(now, k);
        let tracks = self.tracks_for(k);
        self.signal_peer(k, ServerMessage::Offer { id, sdp, tracks });
    }

    // ------------------------------------------------------------------ tracks

    /// A client m-line we receive on: a published track.
    fn publish(&mut self, now: Instant, k: PeerKey, mid: Mid, kind: MediaKind, rids: Vec<Rid>) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        if peer.published.iter().any(|t| t.mid == mid) {
            return;
        }
        let desc = peer.descriptions.iter().find(|d| d.mid == *mid);
        let kind = match kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        };
        let source = desc.map(|d| d.source).unwrap_or(match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        });
        let mut rids = rids;
        match desc.and_then(|d| d.layers.as_ref()) {
            Some(order) => {
                rids.sort_by_key(|r| order.iter().position(|o| o == &**r).unwrap_or(usize::MAX))
            }
            None => rids.sort_by(|a, b| rid_rank(a).cmp(&rid_rank(b)).then_with(|| a.cmp(b))),
        }
        let layers: Vec<InLayer> = if rids.is_empty() {
            vec![InLayer::new(None)]
        } else {
            rids.into_iter().map(|r| InLayer::new(Some(r))).collect()
        };
        let codecs: Vec<(Pt, CodecSpec)> = peer
            .rtc
            .codec_config()
            .params()
            .iter()
            .map(|p| (p.pt(), p.spec()))
            .collect();
        let clock_rate = match kind {
            TrackKind::Audio => 48_000,
            TrackKind::Video => 90_000,
        };
        let id = format!("{}/{}", peer.participant, mid);
        let info = TrackInfo {
            track: id.clone(),
            participant: peer.participant.clone(),
            kind,
            source,
            muted: false,
            mid: None,
        };
        peer.published.push(InTrack {
            mid,
            id: id.clone(),
            kind,
            source,
            muted: false,
            layers,
            clock_rate,
            codecs,
            announced: None,
        });
        debug!(room = peer.room, peer = k, %mid, "track published");
        let others: Vec<PeerKey> = self.room_peers(k).filter(|o| *o != k).collect();
        for o in others {
            self.signal_peer(o, ServerMessage::TrackPublished(info.clone()));
            self.subscribe(o, k, mid, id.clone(), kind, clock_rate);
            self.maybe_offer(now, o);
        }
    }

    fn subscribe(
        &mut self,
        receiver: PeerKey,
        source: PeerKey,
        source_mid: Mid,
        track: String,
        kind: TrackKind,
        clock: u32,
    ) {
        let Some(peer) = self.peers.get_mut(&receiver) else {
            return;
        };
        if peer
            .subs
            .iter()
            .any(|s| s.source == source && s.source_mid == source_mid && !s.removed)
        {
            return;
        }
        peer.subs.push(Subscription {
            source,
            source_mid,
            track,
            kind,
            mid: None,
            ssrc: None,
            pts: Vec::new(),
            fwd: Forwarder::new(clock),
            removed: false,
        });
    }

    fn unpublish(&mut self, now: Instant, k: PeerKey, mid: Mid) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        let Some(pos) = peer.published.iter().position(|t| t.mid == mid) else {
            return;
        };
        let t = peer.published.remove(pos);
        peer.ssrc_index.clear();
        let others: Vec<PeerKey> = self.room_peers(k).filter(|o| *o != k).collect();
        for o in others {
            if let Some(p) = self.peers.get_mut(&o) {
                for s in p
                    .subs
                    .iter_mut()
                    .filter(|s| s.source == k && s.source_mid == mid)
                {
                    s.removed = true;
                    s.fwd.set_target(None, None, now);
                }
            }
            self.signal_peer(
                o,
                ServerMessage::TrackUnpublished {
                    track: t.id.clone(),
                },
            );
            self.maybe_offer(now, o);
        }
    }

    // ------------------------------------------------------------------- media

    /// A datagram that arrived on the server's UDP socket from `source`. `received` is when it
    /// reached the host (the kernel's receive timestamp, where the driver has one; else `now`):
    /// the forwarding delay of the media it carries counts from there.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        received: Instant,
        source: SocketAddr,
        contents: &[u8],
    ) {
        let raw = contents;
        let len = contents.len();
        let first_byte = contents.first().copied().unwrap_or(u8::MAX);
        let Ok(contents) = contents.try_into() else {
            // Not STUN, DTLS, RTP or RTCP.
            self.totals.datagrams_unrouted += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.config.candidate_addr,
                contents,
            },
        );
        let k = match self.by_addr.get(&source) {
            Some(k) if self.peers.get(k).is_some_and(|p| accepts(&p.rtc, &input)) => *k,
            // Only a STUN binding request (first byte 0-3, RFC 7983) can bring a new address
            // into use; anything else from an unknown address is dropped without a search.
            _ if !matches!(first_byte, 0..=3) => {
                self.totals.datagrams_unrouted += 1;
                return;
            }
            _ => {
                // A new address: a STUN check names the participant by its ICE ufrag, and its
                // `Rtc` checks the rest (the message integrity, under its password).
                let Some(k) = stun_server_ufrag(raw)
                    .and_then(|ufrag| self.by_ufrag.get(ufrag))
                    .copied()
                    .filter(|k| self.peers.get(k).is_some_and(|p| accepts(&p.rtc, &input)))
                else {
                    self.totals.datagrams_unrouted += 1;
                    return;
                };
                self.by_addr.insert(source, k);
                k
            }
        };
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        peer.last_media = now;
        peer.rate_in.add(now, len);
        peer.stats.bytes_in += len as u64;
        match contained(|| peer.rtc.handle_input(input)) {
            Some(Ok(())) => {}
            Some(Err(e)) => debug!(room = peer.room, peer = k, "input refused: {e}"),
            None => {
                self.break_peer(now, k, "datagram");
                self.remove_broken(now);
                return;
            }
        }
        self.drain(now, k);
        self.received = Some(received.min(now));
        self.process_events(now);
        self.received = None;
        self.remove_broken(now);
    }

    /// Drive timers: participants' `Rtc`s, layer choice, idle rooms, silent participants.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerKey> = self
            .timers
            .range(..=(now, PeerKey::MAX))
            .map(|(_, k)| *k)
            .collect();
        for k in due {
            if let Some(peer) = self.peers.get_mut(&k) {
                match contained(|| peer.rtc.handle_input(Input::Timeout(now))) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => debug!(room = peer.room, peer = k, "timeout: {e}"),
                    None => {
                        self.break_peer(now, k, "timer");
                        continue;
                    }
                }
                self.drain(now, k);
            }
        }
        self.process_events(now);
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now);
            self.process_events(now);
        }
        self.remove_broken(now);
    }

    /// Drain an `Rtc` to its timeout: datagrams go out, events are queued.
    fn drain(&mut self, now: Instant, k: PeerKey) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        loop {
            let Some(output) = contained(|| peer.rtc.poll_output()) else {
                self.break_peer(now, k, "output");
                return;
            };
            match output {
                Ok(RtcOutput::Timeout(t)) => {
                    retime(&mut self.timers, k, &mut peer.rtc_timeout, t);
                    break;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    peer.rate_out.add(now, t.contents.len());
                    peer.stats.bytes_out += t.contents.len() as u64;
                    let forwards = rtp_id(&t.contents).and_then(|(ssrc, seq)| {
                        let i = peer
                            .in_flight
                            .iter()
                            .position(|(s, q, _)| *s == ssrc && *q == seq)?;
                        peer.in_flight.remove(i).map(|(_, _, at)| at)
                    });
                    self.out.push_back(Output::Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                        forwards,
                    });
                }
                Ok(RtcOutput::Event(e)) => self.events.push_back((k, e)),
                Err(e) => {
                    warn!(room = peer.room, peer = k, "webrtc connection failed: {e}");
                    peer.rtc.disconnect();
                    retime(
                        &mut self.timers,
                        k,
                        &mut peer.rtc_timeout,
                        now + Duration::from_secs(3600),
                    );
                    break;
                }
            }
        }
    }

    fn process_events(&mut self, now: Instant) {
        while let Some((k, e)) = self.events.pop_front() {
            // What a participant's `Rtc` said before it panicked is not acted on.
            if self.peers.contains_key(&k) && !self.broken.contains(&k) {
                self.on_event(now, k, e);
            }
        }
    }

    fn on_event(&mut self, now: Instant, k: PeerKey, e: Event) {
        match e {
            Event::RtpPacket(p) => self.on_rtp(now, k, p),
            Event::MediaAdded(m) => {
                if matches!(m.direction, Direction::RecvOnly | Direction::SendRecv) {
                    let rids = m
                        .simulcast
                        .map(|s| s.recv.iter().map(|l| l.rid).collect())
                        .unwrap_or_default();
                    self.publish(now, k, m.mid, m.kind, rids);
                }
            }
            Event::MediaChanged(m) => {
                if matches!(m.direction, Direction::Inactive | Direction::SendOnly) {
                    self.unpublish(now, k, m.mid);
                }
            }
            Event::KeyframeRequest(r) => self.on_keyframe_request(now, k, r.mid),
            Event::EgressBitrateEstimate(b) => {
                let estimate = match b {
                    BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. } => estimate,
                    _ => return,
                };
                if let Some(peer) = self.peers.get_mut(&k) {
                    debug!(
                        room = peer.room,
                        peer = k,
                        estimate = estimate.as_u64(),
                        "bandwidth estimate"
                    );
                    peer.estimate = Some(estimate.as_u64());
                }
                self.allocate(now, k);
            }
            Event::PeerStats(s) => {
                if let Some(peer) = self.peers.get_mut(&k) {
                    peer.stats.rtt_ms = s.rtt.map(|d| d.as_secs_f64() * 1000.0);
                    peer.stats.loss_in = s.ingress_loss_fraction.map(f64::from);
                    peer.stats.loss_out = s.egress_loss_fraction.map(f64::from);
                }
            }
            Event::MediaIngressStats(s) => {
                if let Some(peer) = self.peers.get_mut(&k) {
                    let clock = peer
                        .published
                        .iter()
                        .find(|t| t.mid == s.mid)
                        .map(|t| t.clock_rate)
                        .unwrap_or(90_000);
                    let jitter = f64::from(s.jitter) * 1000.0 / f64::from(clock);
                    peer.stats.jitter_ms = Some(
                        peer.stats
                            .jitter_ms
                            .map_or(jitter, |j| j.max(jitter) * 0.5 + jitter * 0.5),
                    );
                    if let Some(rtt) = s.rtt {
                        peer.stats.rtt_ms.get_or_insert(rtt.as_secs_f64() * 1000.0);
                    }
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                if let Some(peer) = self.peers.get(&k) {
                    debug!(room = peer.room, peer = k, "ice disconnected");
                }
            }
            Event::Closed => self.remove_peer(now, k, CloseReason::ConnectionLost),
            _ => {}
        }
    }

    fn on_rtp(&mut self, now: Instant, k: PeerKey, p: RtpPacket) {
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        let ssrc = p.header.ssrc;
        let loc = match peer.ssrc_index.get(&ssrc) {
            Some(l) => Some(*l),
            None => {
                let found = peer
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()));
                let loc = found.and_then(|(mid, rid)| {
                    let ti = peer.published.iter().position(|t| t.mid == mid)?;
                    let li = peer.published[ti]
                        .layers
                        .iter()
                        .position(|l| l.rid == rid)
                        .or(
                            // A sender that did not declare its RIDs: one layer.
                            (peer.published[ti].layers.len() == 1).then_some(0),
                        )?;
                    Some((ti, li))
                });
                if let Some(l) = loc {
                    peer.ssrc_index.insert(ssrc, l);
                }
                loc
            }
        };
        let Some((ti, li)) = loc else { return };
        let track = &mut peer.published[ti];
        let meta = PacketMeta {
            seq: *p.seq_no,
            ts: p.header.timestamp,
            marker: p.header.marker,
            len: p.payload.len(),
            frame_mark: p.header.ext_vals.frame_mark,
            at: now,
        };
        let layer = &mut track.layers[li];
        layer.rate.add(now, p.payload.len() + 12);
        // A new SSRC on a layer (the sender restarted its encoder) restarts it like a silence.
        let new_ssrc = layer.ssrc.replace(ssrc).is_some_and(|old| old != ssrc);
        let restarted = layer.frames.observe(&meta) || new_ssrc;
        let source_mid = track.mid;
        let kind = track.kind;
        let in_spec = track
            .codecs
            .iter()
            .find(|(pt, _)| *pt == p.header.payload_type)
            .map(|(_, s)| *s);
        let ev = &p.header.ext_vals;
        let held = Held {
            pt: p.header.payload_type,
            marker: p.header.marker,
            ext: ExtensionValues {
                audio_level: ev.audio_level,
                voice_activity: ev.voice_activity,
                video_orientation: ev.video_orientation,
                video_content_type: ev.video_content_type,
                frame_mark: ev.frame_mark,
                ..ExtensionValues::default()
            },
            payload: p.payload,
            at: self.received.unwrap_or(now),
        };
        let mut receivers = std::mem::take(&mut self.scratch);
        receivers.clear();
        if let Some(room) = self.rooms.get(&peer.encounter) {
            receivers.extend(room.peers.iter().copied().filter(|o| *o != k));
        }
        for &r in &receivers {
            let Some(rp) = self.peers.get_mut(&r) else {
                continue;
            };
            let Some(si) = rp
                .subs
                .iter()
                .position(|s| s.source == k && s.source_mid == source_mid && !s.removed)
            else {
                continue;
            };
            let sub = &mut rp.subs[si];
            let Some(tx_ssrc) = sub.ssrc else { continue };
            if kind == TrackKind::Audio && sub.fwd.current().is_none() {
                sub.fwd.set_immediate(0);
            }
            match sub.fwd.on_packet(li, &meta, &held, restarted) {
                Decision::Forward(rw) => self.write(now, r, si, tx_ssrc, in_spec, rw, &held),
                Decision::Flush(list) => {
                    for (rw, h) in list {
                        self.write(now, r, si, tx_ssrc, in_spec, rw, &h);
                    }
                }
                Decision::Hold | Decision::Drop => {}
            }
        }
        self.scratch = receivers;
    }

    /// Write one packet to receiver `r`'s stream of subscription `si`, then drain its `Rtc`
    /// (str0m's rule: every mutation is followed by a full drain).
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one forwarding step"
    )]
    fn write(
        &mut self,
        now: Instant,
        r: PeerKey,
        si: usize,
        tx_ssrc: Ssrc,
        in_spec: Option<CodecSpec>,
        rw: forward::Rewritten,
        h: &Held,
    ) {
        let Some(rp) = self.peers.get_mut(&r) else {
            return;
        };
        let Peer { subs, rtc, .. } = rp;
        let Some(sub) = subs.get_mut(si) else { return };
        let out_pt = match sub.pts.iter().find(|(i, _)| *i == h.pt) {
            Some((_, o)) => *o,
            None => {
                // Payload types are negotiated per connection: map by codec, once per type.
                let o = in_spec.and_then(|spec| map_pt(rtc, sub.mid, &spec));
                if o.is_none() {
                    debug!(peer = sub.source, mid = %sub.source_mid, pt = %h.pt, "the receiver has no payload type for the sender's codec");
                }
                sub.pts.push((h.pt, o));
                o
            }
        };
        let Some(out_pt) = out_pt else { return };
        let video = sub.kind == TrackKind::Video;
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx(&tx_ssrc) else {
            return;
        };
        let write = RtpWrite::new(out_pt, SeqNo::from(rw.seq), rw.ts, h.at, h.payload.clone())
            .marker(h.marker)
            .ext_vals(h.ext.clone())
            // Video can be repaired from str0m's send cache when the receiver NACKs; late audio
            // is useless.
            .nackable(video);
        if contained(|| tx.write_rtp(write)).is_none() {
            self.break_peer(now, r, "forwarded packet");
            return;
        }
        while rp.in_flight.len() >= IN_FLIGHT_MAX
            || rp
                .in_flight
                .front()
                .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > IN_FLIGHT_MAX_AGE)
        {
            rp.in_flight.pop_front();
        }
        rp.in_flight.push_back((*tx_ssrc, rw.seq as u16, h.at));
        self.totals.packets_forwarded += 1;
        self.totals.bytes_forwarded += h.payload.len() as u64;
        self.drain(now, r);
    }

    /// A receiver lost a picture: ask the sender of that track for a keyframe on the layer
    /// being forwarded.
    fn on_keyframe_request(&mut self, now: Instant, k: PeerKey, mid: Mid) {
        let Some(peer) = self.peers.get(&k) else {
            return;
        };
        let Some(sub) = peer.subs.iter().find(|s| s.mid == Some(mid)) else {
            return;
        };
        let Some(layer) = sub.fwd.target() else {
            return;
        };
        let (source, source_mid) = (sub.source, sub.source_mid);
        self.request_keyframe(now, source, source_mid, layer);
    }

    fn request_keyframe(&mut self, now: Instant, source: PeerKey, mid: Mid, layer: usize) {
        let Some(peer) = self.peers.get_mut(&source) else {
            return;
        };
        let Some(t) = peer.published.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        let Some(l) = t.layers.get_mut(layer) else {
            return;
        };
        if l.last_pli
            .is_some_and(|at| now.saturating_duration_since(at) < PLI_INTERVAL)
        {
            return;
        }
        l.last_pli = Some(now);
        let rid = l.rid;
        if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.totals.keyframe_requests += 1;
        }
        self.drain(now, source);
    }

    // ------------------------------------------------------------------ layers

    /// Choose the layers for receiver `k` from its estimate, and carry out the switches.
    fn allocate(&mut self, now: Instant, k: PeerKey) {
        let Some(peer) = self.peers.get(&k) else {
            return;
        };
        let Some(estimate) = peer.estimate else {
            return;
        };
        let mut audio_bps = 0;
        let mut video: Vec<(usize, TrackNeed)> = Vec::new();
        for (i, s) in peer.subs.iter().enumerate() {
            if s.removed || s.ssrc.is_none() {
                continue;
            }
            let Some(src) = self.peers.get(&s.source) else {
                continue;
            };
            let Some(t) = src.published.iter().find(|t| t.mid == s.source_mid) else {
                continue;
            };
            match t.kind {
                TrackKind::Audio => {
                    audio_bps += t
                        .layers
                        .first()
                        .and_then(|l| l.known_bps)
                        .unwrap_or(NOMINAL_AUDIO_BPS);
                }
                TrackKind::Video => {
                    if t.muted {
                        continue;
                    }
                    let n = t.layers.len();
                    let mut floor = 0;
                    let layer_bps = t
                        .layers
                        .iter()
                        .enumerate()
                        .map(|(li, l)| {
                            let bps = l.known_bps.unwrap_or(if n == 1 {
                                NOMINAL_SINGLE_BPS
                            } else {
                                NOMINAL_LAYER_BPS[li.min(2)]
                            });
                            // Higher layers never cost less than lower ones.
                            floor = floor.max(bps);
                            floor
                        })
                        .collect();
                    video.push((
                        i,
                        TrackNeed {
                            priority: t.source == TrackSource::Screen,
                            layer_bps,
                            current: s.fwd.target(),
                        },
                    ));
                }
            }
        }
        // What the next step up would take: one layer more on every video track.
        let desired = audio_bps
            + video
                .iter()
                .map(|(_, t)| {
                    let next = t
                        .current
                        .map_or(0, |c| c + 1)
                        .min(t.layer_bps.len().saturating_sub(1));
                    t.layer_bps.get(next).copied().unwrap_or(0)
                })
                .sum::<u64>();
        let needs: Vec<TrackNeed> = video.iter().map(|(_, t)| t.clone()).collect();
        let Some(peer) = self.peers.get_mut(&k) else {
            return;
        };
        let was_audio_only = peer.alloc.audio_only();
        let targets = peer.alloc.allocate(now, estimate, audio_bps, &needs);
        let audio_only = peer.alloc.audio_only();
        // Probe towards the next step up with the allocator's reserve and headroom on top (an
        // estimate that only reached the bare need would never allow the step), and no
        // further: str0m pads up to this rate, which costs the receiver's bandwidth. It is both
        // the rate to sustain (the next step) and the one to discover. While on audio only,
        // this is what lets the estimate grow back.
        let probe = Bitrate::bps(
            (desired.max(layers::VIDEO_RESUME_AT) as f64 * layers::PROBE_FACTOR) as u64,
        );
        peer.rtc.bwe().set_bitrate(probe, probe);
        let requests: Vec<(usize, PeerKey, Mid, Option<usize>)> = video
            .iter()
            .zip(targets)
            .map(|((i, _), target)| (*i, peer.subs[*i].source, peer.subs[*i].source_mid, target))
            .collect();
        self.drain(now, k);
        for (i, source, source_mid, target) in requests {
            let frames_ptr = target.and_then(|t| {
                self.peers
                    .get(&source)
                    .and_then(|p| p.published.iter().find(|x| x.mid == source_mid))
                    .and_then(|x| x.layers.get(t))
                    .map(|l| l.frames.clone())
            });
            let Some(peer) = self.peers.get_mut(&k) else {
                return;
            };
            let Some(sub) = peer.subs.get_mut(i) else {
                continue;
            };
            if let Request::Keyframe(layer) = sub.fwd.set_target(target, frames_ptr.as_ref(), now) {
                self.request_keyframe(now, source, source_mid, layer);
            }
        }
        if audio_only != was_audio_only {
            let wall = self.wall(now);
            if let Some(peer) = self.peers.get_mut(&k) {
                let (encounter, participant) = (peer.encounter.clone(), peer.participant.clone());
                let room = peer.room;
                if audio_only {
                    peer.audio_only_since = Some(now);
                    peer.stats.audio_only_episodes += 1;
                    info!(room, peer = k, estimate, "receiver on audio only");
                    self.out
                        .push_back(Output::Event(RoomEvent::QualityDegraded {
                            encounter,
                            participant,
                            estimate_bps: estimate,
                            at: wall,
                        }));
                } else {
                    if let Some(since) = peer.audio_only_since.take() {
                        peer.audio_only_total += now.saturating_duration_since(since);
                    }
                    info!(room, peer = k, estimate, "receiver video resumed");
                    self.out
                        .push_back(Output::Event(RoomEvent::QualityRestored {
                            encounter,
                            participant,
                            estimate_bps: estimate,
                            at: wall,
                        }));
                }
            }
        }
        self.update_quality(k);
    }

    fn last_quality_reset(&mut self, k: PeerKey) {
        if let Some(p) = self.peers.get_mut(&k) {
            p.last_quality = None;
        }
    }

    /// Tell a receiver what it gets, when that changed.
    fn update_quality(&mut self, k: PeerKey) {
        let Some(peer) = self.peers.get(&k) else {
            return;
        };
        let tracks: Vec<TrackQuality> = peer
            .subs
            .iter()
            .filter(|s| !s.removed && s.kind == TrackKind::Video && s.ssrc.is_some())
            .map(|s| TrackQuality {
                track: s.track.clone(),
                layer: s.fwd.target().and_then(|l| {
                    self.peers
                        .get(&s.source)
                        .and_then(|p| p.published.iter().find(|t| t.mid == s.source_mid))
                        .and_then(|t| t.layers.get(l))
                        .map(|l| {
                            l.rid
                                .map(|r| r.to_string())
                                .unwrap_or_else(|| "0".to_owned())
                        })
                }),
            })
            .collect();
        let audio_only = peer.alloc.audio_only();
        let estimate_bps = peer.estimate.unwrap_or(0);
        let changed = match &peer.last_quality {
            Some(ServerMessage::Quality {
                audio_only: a,
                tracks: t,
                ..
            }) => *a != audio_only || *t != tracks,
            _ => true,
        };
        if !changed {
            return;
        }
        let msg = ServerMessage::Quality {
            estimate_bps,
            audio_only,
            tracks,
        };
        if let Some(peer) = self.peers.get_mut(&k) {
            peer.last_quality = Some(msg.clone());
        }
        self.signal_peer(k, msg);
    }

    /// Tell each sender which layers of its tracks anyone needs.
    fn announce_layers(&mut self) {
        let mut needed: HashMap<(PeerKey, Mid), Vec<usize>> = HashMap::new();
        for p in self.peers.values() {
            for s in p
                .subs
                .iter()
                .filter(|s| !s.removed && s.kind == TrackKind::Video)
            {
                let e = needed.entry((s.source, s.source_mid)).or_default();
                for l in [s.fwd.current(), s.fwd.target()].into_iter().flatten() {
                    if !e.contains(&l) {
                        e.push(l);
                    }
                }
            }
        }
        let mut messages = Vec::new();
        for (k, p) in self.peers.iter_mut() {
            for t in p
                .published
                .iter_mut()
                .filter(|t| t.kind == TrackKind::Video && t.layers.len() > 1)
            {
                let want = needed.get(&(*k, t.mid));
                let active: Vec<String> = t
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| want.is_some_and(|w| w.contains(i)))
                    .filter_map(|(_, l)| l.rid.map(|r| r.to_string()))
                    .collect();
                if t.announced.as_ref() != Some(&active) {
                    t.announced = Some(active.clone());
                    messages.push((
                        *k,
                        ServerMessage::Layers {
                            mid: t.mid.to_string(),
                            active,
                        },
                    ));
                }
            }
        }
        for (k, m) in messages {
            self.signal_peer(k, m);
        }
    }

    // -------------------------------------------------------------- housekeeping

    fn tick(&mut self, now: Instant) {
        // Layer rates, from layers that have sent steadily for the whole measuring window.
        for p in self.peers.values_mut() {
            for t in &mut p.published {
                for l in &mut t.layers {
                    if l.frames.steady(STEADY_FRAMES, now) || t.kind == TrackKind::Audio {
                        let bps = l.rate.bps(now);
                        if bps > 0 {
                            l.known_bps = Some(bps);
                        }
                    }
                }
            }
        }
        // Repeat unanswered keyframe requests of pending switches.
        let mut requests = Vec::new();
        for p in self.peers.values_mut() {
            for s in &mut p.subs {
                if let Request::Keyframe(l) = s.fwd.poll_request(now) {
                    requests.push((s.source, s.source_mid, l));
                }
            }
        }
        for (source, mid, layer) in requests {
            self.request_keyframe(now, source, mid, layer);
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in &keys {
            self.allocate(now, *k);
        }
        self.announce_layers();
        // Participants gone silent.
        let silent: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                now.saturating_duration_since(p.last_media) >= self.config.no_media_timeout
            })
            .map(|(k, _)| *k)
            .collect();
        for k in silent {
            self.remove_peer(now, k, CloseReason::NoMedia);
        }
        // Rooms empty for long enough.
        let idle: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| {
                r.empty_since.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.config.idle_room_timeout
                })
            })
            .map(|(e, _)| e.clone())
            .collect();
        for e in idle {
            self.close(now, &e, RoomCloseReason::Idle);
        }
    }

    fn remove_peer(&mut self, now: Instant, k: PeerKey, reason: CloseReason) {
        let Some(mut peer) = self.peers.remove(&k) else {
            return;
        };
        self.timers.remove(&(peer.rtc_timeout, k));
        unindex_ufrag(&mut self.by_ufrag, &peer.ufrag, k);
        peer.rtc.disconnect();
        self.by_addr.retain(|_, v| *v != k);
        if let Some(conn) = peer.conn.take() {
            self.conns.remove(&conn);
            self.out.push_back(Output::Signal {
                conn,
                msg: ServerMessage::Closed { reason },
            });
            self.out.push_back(Output::CloseSignal { conn });
        }
        let stats = Self::final_stats(&mut peer, now);
        info!(room = peer.room, peer = k, ?reason, "participant left");
        self.totals.participants_left += 1;
        let others: Vec<PeerKey> = match self.rooms.get_mut(&peer.encounter) {
            Some(room) => {
                room.peers.retain(|p| *p != k);
                if room.peers.is_empty() {
                    room.empty_since = Some(now);
                }
                room.peers.clone()
            }
            None => Vec::new(),
        };
        for o in &others {
            if let Some(p) = self.peers.get_mut(o) {
                for s in p.subs.iter_mut().filter(|s| s.source == k) {
                    s.removed = true;
                }
            }
            for t in &peer.published {
                self.signal_peer(
                    *o,
                    ServerMessage::TrackUnpublished {
                        track: t.id.clone(),
                    },
                );
            }
            self.signal_peer(
                *o,
                ServerMessage::ParticipantLeft {
                    participant: peer.participant.clone(),
                },
            );
            self.maybe_offer(now, *o);
        }
        self.out
            .push_back(Output::Event(RoomEvent::ParticipantLeft {
                encounter: peer.encounter.clone(),
                participant: peer.participant.clone(),
                reason,
                stats: Box::new(stats),
                at: self.wall(now),
            }));
    }

    /// The Encounter is finished: everyone is sent away, the room closes, and its tokens are
    /// refused from now on.
    pub fn close_room(&mut self, now: Instant, encounter: &str) {
        self.finished.insert(encounter.to_owned());
        if self.rooms.contains_key(encounter) {
            self.close(now, encounter, RoomCloseReason::Finished);
        }
        self.process_events(now);
    }

    fn close(&mut self, now: Instant, encounter: &str, reason: RoomCloseReason) {
        let keys: Vec<PeerKey> = self
            .rooms
            .get(encounter)
            .map(|r| r.peers.clone())
            .unwrap_or_default();
        for k in keys {
            self.remove_peer(now, k, CloseReason::RoomClosed);
        }
        if let Some(room) = self.rooms.remove(encounter) {
            info!(room = room.number, ?reason, "room closed");
            self.totals.rooms_closed += 1;
            self.out.push_back(Output::Event(RoomEvent::Closed {
                encounter: encounter.to_owned(),
                reason,
                at: self.wall(now),
            }));
        }
    }

    // ------------------------------------------------------------------- stats

    fn final_stats(peer: &mut Peer, now: Instant) -> ParticipantStats {
        Self::fill_stats(peer, now);
        peer.stats.clone()
    }

    fn fill_stats(peer: &mut Peer, now: Instant) {
        let s = &mut peer.stats;
        s.bitrate_in_bps = peer.rate_in.bps(now);
        s.bitrate_out_bps = peer.rate_out.bps(now);
        s.estimate_bps = peer.estimate;
        s.audio_only = peer.alloc.audio_only();
        s.time_on_audio_only = peer.audio_only_total
            + peer
                .audio_only_since
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
        s.connected_for = now.saturating_duration_since(peer.joined_at);
        s.layers = peer
            .subs
            .iter()
            .filter(|x| x.kind == TrackKind::Video && !x.removed)
            .map(|x| TrackQuality {
                track: x.track.clone(),
                layer: x.fwd.current().map(|l| l.to_string()),
            })
            .collect();
        s.keyframe_requests = peer.subs.iter().map(|x| x.fwd.keyframe_requests).sum();
        s.layer_switches = peer.subs.iter().map(|x| x.fwd.switches).sum();
    }

    /// Statistics of a room, if it is open.
    pub fn room_stats(&mut self, now: Instant, encounter: &str) -> Option<RoomStats> {
        let room = self.rooms.get(encounter)?;
        let keys = room.peers.clone();
        let opened_for = now.saturating_duration_since(room.opened_at);
        let number = room.number;
        let mut participants = Vec::new();
        for k in keys {
            if let Some(p) = self.peers.get_mut(&k) {
                Self::fill_stats(p, now);
                participants.push(p.stats.clone());
            }
        }
        participants.sort_by(|a, b| a.participant.cmp(&b.participant));
        Some(RoomStats {
            encounter: encounter.to_owned(),
            room: number,
            open_for: opened_for,
            participants,
        })
    }

    /// Prometheus text exposition of the server's counters and the participants' gauges.
    pub fn metrics_text(&mut self, now: Instant) -> String {
        let encounters: Vec<String> = self.rooms.keys().cloned().collect();
        let rooms: Vec<RoomStats> = encounters
            .iter()
            .filter_map(|e| self.room_stats(now, e))
            .collect();
        stats::render_metrics(&self.totals, &self.forward_delay, &rooms)
    }

    /// Counters since start (for tests and the benchmark).
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Count the forwarding delay of one packet: from when its media reached the host to when
    /// the driver handed its forwarded copy to the kernel.
    pub fn record_forward_delay(&mut self, delay: Duration) {
        self.forward_delay.record(delay);
    }

    /// Forwarding delays since start.
    pub fn forward_delay(&self) -> &DelayHistogram {
        &self.forward_delay
    }
}

impl Subscription {
    fn fwd_clock(&self) -> u32 {
        match self.kind {
            TrackKind::Audio => 48_000,
            TrackKind::Video => 90_000,
        }
    }
}

impl InLayer {
    fn new(rid: Option<Rid>) -> Self {
        InLayer {
            rid,
            ssrc: None,
            rate: RateMeter::default(),
            known_bps: None,
            frames: LayerFrames::default(),
            last_pli: None,
        }
    }
}

/// Runs `call` into a participant's `Rtc`, or gives `None` if str0m panicked in it.
///
/// str0m parses what a client sends (its SDP, and on the media path STUN, DTLS, SRTP and RTCP)
/// and asserts invariants on the way; its releases keep fixing panics that crafted input could
/// reach (malformed RTCP, short STUN, an SDP that claims one payload type twice). Whatever
/// such a panic is, it must cost that participant its connection, not end every visit on the
/// SFU: each call into an `Rtc` with a client's input, or that drains one, goes through here.
fn contained<T>(call: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        tests::injected_panic();
        call()
    }))
    .ok()
}

/// Takes `ufrag` out of `by_ufrag` if it is still participant `k`'s there: another participant's
/// `Rtc` may have been given the same fragment since.
fn unindex_ufrag(by_ufrag: &mut HashMap<String, PeerKey>, ufrag: &str, k: PeerKey) {
    if by_ufrag.get(ufrag) == Some(&k) {
        by_ufrag.remove(ufrag);
    }
}

/// Whether `input` is for `rtc`, and false if str0m panicked deciding: the datagram is dropped.
/// `accepts` takes the `Rtc` by shared reference, so a panic in it leaves nothing half-changed.
fn accepts(rtc: &Rtc, input: &Input<'_>) -> bool {
    contained(|| rtc.accepts(input)).unwrap_or(false)
}

/// The server's username fragment in the USERNAME of the STUN message `datagram`: a
/// connectivity check sent to the server names it `server:client` (RFC 8445 §7.2.2). `None`
/// for anything else, including a message too short for the lengths it claims.
fn stun_server_ufrag(datagram: &[u8]) -> Option<&str> {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    let header = datagram.get(..20)?;
    if header[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut attributes = datagram.get(20..20 + length)?;
    while let Some(head) = attributes.get(..4) {
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let size = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = attributes.get(4..4 + size)?;
        if kind == USERNAME {
            let (server, _client) = std::str::from_utf8(value).ok()?.split_once(':')?;
            return Some(server);
        }
        // Values are padded to a multiple of four bytes.
        attributes = attributes.get(4 + size.next_multiple_of(4)..)?;
    }
    None
}

/// Move a participant's entry in the timer set.
fn retime(timers: &mut BTreeSet<(Instant, PeerKey)>, k: PeerKey, at: &mut Instant, t: Instant) {
    if *at != t {
        timers.remove(&(*at, k));
        *at = t;
    }
    timers.insert((t, k));
}

/// The SSRC and sequence number of an RTP packet (SRTP leaves the header in clear); `None` for
/// RTCP (packet types 192-223 share the second byte's range, RFC 5761), STUN and DTLS.
fn rtp_id(datagram: &[u8]) -> Option<(u32, u16)> {
    let header: &[u8; 12] = datagram.get(..12)?.try_into().ok()?;
    let version = header[0] >> 6;
    if version != 2 || (192..=223).contains(&header[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([header[2], header[3]]);
    let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    Some((ssrc, seq))
}

/// Order of the usual RID names, lowest quality first.
fn rid_rank(rid: &Rid) -> u8 {
    match &**rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        "f" | "hi" | "high" | "2" => 2,
        _ => 3,
    }
}

/// The receiver's payload type for the sender's codec on the receiver's m-line.
fn map_pt(rtc: &Rtc, mid: Option<Mid>, spec: &CodecSpec) -> Option<Pt> {
    let media = rtc.media(mid?)?;
    let remote = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| remote.is_empty() || remote.contains(&p.pt()))
        .find(|p| same_codec(&p.spec(), spec))
        .map(|p| p.pt())
}

fn same_codec(a: &CodecSpec, b: &CodecSpec) -> bool {
    if a.codec != b.codec || a.clock_rate != b.clock_rate {
        return false;
    }
    match a.codec {
        // H.264 streams only decode with the same profile and packetization.
        Codec::H264 => {
            a.format.packetization_mode == b.format.packetization_mode
                && a.format.profile_level_id.map(|p| p >> 8)
                    == b.format.profile_level_id.map(|p| p >> 8)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use super::{ConnId, Output, RoomEvent, Sfu, SfuConfig};
    use crate::ice::IceConfig;
    use crate::signaling::{ClientMessage, CloseReason, ServerMessage};
    use crate::token::{MediaClaims, MediaTokenKey, Role};

    thread_local! {
        /// Calls into an `Rtc` through [`super::contained`] left before one panics (0: none).
        static PANIC_IN: Cell<u32> = const { Cell::new(0) };
    }

    /// Panics in the call through [`super::contained`] that [`panic_in`] chose.
    pub(super) fn injected_panic() {
        let left = PANIC_IN.get();
        if left > 0 {
            PANIC_IN.set(left - 1);
            assert!(left != 1, "str0m panicked (injected by a test)");
        }
    }

    /// The `n`th call into an `Rtc` from now on panics inside it, as str0m would.
    fn panic_in(n: u32) {
        PANIC_IN.set(n);
    }

    const KEY: [u8; 32] = [7; 32];

    fn sfu(now: Instant) -> Sfu {
        Sfu::new(
            SfuConfig {
                candidate_addr: "10.0.0.1:3478".parse().expect("an address"),
                token_key: MediaTokenKey::new(&KEY).expect("a key"),
                ice: IceConfig::default(),
                idle_room_timeout: Duration::from_secs(60),
                no_media_timeout: Duration::from_secs(60),
            },
            now,
            SystemTime::now(),
        )
    }

    fn join(sfu: &mut Sfu, now: Instant, encounter: &str, participant: &str) -> ConnId {
        let exp = (SystemTime::now() + Duration::from_secs(300))
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let token = MediaTokenKey::new(&KEY).expect("a key").mint(&MediaClaims {
            encounter: encounter.into(),
            participant: participant.into(),
            role: Role::Patient,
            exp,
        });
        let conn = sfu.connect();
        sfu.handle_message(
            now,
            conn,
            ClientMessage::Join {
                encounter: encounter.into(),
                token,
            },
        );
        conn
    }

    fn outputs(sfu: &mut Sfu) -> Vec<Output> {
        std::iter::from_fn(|| sfu.poll_output()).collect()
    }

    fn participants(sfu: &mut Sfu, now: Instant, encounter: &str) -> Vec<String> {
        let mut ids: Vec<String> = sfu
            .room_stats(now, encounter)
            .map(|room| {
                room.participants
                    .into_iter()
                    .map(|p| p.participant)
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// A panic inside str0m on one participant's timer (`n` = 1) or while its output is drained
    /// (`n` = 2) removes that participant, tells it and its room, and leaves every other visit
    /// on the SFU going.
    fn a_panic_in_str0m_costs_one_participant_its_connection(n: u32) {
        let start = Instant::now();
        let mut sfu = sfu(start);
        let a = join(&mut sfu, start, "enc-1", "pat-a");
        let b = join(&mut sfu, start, "enc-1", "prac-b");
        let c = join(&mut sfu, start, "enc-2", "pat-c");
        outputs(&mut sfu);

        // Only the first participant to join is due: its timer was set when it joined.
        panic_in(n);
        sfu.handle_timeout(start);
        assert_eq!(PANIC_IN.get(), 0, "the injected panic happened");
        let out = outputs(&mut sfu);

        let closed: Vec<(ConnId, &ServerMessage)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Signal { conn, msg } => Some((*conn, msg)),
                _ => None,
            })
            .collect();
        assert!(
            closed.contains(&(
                a,
                &ServerMessage::Closed {
                    reason: CloseReason::ConnectionLost
                }
            )),
            "the participant is told: {out:?}"
        );
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::CloseSignal { conn } if *conn == a)),
            "its signaling closes"
        );
        assert!(
            closed.contains(&(
                b,
                &ServerMessage::ParticipantLeft {
                    participant: "pat-a".into()
                }
            )),
            "its room is told"
        );
        assert!(
            !closed.iter().any(|(conn, _)| *conn == c),
            "another room hears nothing: {out:?}"
        );
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Event(RoomEvent::ParticipantLeft { participant, reason: CloseReason::ConnectionLost, .. })
                    if participant == "pat-a"
            )),
            "its owner gets the event"
        );
        assert_eq!(participants(&mut sfu, start, "enc-1"), ["prac-b"]);
        assert_eq!(participants(&mut sfu, start, "enc-2"), ["pat-c"]);

        // The SFU goes on: its timers run, and the participant can join again.
        let later = start + Duration::from_secs(2);
        sfu.handle_timeout(later);
        join(&mut sfu, later, "enc-1", "pat-a");
        sfu.handle_timeout(later + Duration::from_millis(100));
        assert_eq!(participants(&mut sfu, later, "enc-1"), ["pat-a", "prac-b"]);
        assert_eq!(participants(&mut sfu, later, "enc-2"), ["pat-c"]);
    }

    /// A STUN binding request with `attributes` (type, value), each padded to four bytes.
    fn stun(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attributes {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
            body.extend_from_slice(value);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut message = vec![0x00, 0x01];
        message.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
        message.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        message.extend_from_slice(&[9; 12]);
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn a_connectivity_check_names_the_servers_username_fragment() {
        const PRIORITY: u16 = 0x0024;
        const USERNAME: u16 = 0x0006;
        let check = stun(&[(PRIORITY, &[1, 2, 3, 4]), (USERNAME, b"srvfrag:cli")]);
        assert_eq!(super::stun_server_ufrag(&check), Some("srvfrag"));
        // Nothing past the message's own length, and nothing it only claims.
        assert_eq!(super::stun_server_ufrag(&check[..check.len() - 4]), None);
        let mut long = check.clone();
        long[3] += 4;
        assert_eq!(super::stun_server_ufrag(&long), None);
        let mut overlong_attribute = check.clone();
        overlong_attribute[31] = 200;
        assert_eq!(super::stun_server_ufrag(&overlong_attribute), None);
        assert_eq!(
            super::stun_server_ufrag(&stun(&[(USERNAME, b"no-colon")])),
            None
        );
        assert_eq!(
            super::stun_server_ufrag(&stun(&[(PRIORITY, &[1; 4])])),
            None
        );
        let mut not_stun = check;
        not_stun[4] = 0;
        assert_eq!(super::stun_server_ufrag(&not_stun), None);
        assert_eq!(super::stun_server_ufrag(&[0; 19]), None);
    }

    #[test]
    fn a_panic_on_a_participants_timer_costs_it_its_connection_only() {
        a_panic_in_str0m_costs_one_participant_its_connection(1);
    }

    #[test]
    fn a_panic_while_a_participants_output_is_drained_costs_it_its_connection_only() {
        a_panic_in_str0m_costs_one_participant_its_connection(2);
    }
}
