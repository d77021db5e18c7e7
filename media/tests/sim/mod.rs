//! An in-memory world for the SFU core: str0m clients, a simulated network with latency,
//! bandwidth limits and loss, and simulated time that runs as fast as the CPU allows.
//!
//! The clients are real WebRTC peers (str0m, full ICE, DTLS, SRTP) that talk to the core
//! through its public API only: signaling messages in and out, datagrams in and out.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use media::ice::IceConfig;
use media::sfu::{ConnId, Output, RoomEvent, Sfu, SfuConfig};
use media::signaling::{ClientMessage, ServerMessage, TrackDescription, TrackSource};
use media::token::{MediaClaims, MediaTokenKey, Role};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};

pub const SFU_ADDR: &str = "10.0.0.1:3478";
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// Bitrates of the synthetic layers (180p/360p/720p-like).
pub const LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_500_000];
const FPS: u64 = 30;
/// Bitrate of the synthetic screen share, and the first payload byte that marks it.
pub const SCREEN_BPS: u64 = 600_000;
pub const SCREEN_LAYER: u8 = 7;
const MTU_PAYLOAD: usize = 1100;
/// A keyframe is this many times a delta frame.
const KEYFRAME_FACTOR: usize = 5;

/// One direction of a network path.
#[derive(Clone, Debug)]
pub struct Link {
    pub latency: Duration,
    /// Bottleneck rate; `None` is unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Random loss, 0..1.
    pub loss: f64,
    /// Drop-tail queue: packets that would wait longer than this are dropped.
    pub max_queue: Duration,
    busy_until: Option<Instant>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency: Duration::from_millis(20),
            bandwidth_bps: None,
            loss: 0.0,
            max_queue: Duration::from_millis(250),
            busy_until: None,
        }
    }
}

impl Link {
    /// When a packet sent now arrives, or `None` if it is dropped.
    fn send(&mut self, now: Instant, size: usize, rng: &mut Rng) -> Option<Instant> {
        if self.loss > 0.0 && rng.next_f64() < self.loss {
            return None;
        }
        let Some(bw) = self.bandwidth_bps else {
            return Some(now + self.latency);
        };
        let start = self.busy_until.map_or(now, |b| b.max(now));
        if start.saturating_duration_since(now) > self.max_queue {
            return None;
        }
        let tx = Duration::from_secs_f64((size as f64 * 8.0) / bw as f64);
        self.busy_until = Some(start + tx);
        Some(start + tx + self.latency)
    }
}

/// xorshift64*: deterministic loss.
pub struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a client received on one m-line.
#[derive(Debug, Default)]
pub struct Received {
    pub packets: u64,
    pub bytes: u64,
    pub ssrcs: Vec<u32>,
    /// Highest sequence number seen and the count of sequence numbers skipped.
    pub max_seq: Option<u64>,
    pub seq_gaps: u64,
    pub seq_backwards: u64,
    pub ts_backwards: u64,
    last_ts: Option<u32>,
    /// (time, layer, whether the first packet on the layer began a keyframe).
    pub layer_changes: Vec<(Instant, u8, bool)>,
    pub current_layer: Option<u8>,
    /// Payload bytes as sent, to check they pass unchanged.
    pub corrupt: u64,
    pub last_at: Option<Instant>,
    /// Packets received since the mark.
    pub since_mark: u64,
}

/// What a client publishes.
#[derive(Debug)]
struct Publisher {
    audio: Option<Mid>,
    video: Option<Mid>,
    /// The layers the server said are needed (all until told otherwise).
    active: [bool; 3],
    next_audio: Instant,
    next_frame: Instant,
    seq: [u64; 4],
    frame_no: u64,
    keyframe: [bool; 3],
    /// Frames sent per layer.
    pub frames: [u64; 3],
    pub keyframes: [u64; 3],
    /// Whether it honours `layers` messages by pausing.
    pub pause_unneeded: bool,
    /// A screen share: one layer, 15 frames per second.
    screen: Option<Mid>,
    screen_seq: u64,
    screen_key: bool,
}

