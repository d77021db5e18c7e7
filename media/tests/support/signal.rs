//! The client side of the signaling WebSocket (`media/SIGNALING.md`), driving a [`TestPeer`]
//! the way a browser app drives its `RTCPeerConnection`: join with a token, offer what it
//! publishes, answer the server's offers for the others' tracks, pause the layers the server
//! says nobody needs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::{SinkExt as _, StreamExt as _};
use media::signaling::{
    ClientMessage, CloseReason, ErrorCode, ServerMessage, TrackDescription, TrackInfo,
    TrackQuality, TrackSource,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::peer::{LAYERS, TestPeer};
use super::relay::rewrite_candidate;

/// What the session saw from the server, for assertions.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The `joined` reply.
    pub joined: Option<ServerMessage>,
    /// Every `error`.
    pub errors: Vec<(ErrorCode, String)>,
    /// The `closed` reason, if the server ended the session.
    pub closed: Option<CloseReason>,
    /// Every `quality` message, in order: (estimate, audio only, layers).
    pub quality: Vec<(u64, bool, Vec<TrackQuality>)>,
    /// Every `layers` message for our video: the RIDs the server said are needed.
    pub layers: Vec<Vec<String>>,
    /// Tracks of others, by the m-line that carries them to us.
    pub tracks: Vec<TrackInfo>,
    /// The server's offers answered.
    pub offers_answered: u64,
    /// Participants joined and left, in order (`+id` / `-id`).
    pub roster: Vec<String>,
}

/// Where the server's UDP candidate is and, when the client goes through a relay, where the
/// client should send instead.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The SFU's UDP address, as it appears in its SDP.
    pub server: SocketAddr,
    /// The relay's address, if any.
    pub relay: Option<SocketAddr>,
}

impl Route {
    fn apply(&self, sdp: &str) -> String {
        match self.relay {
            Some(relay) => rewrite_candidate(sdp, self.server, relay),
            None => sdp.to_owned(),
        }
    }
}

/// A joined participant: its peer and the session driving it.
pub struct Session {
    /// The WebRTC side.
    pub peer: Arc<TestPeer>,
    seen: Arc<Mutex<Seen>>,
    tx: mpsc::UnboundedSender<ClientMessage>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the signaling socket at `url` and sends `join`; returns the socket and the first reply.
pub async fn join_raw(
    url: &str,
    encounter: &str,
    token: &str,
) -> anyhow::Result<(Ws, ServerMessage)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let join = ClientMessage::Join {
        encounter: encounter.to_owned(),
        token: token.to_owned(),
    };
    ws.send(Message::text(serde_json::to_string(&join)?))
        .await?;
    let reply = next_message(&mut ws, Duration::from_secs(5))
        .await?
        .context("socket closed before a reply to join")?;
    Ok((ws, reply))
}

async fn next_message(ws: &mut Ws, within: Duration) -> anyhow::Result<Option<ServerMessage>> {
    loop {
        let frame = tokio::time::timeout(within, ws.next())
            .await
            .map_err(|_| anyhow!("no message within {within:?}"))?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text)?)),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => {}
        }
    }
}

