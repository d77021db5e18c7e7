//! Forwarding between str0m peers through the SFU core, in memory and in simulated time.

mod sim;

use std::time::{Duration, Instant};

use media::sfu::RoomEvent;
use media::signaling::{ClientMessage, CloseReason, ErrorCode, ServerMessage};
use sim::Sim;
use str0m::Rtc;
use str0m::media::{Direction, MediaKind};

#[test]
fn two_peers_exchange_audio_and_video_unchanged() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(6));

    for (from, to) in [(a, b), (b, a)] {
        let audio = s
            .received(to, &s.audio_track(from))
            .expect("audio received");
        assert!(audio.packets > 200, "audio packets {}", audio.packets);
        assert_eq!(audio.corrupt, 0);
        assert_eq!(audio.ssrcs.len(), 1);
        let video = s
            .received(to, &s.video_track(from))
            .expect("video received");
        assert!(video.packets > 100, "video packets {}", video.packets);
        assert_eq!(video.corrupt, 0, "payloads pass unchanged");
        assert_eq!(video.ssrcs.len(), 1, "one SSRC whatever the layer");
        assert_eq!(video.ts_backwards, 0);
    }
    // Each forwarded packet is followed out of its receiver's `Rtc` (a few may still wait in a
    // pacer), and most leave in the step they arrived in.
    let forwarded = s.sfu.totals().packets_forwarded;
    let delay = s.sfu.forward_delay();
    assert!(
        delay.count() <= forwarded && delay.count() * 100 >= forwarded * 98,
        "{} of {forwarded} forwarded packets traced",
        delay.count()
    );
    assert_eq!(delay.quantile(0.5), Duration::ZERO);
}

#[test]
fn a_third_participant_receives_both_others() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(2));
    let c = s.join("enc-1", "interpreter", true);
    s.run_for(Duration::from_secs(4));
    for from in [a, b] {
        let audio = s.received(c, &s.audio_track(from)).expect("audio");
        assert!(audio.packets > 100, "{}", audio.packets);
        let video = s.received(c, &s.video_track(from)).expect("video");
        assert!(video.packets > 50, "{}", video.packets);
        assert_eq!(video.corrupt, 0);
    }
    // And the two first ones receive the newcomer.
    for to in [a, b] {
        assert!(
            s.received(to, &s.audio_track(c))
                .is_some_and(|r| r.packets > 100)
        );
    }
    let joined = s
        .events
        .iter()
        .filter(|e| matches!(e, RoomEvent::ParticipantJoined { .. }))
        .count();
    assert_eq!(joined, 3);
    assert_eq!(
        s.events
            .iter()
            .filter(|e| matches!(e, RoomEvent::Opened { .. }))
            .count(),
        1
    );
}

#[test]
fn rooms_are_separate() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-2", "bob", true);
    s.run_for(Duration::from_secs(3));
    assert!(s.clients[a].received.is_empty());
    assert!(s.clients[b].received.is_empty());
}

fn last_error(s: &Sim, i: usize) -> Option<ErrorCode> {
    s.clients[i].signals.iter().rev().find_map(|m| match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    })
}

fn joined(s: &Sim, i: usize) -> bool {
    s.clients[i]
        .signals
        .iter()
        .any(|m| matches!(m, ServerMessage::Joined { .. }))
}

#[test]
fn a_token_for_another_encounter_is_refused() {
    let mut s = Sim::new();
    let token = s.token("enc-2", "mallory", Duration::from_secs(60));
    let i = s.connect("mallory", false);
    s.send(
        i,
        ClientMessage::Join {
            encounter: "enc-1".into(),
            token,
        },
    );
    assert_eq!(last_error(&s, i), Some(ErrorCode::WrongEncounter));
    assert!(!joined(&s, i));
}

#[test]
fn an_expired_token_is_refused() {
    let mut s = Sim::new();
    let token = s.token("enc-1", "alice", Duration::from_secs(5));
    s.run_for(Duration::from_secs(6));
    let i = s.connect("alice", false);
    s.send(
        i,
        ClientMessage::Join {
            encounter: "enc-1".into(),
            token,
        },
    );
    assert_eq!(last_error(&s, i), Some(ErrorCode::TokenExpired));
    assert!(!joined(&s, i));
}