impl Publisher {
    /// How the client describes its microphone and simulcast camera in an offer.
    fn camera_and_microphone(&self) -> Vec<TrackDescription> {
        let audio = self.audio.map(|mid| TrackDescription {
            mid: mid.to_string(),
            source: TrackSource::Microphone,
            layers: None,
        });
        let video = self.video.map(|mid| TrackDescription {
            mid: mid.to_string(),
            source: TrackSource::Camera,
            layers: Some(RIDS.iter().map(|r| r.to_string()).collect()),
        });
        audio.into_iter().chain(video).collect()
    }
}

pub struct Client {
    pub name: String,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub conn: ConnId,
    pub up: Link,
    pub down: Link,
    pub signals: Vec<ServerMessage>,
    inbox: VecDeque<ServerMessage>,
    pending: Option<SdpPendingOffer>,
    timeout: Instant,
    pub received: HashMap<Mid, Received>,
    pub_: Publisher,
    pub publishes: bool,
    /// m-line → the track id the server said it carries.
    pub track_of: HashMap<String, String>,
    pub connected: bool,
    pub keyframe_requests: u64,
    pub gone: bool,
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub sfu: Sfu,
    pub key: MediaTokenKey,
    pub clients: Vec<Client>,
    pub events: Vec<RoomEvent>,
    net: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    packets: HashMap<u64, (Dest, SocketAddr, Vec<u8>)>,
    seq: u64,
    rng: Rng,
    pub closed_conns: Vec<ConnId>,
}

#[derive(Clone, Copy, Debug)]
enum Dest {
    Sfu,
    Client(usize),
}

pub fn sfu_addr() -> SocketAddr {
    SFU_ADDR.parse().expect("address")
}

pub struct SimConfig {
    pub idle_room_timeout: Duration,
    pub no_media_timeout: Duration,
    pub ice: IceConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            idle_room_timeout: Duration::from_secs(30),
            no_media_timeout: Duration::from_secs(10),
            ice: IceConfig::default(),
        }
    }
}

impl Sim {
    pub fn new() -> Self {
        Self::with(SimConfig::default())
    }