impl Session {
    /// Joins the room of `encounter` with `token`, offers what `peer` publishes (or a
    /// receive-only offer), and keeps answering the server until dropped. Returns once the
    /// server answered our offer and media flows.
    pub async fn join(
        url: &str,
        encounter: &str,
        token: &str,
        peer: TestPeer,
        route: Route,
    ) -> anyhow::Result<Self> {
        let (ws, reply) = join_raw(url, encounter, token).await?;
        if !matches!(reply, ServerMessage::Joined { .. }) {
            bail!("join refused: {reply:?}");
        }
        let peer = Arc::new(peer);
        let seen = Arc::new(Mutex::new(Seen {
            joined: Some(reply),
            ..Seen::default()
        }));
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<ClientMessage>();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Ok(text) = serde_json::to_string(&msg) else {
                    continue;
                };
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        }));

        // Our offer first: the protocol has the client open the negotiation.
        let offer = peer.offer().await?;
        debug!(target: "e2e", peer = peer.publisher, "offer:\n{offer}");
        let (audio_mid, video_mid) = peer.sender_mids().await;
        let mut tracks = Vec::new();
        if let Some(mid) = &audio_mid {
            tracks.push(TrackDescription {
                mid: mid.clone(),
                source: TrackSource::Microphone,
                layers: None,
            });
        }
        if let Some(mid) = &video_mid {
            tracks.push(TrackDescription {
                mid: mid.clone(),
                source: TrackSource::Camera,
                layers: Some(LAYERS.iter().map(|l| l.rid.to_owned()).collect()),
            });
        }
        let own_offer_pending = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (answered_tx, answered_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        tx.send(ClientMessage::Offer { sdp: offer, tracks })
            .map_err(|_| anyhow!("socket gone"))?;

        tasks.push(tokio::spawn({
            let (peer, seen, tx) = (peer.clone(), seen.clone(), tx.clone());
            let pending = own_offer_pending.clone();
            async move {
                let mut answered_tx = Some(answered_tx);
                while let Some(Ok(frame)) = stream.next().await {
                    let Message::Text(text) = frame else { continue };
                    let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
                        continue;
                    };
                    match msg {
                        ServerMessage::Answer { sdp } => {
                            debug!(target: "e2e", peer = peer.publisher, "answer from the server:\n{sdp}");
                            let result = peer.accept_answer(route.apply(&sdp)).await;
                            pending.store(false, std::sync::atomic::Ordering::SeqCst);
                            if let Some(done) = answered_tx.take() {
                                let _ = done.send(result);
                            }
                        }
                        ServerMessage::Offer { id, sdp, tracks } => {
                            debug!(target: "e2e", peer = peer.publisher, id, ?tracks, "offer from the server:\n{sdp}");
                            if pending.load(std::sync::atomic::Ordering::SeqCst) {
                                continue; // our own offer wins; the server offers again
                            }
                            let answer = peer.answer(route.apply(&sdp)).await;
                            match &answer {
                                Ok(sdp) => debug!(target: "e2e", peer = peer.publisher, id, "answer:\n{sdp}"),
                                Err(e) => debug!(target: "e2e", peer = peer.publisher, id, "no answer: {e:#}"),
                            }
                            if let Ok(answer) = answer {
                                if let Ok(mut s) = seen.lock() {
                                    s.offers_answered += 1;
                                    for t in tracks {
                                        s.tracks.retain(|o| o.track != t.track);
                                        s.tracks.push(t);
                                    }
                                }
                                let _ = tx.send(ClientMessage::Answer { id, sdp: answer });
                            }
                        }
                        ServerMessage::Layers { mid, active }
                            if Some(&mid) == video_mid.as_ref() =>
                        {
                            peer.set_active_layers(&active);
                            if let Ok(mut s) = seen.lock() {
                                s.layers.push(active);
                            }
                        }
                        ServerMessage::Quality {
                            estimate_bps,
                            audio_only,
                            tracks,
                        } => {
                            if let Ok(mut s) = seen.lock() {
                                s.quality.push((estimate_bps, audio_only, tracks));
                            }
                        }
                        ServerMessage::ParticipantJoined(p) => {
                            if let Ok(mut s) = seen.lock() {
                                s.roster.push(format!("+{}", p.participant));
                            }
                        }
                        ServerMessage::ParticipantLeft { participant } => {
                            if let Ok(mut s) = seen.lock() {
                                s.roster.push(format!("-{participant}"));
                            }
                        }
                        ServerMessage::Error { code, message } => {
                            if let Ok(mut s) = seen.lock() {
                                s.errors.push((code, message));
                            }
                        }
                        ServerMessage::Closed { reason } => {
                            if let Ok(mut s) = seen.lock() {
                                s.closed = Some(reason);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }));

        tokio::time::timeout(Duration::from_secs(5), answered_rx)
            .await
            .map_err(|_| anyhow!("no answer to our offer within 5 s"))?
            .map_err(|_| anyhow!("session ended before the answer"))??;
        peer.connected(Duration::from_secs(10)).await?;
        peer.start_media().await?;
        Ok(Self {
            peer,
            seen,
            tx,
            tasks,
        })
    }

    /// A copy of what the server said so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Polls `check` on what the server said until it holds or `within` passes.
    pub async fn wait_seen(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&Seen) -> bool,
    ) -> anyhow::Result<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let s = self.seen();
            if check(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{what} not seen within {within:?}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends a message on the socket.
    pub fn send(&self, msg: ClientMessage) {
        let _ = self.tx.send(msg);
    }

    /// Leaves (`leave`), closes the peer and the socket.
    pub async fn leave(self) {
        self.send(ClientMessage::Leave);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.peer.close().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
