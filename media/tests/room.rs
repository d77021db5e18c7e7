//! A room's life: leaving, silent participants, idle rooms, resuming with the same token,
//! mute, statistics, metrics and the events the owner sees.

mod sim;

use std::time::Duration;

use media::ice::{IceConfig, TurnConfig, TurnSecret};
use media::sfu::{RoomCloseReason, RoomEvent};
use media::signaling::{ClientMessage, CloseReason, ServerMessage};
use sim::{Sim, SimConfig};

fn got(s: &Sim, i: usize, f: impl Fn(&ServerMessage) -> bool) -> bool {
    s.clients[i].signals.iter().any(f)
}

fn left(s: &Sim, who: &str) -> Option<CloseReason> {
    s.events.iter().find_map(|e| match e {
        RoomEvent::ParticipantLeft {
            participant,
            reason,
            ..
        } if participant == who => Some(*reason),
        _ => None,
    })
}

#[test]
fn leaving_tells_the_others_and_the_owner() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(3));
    s.send(a, ClientMessage::Leave);
    s.run_for(Duration::from_millis(500));
    assert!(got(&s, a, |m| matches!(
        m,
        ServerMessage::Closed {
            reason: CloseReason::Left
        }
    )));
    assert!(s.closed_conns.contains(&s.clients[a].conn));
    assert!(got(
        &s,
        b,
        |m| matches!(m, ServerMessage::ParticipantLeft { participant } if participant == "alice")
    ));
    let track = s.video_track(a);
    assert!(got(
        &s,
        b,
        |m| matches!(m, ServerMessage::TrackUnpublished { track: t } if *t == track)
    ));
    assert_eq!(left(&s, "alice"), Some(CloseReason::Left));
    // The server retires the m-lines that carried alice's tracks to bob.
    let offers = s.clients[b]
        .signals
        .iter()
        .filter(|m| matches!(m, ServerMessage::Offer { .. }))
        .count();
    assert!(offers >= 2, "{offers}");
}

#[test]
fn a_participant_without_media_is_removed() {
    let mut s = Sim::with(SimConfig {
        no_media_timeout: Duration::from_secs(5),
        ..SimConfig::default()
    });
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(3));
    s.vanish(b);
    s.run_for(Duration::from_secs(4));
    assert_eq!(left(&s, "bob"), None, "not before the timeout");
    s.run_for(Duration::from_secs(2));
    assert_eq!(left(&s, "bob"), Some(CloseReason::NoMedia));
    assert_eq!(left(&s, "alice"), None, "alice sends media: she stays");
    assert!(got(
        &s,
        a,
        |m| matches!(m, ServerMessage::ParticipantLeft { participant } if participant == "bob")
    ));
}

#[test]
fn an_empty_room_closes_after_the_idle_timeout() {
    let mut s = Sim::with(SimConfig {
        idle_room_timeout: Duration::from_secs(10),
        ..SimConfig::default()
    });
    let a = s.join("enc-1", "alice", true);
    s.run_for(Duration::from_secs(2));
    s.send(a, ClientMessage::Leave);
    s.run_for(Duration::from_secs(8));
    assert!(
        !s.events
            .iter()
            .any(|e| matches!(e, RoomEvent::Closed { .. }))
    );
    assert!(s.sfu.room_stats(s.now, "enc-1").is_some());
    s.run_for(Duration::from_secs(3));
    assert!(s.events.iter().any(|e| matches!(e,
        RoomEvent::Closed { encounter, reason: RoomCloseReason::Idle, .. } if encounter == "enc-1")));
    assert!(s.sfu.room_stats(s.now, "enc-1").is_none());
    // An idle close is not the end of the Encounter: it may open again.
    let b = s.join("enc-1", "bob", true);
    assert!(got(&s, b, |m| matches!(m, ServerMessage::Joined { .. })));
}

#[test]
fn the_same_token_on_a_new_socket_resumes_the_participant() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(3));
    let token = s.token("enc-1", "bob", Duration::from_secs(60));
    let old_conn = s.clients[b].conn;
    s.rejoin(b, "enc-1", token);
    assert!(got(&s, b, |m| matches!(
        m,
        ServerMessage::Joined { resumed: true, .. }
    )));
    let joined_msgs = s.clients[a]
        .signals
        .iter()
        .filter(|m| matches!(m, ServerMessage::ParticipantJoined(_)))
        .count();
    assert_eq!(joined_msgs, 1, "alice is not told bob joined twice");
    assert!(s.events.iter().any(|e| matches!(e, RoomEvent::ParticipantJoined { participant, resumed: true, .. } if participant == "bob")));
    assert!(
        s.closed_conns.contains(&old_conn),
        "the replaced socket is closed"
    );
    // Media never stopped: the RTCPeerConnection survived.
    let track = s.video_track(a);
    if let Some(r) = s.received_mut(b, &track) {
        r.since_mark = 0;
    }
    s.run_for(Duration::from_secs(2));
    assert!(s.received(b, &track).is_some_and(|r| r.since_mark > 50));
}