    pub fn with(cfg: SimConfig) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let now = Instant::now();
        let key = MediaTokenKey::new(&[7u8; 32]).expect("key");
        let sfu = Sfu::new(
            SfuConfig {
                candidate_addr: sfu_addr(),
                token_key: key.clone(),
                ice: cfg.ice,
                idle_room_timeout: cfg.idle_room_timeout,
                no_media_timeout: cfg.no_media_timeout,
            },
            now,
            SystemTime::now(),
        );
        Sim {
            start: now,
            now,
            sfu,
            key,
            clients: Vec::new(),
            events: Vec::new(),
            net: BinaryHeap::new(),
            packets: HashMap::new(),
            seq: 0,
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            closed_conns: Vec::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn token(&self, encounter: &str, participant: &str, valid_for: Duration) -> String {
        let exp = (SystemTime::now() + (self.now - self.start) + valid_for)
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_secs();
        self.key.mint(&MediaClaims {
            encounter: encounter.into(),
            participant: participant.into(),
            role: Role::Patient,
            exp,
        })
    }

    /// A client that opens a signaling connection and joins `encounter`.
    pub fn join(&mut self, encounter: &str, name: &str, publishes: bool) -> usize {
        let token = self.token(encounter, name, Duration::from_secs(300));
        let i = self.connect(name, publishes);
        self.send(
            i,
            ClientMessage::Join {
                encounter: encounter.into(),
                token,
            },
        );
        if publishes {
            self.publish(i);
        }
        i
    }

    /// A client with a signaling connection and no join yet.
    pub fn connect(&mut self, name: &str, publishes: bool) -> usize {
        let i = self.clients.len();
        let addr: SocketAddr = format!("192.168.1.{}:{}", 10 + i, 5000 + i)
            .parse()
            .expect("addr");
        let rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(self.now);
        let mut rtc = rtc;
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let conn = self.sfu.connect();
        self.clients.push(Client {
            name: name.into(),
            addr,
            rtc,
            conn,
            up: Link::default(),
            down: Link::default(),
            signals: Vec::new(),
            inbox: VecDeque::new(),
            pending: None,
            timeout: self.now,
            received: HashMap::new(),
            pub_: Publisher {
                audio: None,
                video: None,
                active: [true; 3],
                next_audio: self.now,
                next_frame: self.now,
                seq: [1000, 20_000, 40_000, 60_000],
                frame_no: 0,
                keyframe: [true; 3],
                frames: [0; 3],
                keyframes: [0; 3],
                pause_unneeded: true,
                screen: None,
                screen_seq: 30_000,
                screen_key: true,
            },
            publishes,
            track_of: HashMap::new(),
            connected: false,
            keyframe_requests: 0,
            gone: false,
        });
        i
    }

    /// Offer audio + 3-layer simulcast video (or, for a receive-only client, one recvonly
    /// audio m-line: the protocol has the client open with an offer).
    fn publish(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let mut change = c.rtc.sdp_api();
        let audio = change.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("s".into()),
            Some("a".into()),
            None,
        );
        let mut sim = Simulcast::new();
        for r in RIDS {
            sim.add_send_layer(SimulcastLayer::new(r));
        }
        let video = change.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("s".into()),
            Some("v".into()),
            Some(sim),
        );
        let (offer, pending) = change.apply().expect("offer");
        c.pending = Some(pending);
        c.pub_.audio = Some(audio);
        c.pub_.video = Some(video);
        let tracks = c.pub_.camera_and_microphone();
        let sdp = offer.to_sdp_string();
        self.drain_client(i);
        self.send(i, ClientMessage::Offer { sdp, tracks });
    }

    /// Client `i` starts sharing its screen: a new m-line in a new offer of its own.
    pub fn share_screen(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let mut change = c.rtc.sdp_api();
        let mid = change.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("s".into()),
            Some("screen".into()),
            None,
        );
        let (offer, pending) = change.apply().expect("offer");
        c.pending = Some(pending);
        c.pub_.screen = Some(mid);
        let sdp = offer.to_sdp_string();
        self.drain_client(i);
        let tracks = vec![TrackDescription {
            mid: mid.to_string(),
            source: TrackSource::Screen,
            layers: None,
        }];
        self.send(i, ClientMessage::Offer { sdp, tracks });
    }

    pub fn screen_track(&self, i: usize) -> String {
        format!(
            "{}/{}",
            self.clients[i].name,
            self.clients[i].pub_.screen.expect("shares")
        )
    }

    /// A receive-only client opens with an offer of one inactive-ish audio m-line.
    pub fn offer_receive_only(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let mut change = c.rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().expect("offer");
        c.pending = Some(pending);
        let sdp = offer.to_sdp_string();
        self.drain_client(i);
        self.send(
            i,
            ClientMessage::Offer {
                sdp,
                tracks: vec![],
            },
        );
    }

    pub fn send(&mut self, i: usize, msg: ClientMessage) {
        let conn = self.clients[i].conn;
        self.sfu.handle_message(self.now, conn, msg);
        self.pump();
    }

    pub fn send_text(&mut self, i: usize, text: &str) {
        let conn = self.clients[i].conn;
        self.sfu.handle_text(self.now, conn, text);
        self.pump();
    }

    /// Client `i` opens a new signaling socket (the old one is left as it is: half-open, as
    /// after a network change) and joins with `token`.
    pub fn rejoin(&mut self, i: usize, encounter: &str, token: String) {
        self.clients[i].conn = self.sfu.connect();
        self.send(
            i,
            ClientMessage::Join {
                encounter: encounter.into(),
                token,
            },
        );
    }

    /// Client `i` makes a new RTCPeerConnection (new ICE credentials and DTLS certificate, new
    /// address) and publishes again on it.
    pub fn restart_peer(&mut self, i: usize) {
        let addr: SocketAddr = format!("192.168.2.{}:{}", 10 + i, 7000 + i)
            .parse()
            .expect("addr");
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let c = &mut self.clients[i];
        c.rtc = rtc;
        c.addr = addr;
        c.connected = false;
        c.pending = None;
        c.received.clear();
        c.track_of.clear();
        c.timeout = self.now;
        c.pub_.keyframe = [true; 3];
        c.pub_.active = [true; 3];
        if c.publishes {
            self.publish(i);
        } else {
            self.offer_receive_only(i);
        }
    }

    /// Client `i` moves to another network (a new address) and restarts ICE on the same
    /// RTCPeerConnection, as a browser's `restartIce()` does: an offer with new ICE credentials,
    /// the tracks unchanged.
    pub fn restart_ice(&mut self, i: usize) {
        let addr: SocketAddr = format!("192.168.3.{}:{}", 10 + i, 7000 + i)
            .parse()
            .expect("addr");
        let c = &mut self.clients[i];
        let mut change = c.rtc.sdp_api();
        // The old candidate is kept: str0m restarts the offerer's ICE agent when the answer
        // arrives, and would drop the new one, added now, with the old ones. Everything the
        // client sends leaves from its new address all the same.
        change.ice_restart(true);
        let (offer, pending) = change.apply().expect("offer");
        c.rtc
            .add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        c.addr = addr;
        c.pending = Some(pending);
        let sdp = offer.to_sdp_string();
        let tracks = c.pub_.camera_and_microphone();
        self.drain_client(i);
        self.send(i, ClientMessage::Offer { sdp, tracks });
    }

    /// The Encounter finished.
    pub fn close_room(&mut self, encounter: &str) {
        self.sfu.close_room(self.now, encounter);
        self.pump();
    }

    /// A client's socket closes (no `leave`).
    pub fn drop_signaling(&mut self, i: usize) {
        self.sfu.disconnect(self.clients[i].conn);
    }

    /// The client goes away entirely: no more datagrams from it.
    pub fn vanish(&mut self, i: usize) {
        self.drop_signaling(i);
        self.clients[i].gone = true;
    }

    /// Move SFU outputs to where they go.
    fn pump(&mut self) {
        while let Some(o) = self.sfu.poll_output() {
            match o {
                Output::Transmit {
                    destination,
                    contents,
                    forwards,
                } => {
                    // As the driver does when the datagram leaves.
                    if let Some(at) = forwards {
                        self.sfu
                            .record_forward_delay(self.now.saturating_duration_since(at));
                    }
                    let Some(i) = self.clients.iter().position(|c| c.addr == destination) else {
                        continue;
                    };
                    let c = &mut self.clients[i];
                    if let Some(at) = c.down.send(self.now, contents.len(), &mut self.rng) {
                        self.enqueue(at, Dest::Client(i), sfu_addr(), contents);
                    }
                }
                Output::Signal { conn, msg } => {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.conn == conn) {
                        c.signals.push(msg.clone());
                        c.inbox.push_back(msg);
                    }
                }
                Output::CloseSignal { conn } => self.closed_conns.push(conn),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    fn enqueue(&mut self, at: Instant, dest: Dest, from: SocketAddr, data: Vec<u8>) {
        self.seq += 1;
        self.packets.insert(self.seq, (dest, from, data));
        let d = match dest {
            Dest::Sfu => usize::MAX,
            Dest::Client(i) => i,
        };
        self.net.push(Reverse((at, self.seq, d)));
    }

    fn drain_client(&mut self, i: usize) {
        let now = self.now;
        loop {
            let c = &mut self.clients[i];
            match c.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    c.timeout = t;
                    break;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    if c.gone {
                        continue;
                    }
                    if let Some(at) = c.up.send(now, t.contents.len(), &mut self.rng) {
                        let from = c.addr;
                        self.enqueue(at, Dest::Sfu, from, t.contents.to_vec());
                    }
                }
                Ok(RtcOutput::Event(e)) => on_client_event(c, now, e),
                Err(e) => panic!("client {} failed: {e}", c.name),
            }
        }
    }

    fn handle_signals(&mut self) {
        for i in 0..self.clients.len() {
            while let Some(msg) = self.clients[i].inbox.pop_front() {
                match msg {
                    ServerMessage::Answer { sdp } => {
                        let c = &mut self.clients[i];
                        if let Some(p) = c.pending.take() {
                            let answer = SdpAnswer::from_sdp_string(&sdp).expect("answer sdp");
                            c.rtc
                                .sdp_api()
                                .accept_answer(p, answer)
                                .expect("accept answer");
                            self.drain_client(i);
                        }
                    }
                    ServerMessage::Offer { id, sdp, tracks } => {
                        let c = &mut self.clients[i];
                        if c.pending.is_some() {
                            continue; // impolite: our own offer wins
                        }
                        for t in tracks {
                            if let Some(mid) = t.mid {
                                c.track_of.insert(mid, t.track);
                            }
                        }
                        let offer = SdpOffer::from_sdp_string(&sdp).expect("offer sdp");
                        let answer = c.rtc.sdp_api().accept_offer(offer).expect("accept offer");
                        let sdp = answer.to_sdp_string();
                        self.drain_client(i);
                        self.send(i, ClientMessage::Answer { id, sdp });
                    }
                    ServerMessage::Layers { mid, active } => {
                        let c = &mut self.clients[i];
                        if c.pub_.video.map(|m| m.to_string()) == Some(mid) && c.pub_.pause_unneeded
                        {
                            for (l, r) in RIDS.iter().enumerate() {
                                let on = active.iter().any(|a| a == r);
                                if on && !c.pub_.active[l] {
                                    // A resumed encoder starts with a keyframe.
                                    c.pub_.keyframe[l] = true;
                                }
                                c.pub_.active[l] = on;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Produce the clients' media due now.
    fn produce(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        if !c.connected || !c.publishes || c.gone {
            return;
        }
        let mut wrote = false;
        if let Some(mid) = c.pub_.audio
            && c.pub_.next_audio <= now
        {
            c.pub_.next_audio = now + Duration::from_millis(20);
            if let Some(pt) = pt_of(&c.rtc, Codec::Opus) {
                let seq = c.pub_.seq[3];
                c.pub_.seq[3] += 1;
                let payload = payload_bytes(9, false, seq, 100);
                if let Some(tx) = c.rtc.direct_api().stream_tx_by_mid(mid, None) {
                    tx.write_rtp(RtpWrite::new(
                        pt,
                        SeqNo::from(seq),
                        (seq * 960) as u32,
                        now,
                        payload,
                    ));
                    wrote = true;
                }
            }
        }
        if wrote {
            self.drain_client(i);
        }
        let c = &mut self.clients[i];
        if let Some(mid) = c.pub_.video
            && c.pub_.next_frame <= now
        {
            c.pub_.next_frame = now + Duration::from_micros(1_000_000 / FPS);
            c.pub_.frame_no += 1;
            let ts = (c.pub_.frame_no * 3000) as u32;
            let Some(pt) = pt_of(&c.rtc, Codec::Vp8) else {
                return;
            };
            for l in 0..3 {
                let c = &mut self.clients[i];
                if !c.pub_.active[l] {
                    continue;
                }
                let key = std::mem::take(&mut c.pub_.keyframe[l]);
                let mut size = (LAYER_BPS[l] / 8 / FPS) as usize;
                if key {
                    size *= KEYFRAME_FACTOR;
                    c.pub_.keyframes[l] += 1;
                }
                c.pub_.frames[l] += 1;
                let n = size.div_ceil(MTU_PAYLOAD);
                for p in 0..n {
                    let c = &mut self.clients[i];
                    let seq = c.pub_.seq[l];
                    c.pub_.seq[l] += 1;
                    let payload = payload_bytes(l as u8, key, seq, size / n);
                    let rid = Rid::from(RIDS[l]);
                    if let Some(tx) = c.rtc.direct_api().stream_tx_by_mid(mid, Some(rid)) {
                        tx.write_rtp(
                            RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload)
                                .marker(p + 1 == n)
                                .nackable(true),
                        );
                    }
                    self.drain_client(i);
                }
            }
            let c = &mut self.clients[i];
            if let Some(screen) = c.pub_.screen
                && c.pub_.frame_no.is_multiple_of(2)
            {
                let key = std::mem::take(&mut c.pub_.screen_key);
                let size =
                    (SCREEN_BPS / 8 / (FPS / 2)) as usize * if key { KEYFRAME_FACTOR } else { 1 };
                let n = size.div_ceil(MTU_PAYLOAD);
                for p in 0..n {
                    let c = &mut self.clients[i];
                    let seq = c.pub_.screen_seq;
                    c.pub_.screen_seq += 1;
                    let payload = payload_bytes(SCREEN_LAYER, key, seq, size / n);
                    if let Some(tx) = c.rtc.direct_api().stream_tx_by_mid(screen, None) {
                        tx.write_rtp(
                            RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload)
                                .marker(p + 1 == n)
                                .nackable(true),
                        );
                    }
                    self.drain_client(i);
                }
            }
        }
    }

    /// Run the world until `until` (simulated).
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        let mut stuck = 0u32;
        while self.now < until {
            let mut next = until.min(self.sfu.poll_timeout());
            if let Some(Reverse((at, _, _))) = self.net.peek() {
                next = next.min(*at);
            }
            for c in self.clients.iter().filter(|c| !c.gone) {
                next = next.min(c.timeout);
                if c.connected && c.publishes && !c.gone {
                    next = next.min(c.pub_.next_audio).min(c.pub_.next_frame);
                }
            }
            // A harness bug that stops time must fail the test, not hang it.
            stuck = if next <= self.now { stuck + 1 } else { 0 };
            assert!(
                stuck < 100_000,
                "simulated time stopped at {:?}",
                self.elapsed()
            );
            self.now = next.max(self.now);
            self.step();
        }
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(Reverse((at, seq, _))) = self.net.peek().copied() {
            if at > now {
                break;
            }
            self.net.pop();
            let Some((dest, from, data)) = self.packets.remove(&seq) else {
                continue;
            };
            match dest {
                Dest::Sfu => {
                    self.sfu.handle_udp(now, now, from, &data);
                    self.pump();
                }
                Dest::Client(i) => {
                    let c = &mut self.clients[i];
                    if c.gone {
                        continue;
                    }
                    let Ok(contents) = data.as_slice().try_into() else {
                        continue;
                    };
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: from,
                            destination: c.addr,
                            contents,
                        },
                    );
                    if c.rtc.handle_input(input).is_ok() {
                        self.drain_client(i);
                    }
                }
            }
        }
        for i in 0..self.clients.len() {
            if self.clients[i].timeout <= now && !self.clients[i].gone {
                let _ = self.clients[i].rtc.handle_input(Input::Timeout(now));
                self.drain_client(i);
            }
            self.produce(i);
        }
        if self.sfu.poll_timeout() <= now {
            self.sfu.handle_timeout(now);
            self.pump();
        }
        self.handle_signals();
    }

    /// Received stats of client `i` for the track `track` (by the server's track id).
    pub fn received(&self, i: usize, track: &str) -> Option<&Received> {
        let c = &self.clients[i];
        let mid = c
            .track_of
            .iter()
            .find(|(_, t)| t.as_str() == track)
            .map(|(m, _)| m.clone())?;
        c.received.get(&Mid::from(mid.as_str()))
    }

    pub fn received_mut(&mut self, i: usize, track: &str) -> Option<&mut Received> {
        let c = &mut self.clients[i];
        let mid = c
            .track_of
            .iter()
            .find(|(_, t)| t.as_str() == track)
            .map(|(m, _)| m.clone())?;
        c.received.get_mut(&Mid::from(mid.as_str()))
    }

    /// The track id of a client's camera / microphone.
    pub fn video_track(&self, i: usize) -> String {
        format!(
            "{}/{}",
            self.clients[i].name,
            self.clients[i].pub_.video.expect("publishes")
        )
    }

    pub fn audio_track(&self, i: usize) -> String {
        format!(
            "{}/{}",
            self.clients[i].name,
            self.clients[i].pub_.audio.expect("publishes")
        )
    }

    pub fn keyframes_sent(&self, i: usize) -> [u64; 3] {
        self.clients[i].pub_.keyframes
    }

    pub fn layers_active(&self, i: usize) -> [bool; 3] {
        self.clients[i].pub_.active
    }

    /// Client `i` asks for a keyframe on the stream that carries `track` to it (a PLI).
    pub fn request_keyframe(&mut self, i: usize, track: &str) {
        let c = &mut self.clients[i];
        let Some(mid) = c
            .track_of
            .iter()
            .find(|(_, t)| t.as_str() == track)
            .map(|(m, _)| Mid::from(m.as_str()))
        else {
            return;
        };
        if let Some(rx) = c.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        }
        self.drain_client(i);
    }

    /// The bandwidth of the path from the SFU to client `i`.
    pub fn set_down_bandwidth(&mut self, i: usize, bps: Option<u64>) {
        self.clients[i].down.bandwidth_bps = bps;
    }

    pub fn set_pause_unneeded(&mut self, i: usize, on: bool) {
        self.clients[i].pub_.pause_unneeded = on;
    }

    /// Frames sent per layer by client `i`.
    pub fn frames_sent(&self, i: usize) -> [u64; 3] {
        self.clients[i].pub_.frames
    }
}

