//! A WebRTC client for end-to-end tests, built on webrtc-rs (the `webrtc` crate): an
//! implementation independent of the SFU's str0m, speaking real ICE, DTLS and SRTP over UDP.
//!
//! It publishes what a browser in a visit publishes — Opus-sized audio at 50 packets/s and a
//! camera track in three simulcast layers (`q`, `h`, `f`) at realistic frame rates and sizes —
//! and counts what it receives. Payloads are synthetic but shaped like VP8 (a payload descriptor,
//! keyframes several times the size of delta frames, keyframes on request), and each carries a
//! tag naming its publisher, layer, frame and send time, so a receiver can tell exactly which
//! layer of whom it is getting, measure the delay, and check that the SFU passed the payload
//! through unchanged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};
use webrtc::rtp_transceiver::RtpSender;

/// Payload types offered; the SFU answers with what it takes.
const PT_OPUS: u8 = 111;
const PT_VP8: u8 = 96;

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// Marks a payload as ours; the tag follows at [`TAG_OFFSET`].
const MAGIC: &[u8; 4] = b"TMED";
/// After a VP8 payload descriptor and frame header (10 bytes for a keyframe).
const TAG_OFFSET: usize = 12;
/// magic, layer, publisher, frame, send time in ns since the Unix epoch.
const TAG_LEN: usize = 4 + 1 + 4 + 4 + 8;
/// Largest payload per packet, as browsers keep RTP packets under a 1200-byte MTU budget.
const MAX_PAYLOAD: usize = 1100;

/// The layer byte of audio packets.
pub const AUDIO_LAYER: u8 = 255;

/// One simulcast layer of the synthetic camera.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec {
    /// Its RID.
    pub rid: &'static str,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate of delta frames, bits per second.
    pub bitrate: u32,
}

/// Simulcast layers from low to high, at rates like a browser's 720p camera simulcast.
pub const LAYERS: [LayerSpec; 3] = [
    LayerSpec {
        rid: "q",
        fps: 15,
        bitrate: 150_000,
    },
    LayerSpec {
        rid: "h",
        fps: 30,
        bitrate: 500_000,
    },
    LayerSpec {
        rid: "f",
        fps: 30,
        bitrate: 1_200_000,
    },
];

/// Keyframes are this many times the size of a delta frame (real encoders: 3-10x).
const KEYFRAME_FACTOR: usize = 5;
/// Opus at 32 kbit/s in 20 ms frames.
const AUDIO_PAYLOAD: usize = 80;
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

/// What a peer publishes.
#[derive(Clone, Copy, Debug)]
pub struct Publish {
    /// A microphone track.
    pub audio: bool,
    /// A camera track in three simulcast layers.
    pub video: bool,
}

/// What a receiver saw of one remote track (keyed by publisher tag and kind).
#[derive(Clone, Debug, Default)]
pub struct TrackCounts {
    /// RTP packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Packets per layer index (0 = `q`, 1 = `h`, 2 = `f`); audio counts in 0.
    pub per_layer: [u64; 3],
    /// The layer of the latest packet.
    pub last_layer: Option<u8>,
    /// When the latest packet arrived.
    pub last_at: Option<Instant>,
    /// Packets whose payload did not carry an intact tag (the SFU must pass payloads unchanged).
    pub corrupt: u64,
    /// Distinct SSRCs seen (a simulcast track reaches a receiver as one SSRC).
    pub ssrcs: Vec<u32>,
    /// The latest publisher send time (ns since the epoch) among the packets received; a
    /// retransmission of an old packet does not move it.
    pub newest_sent_ns: u64,
}

/// Everything a peer received, by (publisher tag, is video).
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Per remote track.
    pub tracks: HashMap<(u32, bool), TrackCounts>,
    /// One-way delays from the publisher's send call to this peer's receipt, microseconds.
    pub delays_us: Vec<u64>,
}

impl Received {
    /// Counts for the audio of `publisher`.
    pub fn audio(&self, publisher: u32) -> TrackCounts {
        self.tracks
            .get(&(publisher, false))
            .cloned()
            .unwrap_or_default()
    }