#[test]
fn a_forged_token_is_refused() {
    let mut s = Sim::new();
    let token = s.token("enc-1", "alice", Duration::from_secs(60));
    let forged = format!("{}x", token);
    let i = s.connect("alice", false);
    s.send(
        i,
        ClientMessage::Join {
            encounter: "enc-1".into(),
            token: forged,
        },
    );
    assert_eq!(last_error(&s, i), Some(ErrorCode::InvalidToken));
    assert!(!joined(&s, i));
}

#[test]
fn a_token_for_a_finished_encounter_is_refused() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    s.run_for(Duration::from_secs(1));
    s.close_room("enc-1");
    assert!(
        s.events
            .iter()
            .any(|e| matches!(e, RoomEvent::Closed { .. }))
    );
    assert!(
        s.clients[a]
            .signals
            .iter()
            .any(|m| matches!(m, ServerMessage::Closed { .. }))
    );
    let token = s.token("enc-1", "bob", Duration::from_secs(60));
    let b = s.connect("bob", false);
    s.send(
        b,
        ClientMessage::Join {
            encounter: "enc-1".into(),
            token,
        },
    );
    assert_eq!(last_error(&s, b), Some(ErrorCode::EncounterFinished));
}

#[test]
fn bad_signaling_input_gets_an_error_and_the_socket_stays() {
    let mut s = Sim::new();
    let i = s.connect("alice", false);
    s.send_text(i, "not json");
    assert_eq!(last_error(&s, i), Some(ErrorCode::BadMessage));
    s.send_text(i, r#"{"type":"offer","sdp":"v=0"}"#);
    assert_eq!(last_error(&s, i), Some(ErrorCode::NotJoined));
    let token = s.token("enc-1", "alice", Duration::from_secs(60));
    s.send(
        i,
        ClientMessage::Join {
            encounter: "enc-1".into(),
            token,
        },
    );
    assert!(joined(&s, i));
    s.send_text(i, r#"{"type":"offer","sdp":"garbage"}"#);
    assert_eq!(last_error(&s, i), Some(ErrorCode::BadSdp));
    s.send_text(
        i,
        r#"{"type":"candidate","candidate":"candidate:nonsense"}"#,
    );
    assert_eq!(last_error(&s, i), Some(ErrorCode::BadCandidate));
    s.send_text(i, r#"{"type":"mute","mid":"zz","muted":true}"#);
    assert_eq!(last_error(&s, i), Some(ErrorCode::UnknownTrack));
    s.send_text(i, r#"{"type":"answer","id":99,"sdp":"garbage"}"#);
    assert!(!s.closed_conns.contains(&s.clients[i].conn));
}

/// A video m-line whose retransmission payload type 125 names two codecs (`apt`), in either of
/// the two ways SDP can say it (`fmtp`).
fn offer_with_conflicting_rtx(fmtp: &str) -> String {
    format!(
        "v=0\r\n\
         o=- 1 0 IN IP4 0.0.0.0\r\n\
         s=-\r\n\
         t=0 0\r\n\
         a=fingerprint:sha-256 AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:\
         AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA:AA\r\n\
         a=group:BUNDLE 0\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 120 121 125\r\n\
         c=IN IP4 0.0.0.0\r\n\
         a=sendrecv\r\n\
         a=mid:0\r\n\
         a=ice-ufrag:00000000\r\n\
         a=ice-pwd:00000000000000000000000000000000\r\n\
         a=setup:actpass\r\n\
         a=rtcp-mux\r\n\
         a=rtpmap:120 VP8/90000\r\n\
         a=rtpmap:121 VP9/90000\r\n\
         a=rtpmap:125 rtx/90000\r\n\
         {fmtp}"
    )
}

/// Alice and Bob in a visit, then Mallory joins and offers `sdp`: what Mallory is sent back.
fn mallory_offers(s: &mut Sim, sdp: String) -> Vec<ServerMessage> {
    let m = s.join("enc-1", "mallory", false);
    assert!(joined(s, m));
    s.clients[m].signals.clear();
    s.send(
        m,
        ClientMessage::Offer {
            sdp,
            tracks: Vec::new(),
        },
    );
    s.run_for(Duration::from_millis(200));
    s.clients[m].signals.clone()
}

/// Alice's video still reaches Bob.
fn visit_goes_on(s: &mut Sim, a: usize, b: usize) {
    let video = s.video_track(a);
    let before = s.received(b, &video).map_or(0, |r| r.packets);
    s.run_for(Duration::from_secs(2));
    let after = s.received(b, &video).map_or(0, |r| r.packets);
    assert!(
        after > before + 100,
        "alice's video reaches bob: {before} → {after}"
    );
}

#[test]
fn an_offer_whose_retransmissions_name_two_codecs_is_refused_and_the_visit_goes_on() {
    for fmtp in [
        "a=fmtp:125 apt=120\r\na=fmtp:125 apt=121\r\n",
        "a=fmtp:125 apt=120;apt=121\r\n",
    ] {
        let mut s = Sim::new();
        let a = s.join("enc-1", "alice", true);
        let b = s.join("enc-1", "bob", true);
        s.run_for(Duration::from_secs(3));
        let answers = mallory_offers(&mut s, offer_with_conflicting_rtx(fmtp));
        assert!(
            answers.iter().any(|m| matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::BadSdp,
                    ..
                }
            )),
            "{fmtp:?}: {answers:?}"
        );
        visit_goes_on(&mut s, a, b);
    }
}

#[test]
fn an_offer_that_breaks_the_webrtc_stack_costs_only_its_sender_the_connection() {
    // Two video m-lines of str0m's own codecs, where the first lacks the fmtp line of the H.264
    // payload type 124: the same payload type then stands for two formats, and str0m, claiming
    // it once for each, panics while it applies the offer.
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _) = change.apply().expect("offer");
    let offer = offer.to_sdp_string();
    let first = offer.find("a=fmtp:124 ").expect("an fmtp line for 124");
    let end = first + offer[first..].find("\r\n").expect("a line end") + 2;
    let sdp = format!("{}{}", &offer[..first], &offer[end..]);
    assert!(sdp.contains("a=fmtp:124 "), "the second m-line keeps it");
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(3));
    let answers = mallory_offers(&mut s, sdp);
    assert!(
        answers.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::BadSdp,
                ..
            }
        )),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|m| matches!(
            m,
            ServerMessage::Closed {
                reason: CloseReason::ConnectionLost
            }
        )),
        "{answers:?}"
    );
    visit_goes_on(&mut s, a, b);
    assert!(s.events.iter().any(|e| matches!(
        e,
        RoomEvent::ParticipantLeft {
            participant,
            reason: CloseReason::ConnectionLost,
            ..
        } if participant == "mallory"
    )));
}