impl Client {
    /// The m-line of the client's camera.
    pub fn rtc_mid_video(&self) -> String {
        self.pub_.video.map(|m| m.to_string()).unwrap_or_default()
    }
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

fn pt_of(rtc: &Rtc, codec: Codec) -> Option<Pt> {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
}

/// Synthetic payload: layer, keyframe flag, then a pattern derived from the sequence number,
/// so the receiver can check the bytes arrived unchanged.
fn payload_bytes(layer: u8, key: bool, seq: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(4));
    v.push(layer);
    v.push(u8::from(key));
    v.push((seq & 0xff) as u8);
    while v.len() < len.max(4) {
        v.push((seq as u8).wrapping_mul(31).wrapping_add(v.len() as u8));
    }
    v
}

fn payload_ok(p: &[u8]) -> bool {
    if p.len() < 4 {
        return false;
    }
    let seq = p[2];
    p.iter()
        .enumerate()
        .skip(3)
        .all(|(i, b)| *b == seq.wrapping_mul(31).wrapping_add(i as u8))
}

fn on_client_event(c: &mut Client, now: Instant, e: Event) {
    match e {
        Event::Connected => c.connected = true,
        Event::KeyframeRequest(r) => {
            c.keyframe_requests += 1;
            if Some(r.mid) == c.pub_.screen {
                c.pub_.screen_key = true;
            }
            if let Some(rid) = r.rid
                && let Some(l) = RIDS.iter().position(|x| *x == &*rid)
            {
                c.pub_.keyframe[l] = true;
            }
        }
        Event::RtpPacket(p) => {
            let mid = match p.header.ext_vals.mid {
                Some(m) => m,
                None => find_mid(&p.header.ssrc, c),
            };
            let r = c.received.entry(mid).or_default();
            r.packets += 1;
            r.since_mark += 1;
            r.bytes += p.payload.len() as u64;
            r.last_at = Some(now);
            let ssrc = *p.header.ssrc;
            if !r.ssrcs.contains(&ssrc) {
                r.ssrcs.push(ssrc);
            }
            let seq = *p.seq_no;
            match r.max_seq {
                Some(m) if seq > m + 1 => r.seq_gaps += seq - m - 1,
                Some(m) if seq <= m => r.seq_backwards += 1,
                _ => {}
            }
            if r.max_seq.is_none_or(|m| seq > m) {
                if let Some(last) = r.last_ts
                    && (p.header.timestamp.wrapping_sub(last) as i32) < 0
                {
                    r.ts_backwards += 1;
                }
                r.last_ts = Some(p.header.timestamp);
                r.max_seq = Some(seq);
            }
            if !payload_ok(&p.payload) {
                r.corrupt += 1;
            }
            // Layer changes are read from new packets only: a retransmission of an older
            // packet (after a NACK) may come from the layer sent before a switch.
            let newest = r.max_seq == Some(seq);
            let layer = p.payload.first().copied().unwrap_or(255);
            if newest && r.current_layer != Some(layer) {
                r.current_layer = Some(layer);
                r.layer_changes
                    .push((now, layer, p.payload.get(1) == Some(&1)));
            }
        }
        _ => {}
    }
}

fn find_mid(ssrc: &str0m::rtp::Ssrc, c: &mut Client) -> Mid {
    c.rtc
        .direct_api()
        .stream_rx(ssrc)
        .map(|s| s.mid())
        .unwrap_or_else(|| Mid::from("?"))
}
