//! End-to-end tests: the media server on loopback (real UDP, real WebSocket) and independent
//! WebRTC clients (webrtc-rs) that join with media tokens, publish audio and simulcast video,
//! and count what reaches them. A shaping relay stands in for a patient's weak connection.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use media::server::{MediaConfig, MediaServer};
use media::signaling::{ErrorCode, ServerMessage};
use media::token::{MediaClaims, MediaTokenKey, Role};
use support::peer::{Publish, TestPeer, now_ns};
use support::relay::{Relay, Shape};
use support::signal::{Route, Session, join_raw};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const BOTH: Publish = Publish {
    audio: true,
    video: true,
};
const NOTHING: Publish = Publish {
    audio: false,
    video: false,
};

struct Server {
    media: MediaServer,
    key: MediaTokenKey,
    url: String,
    _http: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> anyhow::Result<Self> {
        let key = MediaTokenKey::generate();
        let media = MediaServer::start(MediaConfig::new((LOOPBACK, 0).into(), key.clone())).await?;
        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await?;
        let url = format!("ws://{}/media/signal", listener.local_addr()?);
        let app = media.router();
        let http = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            media,
            key,
            url,
            _http: http,
        })
    }

    fn token(&self, encounter: &str, participant: &str, role: Role) -> String {
        mint(
            &self.key,
            encounter,
            participant,
            role,
            Duration::from_secs(600),
        )
    }

    fn route(&self) -> Route {
        Route {
            server: self.media.candidate_addr(),
            relay: None,
        }
    }

    async fn join(
        &self,
        encounter: &str,
        participant: &str,
        tag: u32,
        publish: Publish,
    ) -> anyhow::Result<Session> {
        let peer = TestPeer::new(LOOPBACK, tag, publish).await?;
        let token = self.token(encounter, participant, Role::Patient);
        Session::join(&self.url, encounter, &token, peer, self.route()).await
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mint(
    key: &MediaTokenKey,
    encounter: &str,
    participant: &str,
    role: Role,
    valid_for: Duration,
) -> String {
    key.mint(&MediaClaims {
        encounter: encounter.into(),
        participant: participant.into(),
        role,
        exp: unix_now() + valid_for.as_secs(),
    })
}

const WAIT: Duration = Duration::from_secs(10);

/// The server's debug log (each bandwidth estimate among it), str0m's estimator changing state,
/// and the clients' signaling, shown with a failing test's output (`RUST_LOG` overrides what
/// is logged). A few lines a second: enough to tell why an estimate did not recover.
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "media=debug,e2e=debug,str0m::bwe_=debug,webrtc=warn,rtc=warn",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_audio_and_video_and_a_third_receives_both() -> anyhow::Result<()> {
    logs();
    let server = Server::start().await?;
    let a = server.join("enc-1", "Practitioner/dr", 1, BOTH).await?;
    let b = server.join("enc-1", "Patient/pt", 2, BOTH).await?;

    // Each gets the other's audio and video, and nothing of its own.
    for (me, other) in [(&a, 2), (&b, 1)] {
        me.peer
            .wait_for(WAIT, "the other's audio and video", |r| {
                r.audio(other).packets >= 25 && r.video(other).packets >= 30
            })
            .await?;
    }
    let ra = a.peer.received();
    assert_eq!(
        ra.audio(1).packets + ra.video(1).packets,
        0,
        "own media echoed"
    );
    // Simulcast reaches a receiver as one stream (one SSRC), whatever layer it is on, and every
    // payload arrives byte for byte as sent.
    let video = ra.video(2);
    assert_eq!(video.ssrcs.len(), 1, "{video:?}");
    assert_eq!(ra.tracks.get(&(0, true)).map_or(0, |c| c.corrupt), 0);
    assert_eq!(
        b.peer
            .received()
            .tracks
            .get(&(0, true))
            .map_or(0, |c| c.corrupt),
        0
    );

    // A third participant (an interpreter, receiving only) joins and gets both.
    let c = server
        .join("enc-1", "Practitioner/interp", 3, NOTHING)
        .await?;
    c.peer
        .wait_for(WAIT, "both publishers' audio and video", |r| {
            [1, 2]
                .iter()
                .all(|p| r.audio(*p).packets >= 25 && r.video(*p).packets >= 30)
        })
        .await?;
    a.wait_seen(WAIT, "the third joining", |s| {
        s.roster.iter().any(|e| e == "+Practitioner/interp")
    })
    .await?;
    // The publishers were told which layers someone needs, and send just those.
    for publisher in [&a, &b] {
        publisher
            .wait_seen(WAIT, "a layers message, followed", |s| {
                s.layers.last().is_some_and(|needed| {
                    let mut needed = needed.clone();
                    needed.sort();
                    let mut sending = publisher.peer.active_layers();
                    sending.sort();
                    sending == needed
                })
            })
            .await?;
    }
    let stats = server.media.stats("enc-1").await;
    assert!(stats.is_some(), "no stats for an open room");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constrained_receiver_falls_back_to_audio_and_recovers() -> anyhow::Result<()> {
    logs();
    let server = Server::start().await?;
    let publisher = server.join("enc-bw", "Practitioner/dr", 1, BOTH).await?;

    // The patient's link goes through a relay that can squeeze its downlink.
    let relay = Relay::start(server.media.candidate_addr()).await?;
    let peer = TestPeer::new(LOOPBACK, 2, NOTHING).await?;
    let token = server.token("enc-bw", "Patient/pt", Role::Patient);
    let route = Route {
        server: server.media.candidate_addr(),
        relay: Some(relay.addr()),
    };
    let patient = Session::join(&server.url, "enc-bw", &token, peer, route).await?;
    patient
        .peer
        .wait_for(WAIT, "video", |r| r.video(1).packets >= 30)
        .await?;

    // 300 kbit/s: room for audio, not for any video layer the SFU would keep up.
    relay.set_downlink(Shape::limited(300_000));
    patient
        .wait_seen(Duration::from_secs(15), "audio-only", |s| {
            s.quality.iter().any(|(_, audio_only, _)| *audio_only)
        })
        .await?;
    // Video stops while audio goes on: nothing the publisher sends from a moment after the
    // switch reaches the patient but audio. (Retransmissions of older video packets, answers
    // to the patient's NACKs, may still arrive, so this looks at send times, not counts.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cutoff = now_ns();
    let before = patient.peer.received();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = patient.peer.received();
    let audio = after.audio(1).packets - before.audio(1).packets;
    assert!(
        audio >= 30,
        "{audio} audio packets in a second on audio-only"
    );
    assert!(after.audio(1).newest_sent_ns > cutoff);
    let still_audio_only = patient
        .seen()
        .quality
        .last()
        .is_some_and(|(_, audio_only, _)| *audio_only);
    assert!(still_audio_only, "{:?}", patient.seen().quality);
    assert!(
        after.video(1).newest_sent_ns < cutoff,
        "video sent {} ms after the cutoff was forwarded on audio-only",
        (after.video(1).newest_sent_ns - cutoff) / 1_000_000
    );

    // The link recovers: so does the video, starting at a keyframe: one the SFU asks for, or
    // the one a paused layer starts with when the SFU tells the publisher it is needed again.
    let keyframe_requests = publisher.peer.keyframe_requests();
    let paused = publisher.peer.active_layers().is_empty();
    let layer_messages = publisher.seen().layers.len();
    relay.set_downlink(Shape::open());
    // The estimate has to climb back from below 500 kbit/s with only audio flowing (the SFU
    // probes): ~10-15 s in real time here, hence the long wait. On a machine busy with other
    // work the climb has taken over 30 s (delay-based estimation reads the busy machine's
    // scheduling jitter as queueing), so the wait allows twice that.
    let since = patient.peer.received().video(1).packets;
    patient
        .wait_seen(Duration::from_secs(60), "video restored", |s| {
            s.quality
                .last()
                .is_some_and(|(_, audio_only, _)| !*audio_only)
        })
        .await?;
    patient
        .peer
        .wait_for(Duration::from_secs(10), "video again", |r| {
            r.video(1).packets >= since + 30
        })
        .await?;
    let resumed = paused
        && publisher.seen().layers[layer_messages..]
            .iter()
            .any(|l| !l.is_empty());
    assert!(
        publisher.peer.keyframe_requests() > keyframe_requests || resumed,
        "video came back without a keyframe request or a resumed layer"
    );
    Ok(())
}

async fn refused(server: &Server, encounter: &str, token: &str) -> anyhow::Result<ErrorCode> {
    let (_ws, reply) = join_raw(&server.url, encounter, token).await?;
    match reply {
        ServerMessage::Error { code, .. } => Ok(code),
        other => anyhow::bail!("join was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn bad_tokens_and_finished_encounters_are_refused() -> anyhow::Result<()> {
    logs();
    let server = Server::start().await?;

    let other_key = MediaTokenKey::generate();
    let forged = mint(
        &other_key,
        "enc-t",
        "Patient/pt",
        Role::Patient,
        Duration::from_secs(600),
    );
    assert_eq!(
        refused(&server, "enc-t", &forged).await?,
        ErrorCode::InvalidToken
    );

    let expired = server.key.mint(&MediaClaims {
        encounter: "enc-t".into(),
        participant: "Patient/pt".into(),
        role: Role::Patient,
        exp: unix_now() - 1,
    });
    assert_eq!(
        refused(&server, "enc-t", &expired).await?,
        ErrorCode::TokenExpired
    );

    let elsewhere = server.token("enc-other", "Patient/pt", Role::Patient);
    assert_eq!(
        refused(&server, "enc-t", &elsewhere).await?,
        ErrorCode::WrongEncounter
    );

    assert_eq!(
        refused(&server, "enc-t", "not.a-token").await?,
        ErrorCode::InvalidToken
    );

    // A valid token is accepted, until the Encounter is finished.
    let good = server.token("enc-t", "Patient/pt", Role::Patient);
    let (_ws, reply) = join_raw(&server.url, "enc-t", &good).await?;
    assert!(matches!(reply, ServerMessage::Joined { .. }), "{reply:?}");
    server.media.close_room("enc-t").await;
    let again = server.token("enc-t", "Patient/pt2", Role::Patient);
    assert_eq!(
        refused(&server, "enc-t", &again).await?,
        ErrorCode::EncounterFinished
    );
    Ok(())
}