    /// Counts for the video of `publisher`.
    pub fn video(&self, publisher: u32) -> TrackCounts {
        self.tracks
            .get(&(publisher, true))
            .cloned()
            .unwrap_or_default()
    }
}

/// Shared between the peer, its receive tasks and its generator.
struct Shared {
    /// The tag of the peer receiving.
    me: u32,
    received: Mutex<Received>,
    /// Whether each video layer is being sent (the SFU may say a layer is not needed).
    layer_active: [AtomicBool; 3],
    /// Set by a keyframe request for a layer, cleared when the generator sends one.
    keyframe_wanted: [AtomicBool; 3],
    keyframe_requests: AtomicU64,
    state: Mutex<RTCPeerConnectionState>,
    gathered: tokio::sync::Notify,
}

struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.shared.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if let Ok(mut s) = self.shared.state.lock() {
            *s = state;
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        record(&shared, packet.header.ssrc, &packet.payload);
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// Nanoseconds since the Unix epoch, the clock of the payload tags.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Parses our tag out of a payload: (layer, publisher, frame, send ns).
pub fn parse_tag(payload: &[u8]) -> Option<(u8, u32, u32, u64)> {
    let tag = payload.get(TAG_OFFSET..TAG_OFFSET + TAG_LEN)?;
    if &tag[..4] != MAGIC {
        return None;
    }
    let layer = tag[4];
    let publisher = u32::from_be_bytes(tag[5..9].try_into().ok()?);
    let frame = u32::from_be_bytes(tag[9..13].try_into().ok()?);
    let sent = u64::from_be_bytes(tag[13..21].try_into().ok()?);
    // The filler after the tag is a pattern derived from the frame, so any change is caught.
    let filler = &payload[TAG_OFFSET + TAG_LEN..];
    if filler
        .iter()
        .enumerate()
        .any(|(i, b)| *b != filler_byte(frame, i))
    {
        return None;
    }
    Some((layer, publisher, frame, sent))
}

fn filler_byte(frame: u32, i: usize) -> u8 {
    (frame as usize).wrapping_mul(31).wrapping_add(i) as u8
}

fn record(shared: &Shared, ssrc: u32, payload: &[u8]) {
    let arrived = now_ns();
    let Ok(mut received) = shared.received.lock() else {
        return;
    };
    match parse_tag(payload) {
        Some((layer, publisher, _frame, sent)) => {
            let video = layer != AUDIO_LAYER;
            let counts = received.tracks.entry((publisher, video)).or_default();
            counts.packets += 1;
            counts.bytes += payload.len() as u64;
            let index = if video { usize::from(layer.min(2)) } else { 0 };
            counts.per_layer[index] += 1;
            counts.last_layer = Some(layer);
            counts.last_at = Some(Instant::now());
            counts.newest_sent_ns = counts.newest_sent_ns.max(sent);
            if !counts.ssrcs.contains(&ssrc) {
                counts.ssrcs.push(ssrc);
                tracing::debug!(target: "e2e", peer = shared.me, publisher, video, ssrc, "first packet of a stream");
            }
            if received.delays_us.len() < 200_000 {
                received.delays_us.push(arrived.saturating_sub(sent) / 1000);
            }
        }
        None => {
            received.tracks.entry((0, true)).or_default().corrupt += 1;
        }
    }
}

/// Forwards inbound keyframe requests (PLI, FIR) to the application, which is the only one
/// that can answer them by sending a keyframe. Placed last in the chain, after the
/// interceptors that act on the rest of the inbound RTCP (reports, NACK, transport-cc), so
/// dropping everything else here loses nothing.
struct KeyframeRequests {
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                })
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// A published track: what we write to, its sender, and its SSRC(s).
type Local<S> = (Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, S);

struct LocalTracks {
    audio: Option<Local<u32>>,
    video: Option<Local<[u32; 3]>>,
}

