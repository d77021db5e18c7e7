//! The tokio driver over real loopback sockets: str0m clients reach the SFU through the
//! signaling WebSocket and one UDP port; the owner sees events, stats, metrics, and closes the
//! room. (End-to-end tests with webrtc-rs peers live with the benchmark.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use media::sfu::RoomEvent;
use media::signaling::{ClientMessage, CloseReason, ServerMessage, TrackDescription, TrackSource};
use media::{MediaClaims, MediaConfig, MediaServer, MediaTokenKey, Role};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

struct Server {
    media: MediaServer,
    key: MediaTokenKey,
    ws_url: String,
}

async fn start(no_media: Duration) -> Server {
    let key = MediaTokenKey::generate();
    let mut config = MediaConfig::new("127.0.0.1:0".parse().expect("addr"), key.clone());
    config.no_media_timeout = no_media;
    let media = MediaServer::start(config).await.expect("start");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = media.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        media,
        key,
        ws_url: format!("ws://{addr}/media/signal"),
    }
}

fn token(key: &MediaTokenKey, encounter: &str, participant: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 300;
    key.mint(&MediaClaims {
        encounter: encounter.into(),
        participant: participant.into(),
        role: Role::Practitioner,
        exp,
    })
}

/// What a client saw.
#[derive(Default)]
struct Seen {
    rtp_packets: u64,
    signals: Vec<ServerMessage>,
    closed: bool,
}

/// A str0m client on its own UDP socket, driven by a task until the socket closes.
async fn client(server: &Server, encounter: &str, name: &str, publish: bool) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url.as_str())
        .await
        .expect("ws");
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let local = udp.local_addr().expect("addr");
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").expect("candidate"));
    let join = ClientMessage::Join {
        encounter: encounter.into(),
        token: token(&server.key, encounter, name),
    };
    ws.send(Message::text(serde_json::to_string(&join).expect("json")))
        .await
        .expect("send");
    let mut change = rtc.sdp_api();
    let dir = if publish {
        Direction::SendOnly
    } else {
        Direction::RecvOnly
    };
    let mid = change.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, pending) = change.apply().expect("offer");
    let offer = ClientMessage::Offer {
        sdp: offer.to_sdp_string(),
        tracks: vec![TrackDescription {
            mid: mid.to_string(),
            source: TrackSource::Microphone,
            layers: None,
        }],
    };
    ws.send(Message::text(serde_json::to_string(&offer).expect("json")))
        .await
        .expect("send");
    let seen2 = seen.clone();
    tokio::spawn(async move {
        run_client(rtc, udp, ws, pending, publish.then_some(mid), seen2).await;
    });
    seen
}