#[test]
fn crossing_offers_resolve_with_the_clients_offer_first() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(2));
    // Carol's tracks make the server offer to alice; before alice has read that offer she
    // offers her screen share: the offers cross.
    let c = s.join("enc-1", "carol", true);
    s.share_screen(a);
    s.run_for(Duration::from_secs(5));
    let from_carol = s.received(a, &s.video_track(c)).map_or(0, |r| r.packets);
    assert!(from_carol > 100, "alice gets carol's video: {from_carol}");
    for to in [b, c] {
        let screen = s.received(to, &s.screen_track(a)).map_or(0, |r| r.packets);
        assert!(screen > 50, "the screen share reaches everyone: {screen}");
    }
}

#[test]
fn garbage_datagrams_are_dropped_without_harm() {
    let mut s = Sim::new();
    let a = s.join("enc-1", "alice", true);
    let b = s.join("enc-1", "bob", true);
    s.run_for(Duration::from_secs(2));
    let before = s.sfu.totals().datagrams_unrouted;
    let stranger: std::net::SocketAddr = "198.51.100.9:4000".parse().expect("addr");
    let now = s.now;
    // RTP-looking, DTLS-looking and STUN-looking junk from an unknown address, then junk
    // from a participant's own address.
    for first in [0x80u8, 0x16, 0x00, 0xff] {
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(37) ^ first)
            .collect();
        let mut d = junk.clone();
        d[0] = first;
        s.sfu.handle_udp(now, now, stranger, &d);
        let own = s.clients[a].addr;
        s.sfu.handle_udp(now, now, own, &d);
        s.sfu.handle_udp(now, now, own, &d[..1]);
        s.sfu.handle_udp(now, now, own, &[]);
    }
    assert!(s.sfu.totals().datagrams_unrouted >= before + 4);
    s.run_for(Duration::from_secs(2));
    let video = s.received(b, &s.video_track(a)).expect("video");
    assert!(video.packets > 100);
    assert_eq!(video.corrupt, 0);
}