/// A webrtc-rs peer connection with a synthetic publisher and a counting receiver.
pub struct TestPeer {
    /// Tag written into every payload this peer sends.
    pub publisher: u32,
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    local: LocalTracks,
    generator: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TestPeer {
    /// A peer bound to `ip` (port chosen by the system) that will publish `publish`.
    pub async fn new(ip: IpAddr, publisher: u32, publish: Publish) -> anyhow::Result<Self> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus(),
                payload_type: PT_OPUS,
            },
            RtpCodecKind::Audio,
        )?;
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8(),
                payload_type: PT_VP8,
            },
            RtpCodecKind::Video,
        )?;
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            media.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: MID_URI.to_owned(),
                },
                kind,
                None,
            )?;
        }
        // Default interceptors: NACK, RTCP reports, the simulcast header extensions, and
        // transport-wide congestion control feedback as a receiver — the SFU's bandwidth
        // estimate towards this peer is built from that feedback.
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let registry = registry.with(
            Slot::from(14_000),
            KeyframeRequests {
                read: Default::default(),
                write: Default::default(),
            },
        );

        let shared = Arc::new(Shared {
            me: publisher,
            received: Mutex::new(Received::default()),
            layer_active: std::array::from_fn(|_| AtomicBool::new(true)),
            keyframe_wanted: std::array::from_fn(|_| AtomicBool::new(true)),
            keyframe_requests: AtomicU64::new(0),
            state: Mutex::new(RTCPeerConnectionState::New),
            gathered: tokio::sync::Notify::new(),
        });
        let runtime = webrtc::runtime::default_runtime().ok_or_else(|| anyhow!("no runtime"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_handler(Arc::new(Handler {
                    shared: shared.clone(),
                }))
                .with_runtime(runtime)
                .with_udp_addrs(vec![format!("{ip}:0")])
                .build()
                .await?,
        );

        let mut local = LocalTracks {
            audio: None,
            video: None,
        };
        let stream = format!("peer-{publisher}");
        if publish.audio {
            let ssrc = rand::random::<u32>();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                stream.clone(),
                format!("{stream}-mic"),
                "microphone".to_owned(),
                RtpCodecKind::Audio,
                vec![encoding("", ssrc, opus())],
            )));
            let transceiver = pc
                .add_transceiver_from_track(track.clone(), Some(sendonly()))
                .await?;
            let sender = transceiver.sender().await?.context("audio sender")?;
            local.audio = Some((track, sender, ssrc));
        }
        if publish.video {
            let ssrcs: [u32; 3] = std::array::from_fn(|_| rand::random::<u32>());
            let codings = LAYERS
                .iter()
                .zip(ssrcs)
                .map(|(layer, ssrc)| encoding(layer.rid, ssrc, vp8()))
                .collect();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                stream.clone(),
                format!("{stream}-camera"),
                "camera".to_owned(),
                RtpCodecKind::Video,
                codings,
            )));
            let transceiver = pc
                .add_transceiver_from_track(track.clone(), Some(sendonly()))
                .await?;
            let sender = transceiver.sender().await?.context("video sender")?;
            local.video = Some((track, sender, ssrcs));
        }
        if !publish.audio && !publish.video {
            // A receive-only client still opens the negotiation with an offer: one recvonly
            // audio m-line, as a browser would with `addTransceiver('audio', recvonly)`.
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await?;
        }
        Ok(Self {
            publisher,
            pc,
            shared,
            local,
            generator: Mutex::new(None),
        })
    }

    /// The underlying connection, for what the helpers here do not cover.
    pub fn connection(&self) -> &Arc<dyn PeerConnection> {
        &self.pc
    }

    /// Creates an offer, sets it locally and returns it once ICE gathering is complete (host
    /// candidates on loopback gather at once, so no trickle is needed).
    pub async fn offer(&self) -> anyhow::Result<String> {
        let offer = self.pc.create_offer(None).await?;
        self.set_local(offer, Duration::from_secs(5)).await
    }

    /// Applies the remote answer to our offer.
    pub async fn accept_answer(&self, sdp: String) -> anyhow::Result<()> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(sdp)?)
            .await?;
        Ok(())
    }

    /// Answers a remote offer, returning our answer with its candidates.
    pub async fn answer(&self, sdp: String) -> anyhow::Result<String> {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await?;
        let answer = self.pc.create_answer(None).await?;
        self.set_local(answer, Duration::from_secs(2)).await
    }

    /// Sets `desc` as the local description and returns it, with its candidates, once ICE
    /// gathering is complete or `wait` has passed.
    async fn set_local(
        &self,
        desc: RTCSessionDescription,
        wait: Duration,
    ) -> anyhow::Result<String> {
        let gathered = self.shared.gathered.notified();
        self.pc.set_local_description(desc).await?;
        let _ = tokio::time::timeout(wait, gathered).await;
        let desc = self
            .pc
            .local_description()
            .await
            .context("no local description")?;
        Ok(desc.sdp)
    }

    /// The mids of our audio and video senders, once negotiated.
    pub async fn sender_mids(&self) -> (Option<String>, Option<String>) {
        let mut audio = None;
        let mut video = None;
        for t in self.pc.get_transceivers().await {
            let Ok(Some(sender)) = t.sender().await else {
                continue;
            };
            let Ok(Some(mid)) = t.mid().await else {
                continue;
            };
            if let Some((_, s, _)) = &self.local.audio
                && Arc::ptr_eq(s, &sender)
            {
                audio = Some(mid.clone());
            }
            if let Some((_, s, _)) = &self.local.video
                && Arc::ptr_eq(s, &sender)
            {
                video = Some(mid);
            }
        }
        (audio, video)
    }

    /// The connection state.
    pub fn state(&self) -> RTCPeerConnectionState {
        self.shared
            .state
            .lock()
            .map(|s| *s)
            .unwrap_or(RTCPeerConnectionState::Failed)
    }

    /// Waits until connected (ICE + DTLS done).
    pub async fn connected(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            match self.state() {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    bail!("peer {} connection {}", self.publisher, self.state())
                }
                _ => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "peer {} not connected within {within:?}: {}",
                    self.publisher,
                    self.state()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Marks which video layers are sent, as a browser does with `encodings[i].active` when
    /// the SFU says nobody needs a layer. A layer that resumes starts with a keyframe.
    pub fn set_active_layers(&self, rids: &[String]) {
        for (i, layer) in LAYERS.iter().enumerate() {
            let active = rids.iter().any(|r| r == layer.rid);
            let was = self.shared.layer_active[i].swap(active, Ordering::SeqCst);
            if active && !was {
                self.shared.keyframe_wanted[i].store(true, Ordering::SeqCst);
            }
        }
    }

    /// Which layers are being sent.
    pub fn active_layers(&self) -> Vec<&'static str> {
        LAYERS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.shared.layer_active[*i].load(Ordering::SeqCst))
            .map(|(_, l)| l.rid)
            .collect()
    }

    /// Keyframe requests (PLI/FIR) received for our video.
    pub fn keyframe_requests(&self) -> u64 {
        self.shared.keyframe_requests.load(Ordering::SeqCst)
    }

    /// A copy of what has been received so far.
    pub fn received(&self) -> Received {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Polls `check` on what was received until it holds or `within` passes.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&Received) -> bool,
    ) -> anyhow::Result<Received> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.received();
            if check(&r) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!(
                    "peer {}: {what} not seen within {within:?}: {:?}",
                    self.publisher,
                    r.tracks
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts sending synthetic media on the published tracks (after negotiation).
    pub async fn start_media(&self) -> anyhow::Result<()> {
        let mut exts = Vec::new();
        if let Some((_, sender, _)) = &self.local.audio {
            exts.push(extension_ids(sender).await?);
        }
        if let Some((_, sender, _)) = &self.local.video {
            exts.push(extension_ids(sender).await?);
        }
        let (mid_audio, mid_video) = self.sender_mids().await;
        let generator = Generator {
            publisher: self.publisher,
            mid_audio,
            mid_video,
            shared: self.shared.clone(),
            audio: self
                .local
                .audio
                .as_ref()
                .map(|(t, _, ssrc)| (t.clone(), *ssrc)),
            video: self
                .local
                .video
                .as_ref()
                .map(|(t, _, ssrcs)| (t.clone(), *ssrcs)),
            audio_mid: self.local.audio.as_ref().and(exts.first().copied()),
            video_ids: self.local.video.as_ref().and(exts.last().copied()),
        };
        if let Some((track, _, ssrcs)) = &self.local.video {
            // Keyframe requests arrive as events on the sending track.
            let track = track.clone();
            let ssrcs = *ssrcs;
            let shared = self.shared.clone();
            tokio::spawn(async move {
                while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await {
                    for p in packets {
                        let any = p.as_any();
                        let media = if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                            vec![pli.media_ssrc]
                        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                            fir.fir.iter().map(|e| e.ssrc).collect()
                        } else {
                            vec![]
                        };
                        for ssrc in media {
                            if let Some(i) = ssrcs.iter().position(|s| *s == ssrc) {
                                shared.keyframe_requests.fetch_add(1, Ordering::SeqCst);
                                shared.keyframe_wanted[i].store(true, Ordering::SeqCst);
                            }
                        }
                    }
                }
            });
        }
        let handle = tokio::spawn(generator.run());
        if let Ok(mut g) = self.generator.lock()
            && let Some(old) = g.replace(handle)
        {
            old.abort();
        }
        Ok(())
    }

    /// Stops the generator and closes the connection.
    pub async fn close(&self) {
        if let Ok(mut g) = self.generator.lock()
            && let Some(handle) = g.take()
        {
            handle.abort();
        }
        let _ = self.pc.close().await;
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        if let Ok(mut g) = self.generator.lock()
            && let Some(handle) = g.take()
        {
            handle.abort();
        }
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

fn encoding(rid: &str, ssrc: u32, codec: RTCRtpCodec) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            rid: rid.to_owned(),
            ssrc: Some(ssrc),
            ..Default::default()
        },
        active: true,
        codec,
        ..Default::default()
    }
}