#[test]
fn resuming_with_a_new_peer_connection_renegotiates_everything() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(3));
    let token = s.token("enc-1", "bob", Duration::from_secs(60));
    s.rejoin(b, "enc-1", token);
    s.restart_peer(b);
    s.run_for(Duration::from_secs(5));
    let from_alice = s.received(b, &s.video_track(a)).map_or(0, |r| r.packets);
    assert!(from_alice > 100, "bob receives again: {from_alice}");
    let to_alice = s.received(a, &s.video_track(b)).map_or(0, |r| r.packets);
    assert!(
        to_alice > 100,
        "alice receives bob's new tracks: {to_alice}"
    );
    assert_eq!(left(&s, "bob"), None);
}

#[test]
fn an_ice_restart_from_a_new_network_keeps_the_visit_going() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(3));
    // Bob's phone leaves the Wi-Fi: same RTCPeerConnection, new address, new ICE credentials.
    // His connectivity checks name the server's new username fragment from an address the
    // server has not seen.
    s.restart_ice(b);
    let (to_bob, to_alice) = (s.video_track(a), s.video_track(b));
    for (i, track) in [(b, &to_bob), (a, &to_alice)] {
        if let Some(r) = s.received_mut(i, track) {
            r.since_mark = 0;
        }
    }
    s.run_for(Duration::from_secs(5));
    let from_alice = s.received(b, &to_bob).map_or(0, |r| r.since_mark);
    assert!(from_alice > 100, "bob receives again: {from_alice}");
    let from_bob = s.received(a, &to_alice).map_or(0, |r| r.since_mark);
    assert!(from_bob > 100, "alice receives bob again: {from_bob}");
    assert_eq!(left(&s, "bob"), None);
}

#[test]
fn an_expired_token_does_not_resume() {
    let mut s = Sim::new();
    s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    let token = s.token("enc-1", "bob", Duration::from_secs(2));
    s.run_for(Duration::from_secs(3));
    s.rejoin(b, "enc-1", token);
    assert!(!got(&s, b, |m| matches!(
        m,
        ServerMessage::Joined { resumed: true, .. }
    )));
    assert!(got(&s, b, |m| matches!(m, ServerMessage::Error { .. })));
}

#[test]
fn mute_is_announced_to_the_others() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(2));
    let mid = s.clients[a].rtc_mid_video();
    s.send(a, ClientMessage::Mute { mid, muted: true });
    let track = s.video_track(a);
    assert!(got(
        &s,
        b,
        |m| matches!(m, ServerMessage::TrackMuted { track: t, muted: true } if *t == track)
    ));
}

#[test]
fn statistics_and_metrics_describe_each_participant() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.clients[a].up.loss = 0.05;
    s.run_for(Duration::from_secs(10));
    let stats = s.sfu.room_stats(s.now, "enc-1").expect("room");
    assert_eq!(stats.participants.len(), 2);
    let alice = stats
        .participants
        .iter()
        .find(|p| p.participant == "alice")
        .expect("alice");
    assert!(alice.bitrate_in_bps > 500_000, "{}", alice.bitrate_in_bps);
    assert!(alice.bitrate_out_bps > 500_000, "{}", alice.bitrate_out_bps);
    let rtt = alice.rtt_ms.expect("rtt");
    assert!((30.0..200.0).contains(&rtt), "20 ms each way: {rtt}");
    assert!(alice.jitter_ms.is_some());
    assert!(
        alice.loss_in.is_some_and(|l| l > 0.01),
        "{:?}",
        alice.loss_in
    );
    assert_eq!(alice.layers.len(), 1);
    assert!(alice.layers[0].layer.is_some());
    assert!(alice.estimate_bps.is_some());
    assert!(alice.connected_for >= Duration::from_secs(9));
    let _ = b;

    let room = stats.room;
    let alice_peer = alice.peer;
    let bob_peer = stats
        .participants
        .iter()
        .find(|p| p.participant == "bob")
        .expect("bob")
        .peer;
    let text = s.sfu.metrics_text(s.now);
    for line in [
        "media_rooms 1",
        "media_participants 2",
        &format!("media_participant_rtt_seconds{{room=\"{room}\",peer=\"{alice_peer}\"}}"),
        &format!("media_participant_bitrate_in_bps{{room=\"{room}\",peer=\"{bob_peer}\"}}"),
        &format!("media_participant_audio_only_seconds{{room=\"{room}\",peer=\"{bob_peer}\"}} 0"),
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let forwarded: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("media_packets_forwarded_total "))
        .and_then(|v| v.parse().ok())
        .expect("counter");
    assert!(forwarded > 1000, "{forwarded}");
}

