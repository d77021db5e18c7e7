//! The load generator of the SFU benchmark: N rooms of two str0m clients each, every client
//! publishing audio and three-layer simulcast video at realistic rates and receiving the other's
//! tracks through the SFU. It runs in its own process so that its CPU is not counted as the
//! SFU's.
//!
//! Delays are measured from the publisher's clock reading just before it hands a packet to its
//! stack to the kernel's receive timestamp (`SO_TIMESTAMPNS`) at the receiving client, so the
//! receiving client's own scheduling does not count; the path includes two loopback hops and
//! the SFU.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use media::signaling::{ClientMessage, ServerMessage, TrackDescription, TrackSource};
use media::token::{MediaClaims, MediaTokenKey, Role};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// (fps, delta-frame bitrate) per layer, like a browser's 720p camera simulcast.
pub const LAYERS: [(u32, u32); 3] = [(15, 150_000), (30, 500_000), (30, 1_200_000)];
const KEYFRAME_FACTOR: usize = 5;
const MAX_PAYLOAD: usize = 1100;
const AUDIO_PAYLOAD: usize = 80;
const MAGIC: u32 = 0x544d_4544; // "TMED"

/// Counters shared by all clients.
#[derive(Default)]
pub struct Totals {
    pub sent: AtomicU64,
    pub received_audio: AtomicU64,
    pub received_video: AtomicU64,
    pub received_bytes: AtomicU64,
    pub connected: AtomicU64,
    pub receiving: AtomicU64,
    pub errors: AtomicU64,
    /// Record delays only while measuring.
    pub measuring: AtomicBool,
    pub delays: Mutex<Option<Histogram<u64>>>,
}

/// Everything one client needs.
pub struct ClientSpec {
    pub url: String,
    pub encounter: String,
    pub participant: String,
    pub token: String,
    /// Whether to pause layers the SFU says nobody needs (a browser app would).
    pub honor_layers: bool,
}

pub fn token(key: &MediaTokenKey, encounter: &str, participant: &str, role: Role) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    key.mint(&MediaClaims {
        encounter: encounter.to_owned(),
        participant: participant.to_owned(),
        role,
        exp,
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn pt_of(rtc: &Rtc, codec: Codec) -> Option<Pt> {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
}

/// A payload: magic, kind (0 audio, 1 video), send time (ns since the epoch), then filler.
fn payload(video: bool, key: bool, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(16));
    // A VP8 payload descriptor and frame-tag byte, so the stream looks like VP8 on the wire.
    v.push(0x10);
    v.push(if key { 0x00 } else { 0x01 });
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&MAGIC.to_be_bytes());
    v.push(u8::from(video));
    v.extend_from_slice(&now_ns().to_be_bytes());
    v.resize(len.max(v.len()), 0x5a);
    v
}

fn parse(payload: &[u8]) -> Option<(bool, u64)> {
    if payload.len() < 17 || payload[4..8] != MAGIC.to_be_bytes() {
        return None;
    }
    let video = payload[8] == 1;
    let sent = u64::from_be_bytes(payload[9..17].try_into().ok()?);
    Some((video, sent))
}

struct Publisher {
    audio: Option<Mid>,
    video: Option<Mid>,
    active: [bool; 3],
    keyframe: [bool; 3],
    seq: [u64; 4],
    next_audio: Instant,
    next_frame: [Instant; 3],
    start: Instant,
}