fn sendonly() -> RTCRtpTransceiverInit {
    RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        streams: vec![],
        send_encodings: vec![],
    }
}

/// Negotiated (mid extension id, rid extension id, mid) of a sender.
#[derive(Clone, Copy, Debug, Default)]
struct ExtIds {
    mid: Option<u8>,
    rid: Option<u8>,
}

async fn extension_ids(sender: &Arc<dyn RtpSender>) -> anyhow::Result<ExtIds> {
    let params = sender.get_parameters().await?;
    let mut ids = ExtIds::default();
    for ext in &params.rtp_parameters.header_extensions {
        if ext.uri == MID_URI {
            ids.mid = u8::try_from(ext.id).ok();
        } else if ext.uri == RID_URI {
            ids.rid = u8::try_from(ext.id).ok();
        }
    }
    Ok(ids)
}

struct Generator {
    publisher: u32,
    shared: Arc<Shared>,
    audio: Option<(Arc<TrackLocalStaticRTP>, u32)>,
    video: Option<(Arc<TrackLocalStaticRTP>, [u32; 3])>,
    audio_mid: Option<ExtIds>,
    video_ids: Option<ExtIds>,
    mid_audio: Option<String>,
    mid_video: Option<String>,
}

struct Stream {
    seq: u16,
    frame: u32,
    next: Instant,
}