#[test]
fn closing_the_room_ends_everything_in_order() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(2));
    s.close_room("enc-1");
    for i in [a, b] {
        assert!(got(&s, i, |m| matches!(
            m,
            ServerMessage::Closed {
                reason: CloseReason::RoomClosed
            }
        )));
        assert!(s.closed_conns.contains(&s.clients[i].conn));
    }
    let kinds: Vec<&str> = s
        .events
        .iter()
        .map(|e| match e {
            RoomEvent::Opened { .. } => "opened",
            RoomEvent::ParticipantJoined { .. } => "joined",
            RoomEvent::ParticipantLeft { .. } => "left",
            RoomEvent::QualityDegraded { .. } => "degraded",
            RoomEvent::QualityRestored { .. } => "restored",
            RoomEvent::Closed { .. } => "closed",
        })
        .collect();
    assert_eq!(
        kinds,
        ["opened", "joined", "joined", "left", "left", "closed"]
    );
    assert!(matches!(
        s.events.last(),
        Some(RoomEvent::Closed {
            reason: RoomCloseReason::Finished,
            ..
        })
    ));
}

/// Everything the `media` crate logs, at every level, while `f` runs on this thread.
fn logs_of(f: impl FnOnce()) -> String {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("media=trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().expect("log buffer").clone();
    String::from_utf8(bytes).expect("UTF-8 logs")
}

#[test]
fn the_logs_know_rooms_and_participants_by_number_only() {
    // Every id below contains "secret", so one search finds any of them in the logs.
    let (encounter, patient, clinician) = (
        "enc-secret-1",
        "Patient/secret-pat",
        "Practitioner/secret-doc",
    );
    let mut s = Sim::with(SimConfig {
        ice: IceConfig {
            stun_urls: Vec::new(),
            turn: Some(TurnConfig {
                urls: vec!["turn:turn.example.org:3478".into()],
                secret: TurnSecret::new("turn secret"),
                ttl: Duration::from_secs(3600),
            }),
        },
        ..SimConfig::default()
    });
    let logs = logs_of(|| {
        let a = s.join(encounter, clinician, true);
        let b = s.join(encounter, patient, true);
        s.run_for(Duration::from_secs(8));
        // Audio only and back, a resume on a new socket, a leave, the end of the Encounter.
        s.set_down_bandwidth(b, Some(300_000));
        s.run_for(Duration::from_secs(12));
        s.set_down_bandwidth(b, Some(5_000_000));
        s.run_for(Duration::from_secs(20));
        let token = s.token(encounter, patient, Duration::from_secs(60));
        s.rejoin(b, encounter, token);
        s.run_for(Duration::from_secs(1));
        s.send(a, ClientMessage::Leave);
        s.run_for(Duration::from_secs(1));
        s.close_room(encounter);
        s.run_for(Duration::from_secs(1));
    });
    for said in [
        "room opened",
        "participant joined",
        "receiver on audio only",
        "receiver video resumed",
        "participant resumed",
        "participant left",
        "room closed",
    ] {
        assert!(logs.contains(said), "{said:?} in\n{logs}");
    }
    let leaks: Vec<&str> = logs.lines().filter(|l| l.contains("secret")).collect();
    assert!(leaks.is_empty(), "ids in the logs:\n{}", leaks.join("\n"));
    // TURN servers log the usernames of the credentials handed out.
    let usernames: Vec<&str> = s.clients[..2]
        .iter()
        .flat_map(|c| &c.signals)
        .filter_map(|m| match m {
            ServerMessage::Joined { ice_servers, .. } => Some(ice_servers),
            _ => None,
        })
        .flatten()
        .filter_map(|server| server.username.as_deref())
        .collect();
    assert_eq!(usernames.len(), 3, "two joins and a resume: {usernames:?}");
    assert!(
        usernames.iter().all(|u| !u.contains("secret")),
        "{usernames:?}"
    );

    // The owner's events are where the numbers meet the ids.
    let room = s
        .events
        .iter()
        .find_map(|e| match e {
            RoomEvent::Opened {
                encounter: e, room, ..
            } if e == encounter => Some(*room),
            _ => None,
        })
        .expect("opened");
    let peer = s
        .events
        .iter()
        .find_map(|e| match e {
            RoomEvent::ParticipantJoined {
                participant, peer, ..
            } if participant == patient => Some(*peer),
            _ => None,
        })
        .expect("joined");
    assert!(
        logs.lines().any(|l| l.contains("participant joined")
            && l.contains(&format!("room={room}"))
            && l.contains(&format!("peer={peer}"))),
        "{logs}"
    );
}