/// Runs one client until the process ends.
pub async fn run_client(spec: ClientSpec, totals: Arc<Totals>) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    )?;
    let local = socket.local_addr()?;
    let now = Instant::now();
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(now);
    rtc.add_local_candidate(Candidate::host(local, "udp")?);

    let (mut ws, _) = tokio_tungstenite::connect_async(&spec.url).await?;
    let join = ClientMessage::Join {
        encounter: spec.encounter.clone(),
        token: spec.token.clone(),
    };
    ws.send(Message::text(serde_json::to_string(&join)?))
        .await?;

    // Publish: audio + simulcast video, as the protocol's opening offer.
    let mut change = rtc.sdp_api();
    let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let mut sim = Simulcast::new();
    for r in RIDS {
        sim.add_send_layer(SimulcastLayer::new(r));
    }
    let video = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sim));
    let (offer, pending) = change.apply().ok_or_else(|| anyhow::anyhow!("no offer"))?;
    let mut pending: Option<SdpPendingOffer> = Some(pending);
    let tracks = vec![
        TrackDescription {
            mid: audio.to_string(),
            source: TrackSource::Microphone,
            layers: None,
        },
        TrackDescription {
            mid: video.to_string(),
            source: TrackSource::Camera,
            layers: Some(RIDS.iter().map(|r| r.to_string()).collect()),
        },
    ];
    let mut offer_sent = false;
    let mut offer_msg = Some(ClientMessage::Offer {
        sdp: offer.to_sdp_string(),
        tracks,
    });

    let start = Instant::now();
    let mut publisher = Publisher {
        audio: Some(audio),
        video: Some(video),
        active: [true; 3],
        keyframe: [true; 3],
        seq: [1, 10_000, 20_000, 30_000],
        next_audio: start,
        next_frame: [start; 3],
        start,
    };
    let mut connected = false;
    let mut receiving = false;
    let mut rtc_timeout;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut buf = vec![0u8; 2048];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut flush_at = Instant::now() + Duration::from_millis(500);

    loop {
        // Everything str0m wants to send, and when it next wants time.
        loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => {
                    rtc_timeout = t;
                    break;
                }
                Output::Transmit(t) => {
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => match e {
                    Event::Connected => {
                        connected = true;
                        totals.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::KeyframeRequest(r) => {
                        if let Some(rid) = r.rid
                            && let Some(l) = RIDS.iter().position(|x| *x == &*rid)
                        {
                            publisher.keyframe[l] = true;
                        }
                    }
                    Event::RtpPacket(p) => {
                        // Media normally surfaces right after its datagram (below), where its
                        // receive time is known; anything surfacing here is counted only.
                        match parse(&p.payload) {
                            Some((true, _)) => {
                                totals.received_video.fetch_add(1, Ordering::Relaxed)
                            }
                            Some((false, _)) => {
                                totals.received_audio.fetch_add(1, Ordering::Relaxed)
                            }
                            None => 0,
                        };
                    }
                    _ => {}
                },
            }
        }
        if let Some(msg) = offer_msg.take()
            && !offer_sent
        {
            ws.send(Message::text(serde_json::to_string(&msg)?)).await?;
            offer_sent = true;
        }

        let now = Instant::now();
        let mut next = rtc_timeout.max(now);
        if connected {
            next = next.min(publisher.next_audio);
            for l in 0..3 {
                next = next.min(publisher.next_frame[l]);
            }
        }
        next = next.min(flush_at);

        tokio::select! {
            ready = socket.ready(Interest::READABLE) => {
                if ready.is_ok() {
                    // Drain the socket, each datagram with its kernel receive time.
                    loop {
                        let fd = socket.as_raw_fd();
                        let got = socket.try_io(Interest::READABLE, || {
                            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                            let msg = nix::sys::socket::recvmsg::<nix::sys::socket::SockaddrStorage>(
                                fd,
                                &mut iov,
                                Some(&mut cmsg),
                                nix::sys::socket::MsgFlags::empty(),
                            )
                            .map_err(std::io::Error::from)?;
                            let mut stamp = None;
                            if let Ok(cmsgs) = msg.cmsgs() {
                                for c in cmsgs {
                                    if let nix::sys::socket::ControlMessageOwned::ScmTimestampns(ts) = c {
                                        stamp = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
                                    }
                                }
                            }
                            let from = msg
                                .address
                                .and_then(|a| a.as_sockaddr_in().map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4))));
                            Ok((msg.bytes, from, stamp))
                        });
                        let Ok((n, Some(from), stamp)) = got else { break };
                        let arrived = stamp.unwrap_or_else(now_ns);
                        let Ok(contents) = (&buf[..n]).try_into() else { continue };
                        let before = Instant::now();
                        let input = Input::Receive(before, Receive {
                            proto: Protocol::Udp,
                            source: from,
                            destination: local,
                            contents,
                        });
                        if rtc.handle_input(input).is_err() {
                            totals.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        // Media arrives as events: take them now, while the receive time is known.
                        loop {
                            match rtc.poll_output() {
                                Ok(Output::Event(Event::RtpPacket(p))) => {
                                    if let Some((video, sent)) = parse(&p.payload) {
                                        if video {
                                            totals.received_video.fetch_add(1, Ordering::Relaxed);
                                        } else {
                                            totals.received_audio.fetch_add(1, Ordering::Relaxed);
                                        }
                                        totals.received_bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                                        if !receiving && video {
                                            receiving = true;
                                            totals.receiving.fetch_add(1, Ordering::Relaxed);
                                        }
                                        if totals.measuring.load(Ordering::Relaxed) {
                                            let _ = hist.record((arrived.saturating_sub(sent) / 1000).max(1));
                                        }
                                    }
                                }
                                Ok(Output::Event(Event::Connected)) => {
                                    connected = true;
                                    totals.connected.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Output::Event(Event::KeyframeRequest(r))) => {
                                    if let Some(rid) = r.rid
                                        && let Some(l) = RIDS.iter().position(|x| *x == &*rid)
                                    {
                                        publisher.keyframe[l] = true;
                                    }
                                }
                                Ok(Output::Event(_)) => {}
                                Ok(Output::Transmit(t)) => {
                                    let _ = socket.try_send_to(&t.contents, t.destination);
                                }
                                Ok(Output::Timeout(t)) => {
                                    rtc_timeout = t;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else { anyhow::bail!("signaling closed") };
                let Message::Text(text) = frame else { continue };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                match msg {
                    ServerMessage::Answer { sdp } => {
                        if let Some(p) = pending.take() {
                            rtc.sdp_api().accept_answer(p, SdpAnswer::from_sdp_string(&sdp)?)?;
                        }
                    }
                    ServerMessage::Offer { id, sdp, .. } => {
                        if pending.is_some() {
                            continue;
                        }
                        let answer = rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(&sdp)?)?;
                        let reply = ClientMessage::Answer { id, sdp: answer.to_sdp_string() };
                        ws.send(Message::text(serde_json::to_string(&reply)?)).await?;
                    }
                    ServerMessage::Layers { mid, active }
                        if spec.honor_layers && publisher.video.is_some_and(|m| m.to_string() == mid) =>
                    {
                        for (l, r) in RIDS.iter().enumerate() {
                            let on = active.iter().any(|a| a == r);
                            if on && !publisher.active[l] {
                                publisher.keyframe[l] = true;
                            }
                            publisher.active[l] = on;
                        }
                    }
                    ServerMessage::Error { code, message } => {
                        eprintln!("{}: error {code:?}: {message}", spec.participant);
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    ServerMessage::Closed { reason } => anyhow::bail!("closed: {reason:?}"),
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(next.into()) => {}
        }

        let now = Instant::now();
        if rtc_timeout <= now {
            rtc.handle_input(Input::Timeout(now))?;
        }
        if connected {
            produce(&mut rtc, &mut publisher, now, &totals);
        }
        if now >= flush_at {
            flush_at = now + Duration::from_millis(500);
            if !hist.is_empty()
                && let Ok(mut all) = totals.delays.lock()
            {
                match all.as_mut() {
                    Some(h) => {
                        let _ = h.add(&hist);
                    }
                    None => *all = Some(hist.clone()),
                }
                hist.reset();
            }
        }
    }
}

fn produce(rtc: &mut Rtc, p: &mut Publisher, now: Instant, totals: &Totals) {
    if let (Some(mid), true) = (p.audio, p.next_audio <= now) {
        p.next_audio += Duration::from_millis(20);
        if p.next_audio < now {
            p.next_audio = now + Duration::from_millis(20);
        }
        if let Some(pt) = pt_of(rtc, Codec::Opus)
            && let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None)
        {
            let seq = p.seq[3];
            p.seq[3] += 1;
            tx.write_rtp(RtpWrite::new(
                pt,
                SeqNo::from(seq),
                (seq * 960) as u32,
                now,
                payload(false, false, AUDIO_PAYLOAD),
            ));
            totals.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    let Some(mid) = p.video else { return };
    let Some(pt) = pt_of(rtc, Codec::Vp8) else {
        return;
    };
    for l in 0..3 {
        if p.next_frame[l] > now {
            continue;
        }
        let (fps, bitrate) = LAYERS[l];
        p.next_frame[l] += Duration::from_secs(1) / fps;
        if p.next_frame[l] < now {
            p.next_frame[l] = now + Duration::from_secs(1) / fps;
        }
        if !p.active[l] {
            continue;
        }
        let key = std::mem::take(&mut p.keyframe[l]);
        let delta = (bitrate / 8 / fps) as usize;
        let size = if key { delta * KEYFRAME_FACTOR } else { delta };
        let n = size.div_ceil(MAX_PAYLOAD);
        let ts = (now.duration_since(p.start).as_micros() as u64 * 9 / 100) as u32;
        let rid = Rid::from(RIDS[l]);
        for i in 0..n {
            let seq = p.seq[l];
            p.seq[l] += 1;
            if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, Some(rid)) {
                tx.write_rtp(
                    RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload(true, key, size / n))
                        .marker(i + 1 == n)
                        .nackable(true),
                );
                totals.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