impl Generator {
    async fn run(self) {
        let start = Instant::now();
        // Sequence numbers start just below the wrap, so every stream's wrap within its first
        // second, before anyone who joins later subscribes to it: the SFU must start each
        // receiver's numbering in the first cycle all the same (SRTP authenticates under it).
        let near_the_wrap = || u16::MAX - rand::random::<u16>() % 32;
        let mut audio = Stream {
            seq: near_the_wrap(),
            frame: 0,
            next: start,
        };
        let mut layers: [Stream; 3] = std::array::from_fn(|_| Stream {
            seq: near_the_wrap(),
            frame: 0,
            next: start,
        });
        let mid_audio = self.mid_audio.clone();
        let mid_video = self.mid_video.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if let Some((track, ssrc)) = &self.audio {
                while audio.next <= now {
                    let ts = (audio.frame as u64 * 960) as u32;
                    let payload = payload(
                        AUDIO_LAYER,
                        self.publisher,
                        audio.frame,
                        AUDIO_PAYLOAD,
                        false,
                    );
                    let mut packet = rtp(PT_OPUS, *ssrc, audio.seq, ts, true, payload);
                    if let (Some(ids), Some(mid)) = (self.audio_mid, &mid_audio) {
                        set_ext(&mut packet, ids.mid, mid.as_bytes());
                    }
                    if track.write_rtp(packet).await.is_err() {
                        return;
                    }
                    audio.seq = audio.seq.wrapping_add(1);
                    audio.frame += 1;
                    audio.next += AUDIO_INTERVAL;
                }
            }
            if let Some((track, ssrcs)) = &self.video {
                for (i, spec) in LAYERS.iter().enumerate() {
                    let stream = &mut layers[i];
                    let interval = Duration::from_secs(1) / spec.fps;
                    while stream.next <= now {
                        stream.next += interval;
                        if !self.shared.layer_active[i].load(Ordering::SeqCst) {
                            continue;
                        }
                        let key = self.shared.keyframe_wanted[i].swap(false, Ordering::SeqCst);
                        let delta = (spec.bitrate / 8 / spec.fps) as usize;
                        let size = if key { delta * KEYFRAME_FACTOR } else { delta };
                        let ts = (now.duration_since(start).as_micros() as u64 * 9 / 100) as u32;
                        let count = size.div_ceil(MAX_PAYLOAD).max(1);
                        for n in 0..count {
                            let len = (size / count).max(TAG_OFFSET + TAG_LEN + 1);
                            let mut body =
                                payload(i as u8, self.publisher, stream.frame, len, key && n == 0);
                            if n == 0 {
                                body[0] = 0x10; // VP8 descriptor: start of partition
                            }
                            let mut packet =
                                rtp(PT_VP8, ssrcs[i], stream.seq, ts, n + 1 == count, body);
                            if let (Some(ids), Some(mid)) = (self.video_ids, &mid_video) {
                                set_ext(&mut packet, ids.mid, mid.as_bytes());
                                set_ext(&mut packet, ids.rid, spec.rid.as_bytes());
                            }
                            if track.write_rtp(packet).await.is_err() {
                                return;
                            }
                            stream.seq = stream.seq.wrapping_add(1);
                        }
                        stream.frame += 1;
                    }
                }
            }
        }
    }
}