async fn run_client(
    mut rtc: Rtc,
    udp: UdpSocket,
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pending: SdpPendingOffer,
    publish: Option<Mid>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut pending = Some(pending);
    let local = udp.local_addr().expect("addr");
    let mut buf = vec![0u8; 2048];
    let mut connected = false;
    let mut seq = 1u64;
    let mut next_audio = Instant::now();
    loop {
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = udp.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::Connected)) => connected = true,
                Ok(Output::Event(Event::RtpPacket(_))) => {
                    seen.lock().expect("lock").rtp_packets += 1
                }
                Ok(Output::Event(_)) => {}
                Err(_) => return,
            }
        };
        let mut wake = timeout;
        if connected && publish.is_some() {
            wake = wake.min(next_audio);
        }
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(Message::Text(text))) = msg else {
                    seen.lock().expect("lock").closed = true;
                    return;
                };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(text.as_str()) else { continue };
                match &msg {
                    ServerMessage::Answer { sdp } => {
                        if let (Some(p), Ok(a)) = (pending.take(), SdpAnswer::from_sdp_string(sdp)) {
                            let _ = rtc.sdp_api().accept_answer(p, a);
                        }
                    }
                    ServerMessage::Offer { id, sdp, .. } => {
                        if let Ok(o) = SdpOffer::from_sdp_string(sdp)
                            && let Ok(answer) = rtc.sdp_api().accept_offer(o)
                        {
                            let reply = ClientMessage::Answer { id: *id, sdp: answer.to_sdp_string() };
                            let _ = ws.send(Message::text(serde_json::to_string(&reply).expect("json"))).await;
                        }
                    }
                    _ => {}
                }
                seen.lock().expect("lock").signals.push(msg);
            }
            r = udp.recv_from(&mut buf) => {
                let Ok((n, source)) = r else { continue };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let _ = rtc.handle_input(Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: local, contents }));
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if let Some(mid) = publish && connected && now >= next_audio {
                    next_audio = now + Duration::from_millis(20);
                    let pt = rtc.codec_config().params().iter().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt());
                    if let Some(pt) = pt && let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                        tx.write_rtp(RtpWrite::new(pt, SeqNo::from(seq), (seq * 960) as u32, now, vec![1u8; 80]));
                        seq += 1;
                    }
                } else {
                    let _ = rtc.handle_input(Input::Timeout(now));
                }
            }
        }
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn audio_flows_over_loopback_and_the_owner_sees_the_room() {
    let server = start(Duration::from_secs(30)).await;
    let mut events = server.media.events();
    let alice = client(&server, "enc-9", "alice", true).await;
    let bob = client(&server, "enc-9", "bob", false).await;
    wait_for("bob receives alice's audio", || {
        bob.lock().expect("lock").rtp_packets > 25
    })
    .await;

    let stats = server.media.stats("enc-9").await.expect("room open");
    assert_eq!(stats.participants.len(), 2);
    assert!(
        stats
            .participants
            .iter()
            .any(|p| p.participant == "alice" && p.bytes_in > 0)
    );
    let metrics = server.media.metrics_text();
    wait_for("metrics refresh", || {
        server
            .media
            .metrics_text()
            .lines()
            .any(|l| l.starts_with("media_packets_forwarded_total ") && !l.ends_with(" 0"))
    })
    .await;
    assert!(metrics.contains("# TYPE media_rooms gauge"), "{metrics}");

    // Every packet bob received left the server's socket with a measured forwarding delay,
    // short on an idle loopback.
    let received = bob.lock().expect("lock").rtp_packets;
    let delay = server.media.forward_delay().await;
    assert!(
        delay.count() >= received,
        "{} delays for {received} packets",
        delay.count()
    );
    assert!(
        delay.quantile(0.5) < Duration::from_millis(100),
        "{:?}",
        delay.quantile(0.5)
    );
    wait_for("the delay in the metrics", || {
        server
            .media
            .metrics_text()
            .lines()
            .any(|l| l.starts_with("media_forward_delay_seconds_count ") && !l.ends_with(" 0"))
    })
    .await;

    server.media.close_room("enc-9").await;
    wait_for("both are told", || {
        [&alice, &bob].iter().all(|c| {
            let c = c.lock().expect("lock");
            c.closed
                && c.signals.iter().any(|m| {
                    matches!(
                        m,
                        ServerMessage::Closed {
                            reason: CloseReason::RoomClosed
                        }
                    )
                })
        })
    })
    .await;
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(
        matches!(seen.first(), Some(RoomEvent::Opened { encounter, .. }) if encounter == "enc-9"),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, RoomEvent::ParticipantJoined { .. }))
            .count(),
        2
    );
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, RoomEvent::ParticipantLeft { .. }))
            .count(),
        2
    );
    assert!(
        matches!(seen.last(), Some(RoomEvent::Closed { .. })),
        "{seen:?}"
    );
    assert!(server.media.stats("enc-9").await.is_none());

    // The Encounter is finished: its tokens no longer open the room.
    let carol = client(&server, "enc-9", "carol", false).await;
    wait_for("carol is refused", || {
        carol
            .lock()
            .expect("lock")
            .signals
            .iter()
            .any(|m| matches!(m, ServerMessage::Error { .. }))
    })
    .await;
}

#[tokio::test]
async fn public_ip_is_advertised_and_an_unspecified_bind_needs_one() {
    let key = MediaTokenKey::generate();
    let config = MediaConfig::new("0.0.0.0:0".parse().expect("addr"), key.clone());
    assert!(MediaServer::start(config).await.is_err());
    let mut config = MediaConfig::new("0.0.0.0:0".parse().expect("addr"), key);
    config.public_ip = Some("203.0.113.7".parse().expect("ip"));
    let server = MediaServer::start(config).await.expect("start");
    let advertised: SocketAddr = server.candidate_addr();
    assert_eq!(advertised.ip().to_string(), "203.0.113.7");
    assert_eq!(advertised.port(), server.udp_addr().port());
}