fn set_ext(packet: &mut rtc::rtp::Packet, id: Option<u8>, value: &[u8]) {
    if let Some(id) = id {
        let _ = packet
            .header
            .set_extension(id, Bytes::copy_from_slice(value));
    }
}

fn rtp(pt: u8, ssrc: u32, seq: u16, ts: u32, marker: bool, payload: Vec<u8>) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

/// A payload of `len` bytes: a VP8-like header, our tag, then a frame-derived filler.
fn payload(layer: u8, publisher: u32, frame: u32, len: usize, keyframe: bool) -> Vec<u8> {
    let len = len.max(TAG_OFFSET + TAG_LEN);
    let mut body = Vec::with_capacity(len);
    // VP8 payload descriptor (RFC 7741 §4.2), then the frame tag's first byte: bit 0 clear
    // for a keyframe, followed by the keyframe start code.
    body.push(0x00);
    if keyframe {
        body.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
    } else {
        body.extend_from_slice(&[0x01, 0x00, 0x00]);
    }
    body.resize(TAG_OFFSET, 0);
    body.extend_from_slice(MAGIC);
    body.push(layer);
    body.extend_from_slice(&publisher.to_be_bytes());
    body.extend_from_slice(&frame.to_be_bytes());
    body.extend_from_slice(&now_ns().to_be_bytes());
    let start = body.len();
    body.extend((0..len - start).map(|i| filler_byte(frame, i)));
    body
}
