//! The tokio driver of the SFU core: one UDP socket for every participant, the core's timers,
//! and the signaling WebSocket as an axum [`Router`].
//!
//! One task owns the [`Sfu`] and the socket and does nothing but move inputs in and outputs out,
//! so the core never waits on I/O and needs no lock. WebSocket tasks and the API talk to it
//! through a channel.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::debug;

use crate::ice::IceConfig;
use crate::sfu::stats::{DelayHistogram, RoomStats};
use crate::sfu::{ConnId, Output, RoomEvent, Sfu, SfuConfig};
use crate::signaling::ServerMessage;
use crate::token::MediaTokenKey;

/// The largest signaling message accepted (an SDP offer with many m-lines is ~20 KB).
const MAX_SIGNAL_BYTES: usize = 256 * 1024;
/// Room events buffered for slow subscribers before they miss some.
const EVENT_BUFFER: usize = 1024;
/// How often the metrics text is refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// The server pings each signaling socket this often, so proxies that close idle connections
/// (often after 60 s) keep it open through a quiet visit.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Largest UDP datagram read.
const DATAGRAM_MAX: usize = 2048;
/// Datagrams read by one system call (`recvmmsg`). All of them are handled before what they
/// produce is sent, so a larger batch saves system calls but holds the first datagram's
/// forwarding back while the others are handled.
const RECV_BATCH: usize = 8;
/// Most rounds of due timers the driver runs before it looks at the socket again.
const DUE_ROUNDS: usize = 64;
/// A receive slot when the kernel may coalesce datagrams of one sender (UDP GRO): the largest
/// UDP payload.
const GRO_SLOT: usize = 65_535;
/// Largest train of datagrams handed to the kernel in one send (UDP GSO), in bytes.
const GSO_MAX_BYTES: usize = 60_000;

/// Configuration of the media server.
pub struct MediaConfig {
    /// Where the UDP socket binds (all participants share it).
    pub udp_bind: SocketAddr,
    /// The IP address to advertise to clients, for a server behind NAT (the socket's own
    /// address when `None`; then `udp_bind` must not be unspecified).
    pub public_ip: Option<IpAddr>,
    /// Verifies media tokens.
    pub token_key: MediaTokenKey,
    /// STUN/TURN servers handed to clients.
    pub ice: IceConfig,
    /// A room nobody is in closes after this long.
    pub idle_room_timeout: Duration,
    /// A participant from whom nothing arrived on the media path for this long is removed.
    pub no_media_timeout: Duration,
}

impl MediaConfig {
    /// A configuration with the default timeouts (idle room 5 minutes, no media 30 seconds)
    /// and no ICE servers.
    pub fn new(udp_bind: SocketAddr, token_key: MediaTokenKey) -> Self {
        MediaConfig {
            udp_bind,
            public_ip: None,
            token_key,
            ice: IceConfig::default(),
            idle_room_timeout: Duration::from_secs(300),
            no_media_timeout: Duration::from_secs(30),
        }
    }
}

/// Requests to the task that owns the core.
enum Command {
    Connect {
        reply: oneshot::Sender<(ConnId, mpsc::UnboundedReceiver<Option<ServerMessage>>)>,
    },
    Text {
        conn: ConnId,
        text: String,
    },
    Disconnect {
        conn: ConnId,
    },
    Stats {
        encounter: String,
        reply: oneshot::Sender<Option<RoomStats>>,
    },
    CloseRoom {
        encounter: String,
        reply: oneshot::Sender<()>,
    },
    ForwardDelay {
        reply: oneshot::Sender<DelayHistogram>,
    },
}

/// A running media server. Cloning it gives another handle to the same server; the server
/// stops when the last handle is dropped.
#[derive(Clone)]
pub struct MediaServer {
    inner: Arc<Handle>,
}

struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    udp_addr: SocketAddr,
    candidate_addr: SocketAddr,
    events: broadcast::Sender<RoomEvent>,
    metrics: Arc<Mutex<String>>,
}

impl MediaServer {
    /// Bind the UDP socket and start the server task (on the current tokio runtime).
    pub async fn start(config: MediaConfig) -> io::Result<MediaServer> {
        let socket = UdpSocket::bind(config.udp_bind).await?;
        let udp_addr = socket.local_addr()?;
        let ip = match config.public_ip {
            Some(ip) => ip,
            None if udp_addr.ip().is_unspecified() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the UDP socket is bound to an unspecified address: set public_ip to the address clients reach",
                ));
            }
            None => udp_addr.ip(),
        };
        let candidate_addr = SocketAddr::new(ip, udp_addr.port());
        let now = Instant::now();
        let sfu = Sfu::new(
            SfuConfig {
                candidate_addr,
                token_key: config.token_key,
                ice: config.ice,
                idle_room_timeout: config.idle_room_timeout,
                no_media_timeout: config.no_media_timeout,
            },
            now,
            SystemTime::now(),
        );
        let (commands, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let metrics = Arc::new(Mutex::new(String::new()));
        let udp = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let slot = if udp.gro_segments() > 1 {
            GRO_SLOT
        } else {
            DATAGRAM_MAX
        };
        let task = Driver {
            sfu,
            socket,
            udp,
            slot,
            recv_buf: vec![0; slot * RECV_BATCH],
            metas: [RecvMeta::default(); RECV_BATCH],
            sends: Vec::new(),
            send_buf: Vec::new(),
            commands: rx,
            conns: HashMap::new(),
            events: events.clone(),
            metrics: metrics.clone(),
            next_metrics: now,
        };
        tokio::spawn(task.run());
        Ok(MediaServer {
            inner: Arc::new(Handle {
                commands,
                udp_addr,
                candidate_addr,
                events,
                metrics,
            }),
        })
    }

    /// The signaling endpoint: `GET /media/signal` upgrades to a WebSocket.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/media/signal", get(signal))
            .with_state(self.clone())
    }

    /// The local address of the UDP socket.
    pub fn udp_addr(&self) -> SocketAddr {
        self.inner.udp_addr
    }

    /// The address advertised to clients as the server's ICE candidate.
    pub fn candidate_addr(&self) -> SocketAddr {
        self.inner.candidate_addr
    }

    /// Room events from now on (opened, participant joined/left, quality degraded/restored,
    /// closed). A receiver that falls more than 1024 events behind misses some.
    pub fn events(&self) -> broadcast::Receiver<RoomEvent> {
        self.inner.events.subscribe()
    }

    /// Send the server task a command that carries a reply channel, and wait for the reply;
    /// `None` once the task has stopped.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.inner.commands.send(command(reply)).ok()?;
        rx.await.ok()
    }

    /// Statistics of an open room.
    pub async fn stats(&self, encounter: &str) -> Option<RoomStats> {
        self.ask(|reply| Command::Stats {
            encounter: encounter.to_owned(),
            reply,
        })
        .await
        .flatten()
    }

    /// Forwarding delays since the server started: from a media packet's arrival at the host
    /// (the kernel's receive timestamp) to the send of each forwarded copy. Subtract an
    /// earlier copy ([`DelayHistogram::since`]) for a window.
    pub async fn forward_delay(&self) -> DelayHistogram {
        self.ask(|reply| Command::ForwardDelay { reply })
            .await
            .unwrap_or_default()
    }

    /// Prometheus text exposition of the server (refreshed every second).
    pub fn metrics_text(&self) -> String {
        self.inner
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The Encounter is finished: its participants are sent away, its room closes, and tokens
    /// for it are refused from now on.
    pub async fn close_room(&self, encounter: &str) {
        // A stopped server has no room left to close.
        let _ = self
            .ask(|reply| Command::CloseRoom {
                encounter: encounter.to_owned(),
                reply,
            })
            .await;
    }
}

/// `GET /media/signal`: the signaling WebSocket.
async fn signal(State(server): State<MediaServer>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_SIGNAL_BYTES)
        .on_upgrade(move |socket| run_socket(server, socket))
}

async fn run_socket(server: MediaServer, mut socket: WebSocket) {
    let Some((conn, mut outgoing)) = server.ask(|reply| Command::Connect { reply }).await else {
        return;
    };
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let _ = server.inner.commands.send(Command::Text { conn, text: text.as_str().to_owned() });
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = server.inner.commands.send(Command::Text { conn, text: String::new() });
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            out = outgoing.recv() => match out {
                Some(Some(msg)) => {
                    let Ok(text) = serde_json::to_string(&msg) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                // The core closed the connection (after its last message).
                Some(None) | None => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            },
        }
    }
    let _ = server.inner.commands.send(Command::Disconnect { conn });
}

/// The task that owns the core.
struct Driver {
    sfu: Sfu,
    socket: UdpSocket,
    /// Batched I/O on `socket`: `recvmmsg`, GRO and GSO where the kernel has them.
    udp: UdpSocketState,
    /// Bytes per receive slot.
    slot: usize,
    /// `RECV_BATCH` receive slots.
    recv_buf: Vec<u8>,
    metas: [RecvMeta; RECV_BATCH],
    /// Datagrams to send once the core has nothing more to say, with the arrival of the media
    /// each forwards.
    sends: Vec<(SocketAddr, Vec<u8>, Option<Instant>)>,
    /// A train of datagrams for one GSO send.
    send_buf: Vec<u8>,
    commands: mpsc::UnboundedReceiver<Command>,
    conns: HashMap<ConnId, mpsc::UnboundedSender<Option<ServerMessage>>>,
    events: broadcast::Sender<RoomEvent>,
    metrics: Arc<Mutex<String>>,
    next_metrics: Instant,
}

impl Driver {
    async fn run(mut self) {
        let mut timer = Box::pin(tokio::time::sleep_until(self.next_metrics.into()));
        loop {
            // Timers already due run at once. tokio's timer fires on millisecond ticks, and
            // str0m's pacer asks for a timeout at `now` after each packet it releases: through
            // the timer, each packet of a frame after the first would wait for the next tick.
            // A bounded number of rounds, so that the socket and the commands get their turn.
            for _ in 0..DUE_ROUNDS {
                let now = Instant::now();
                if self.sfu.poll_timeout() > now {
                    break;
                }
                self.sfu.handle_timeout(now);
            }
            self.flush().await;
            let now = Instant::now();
            if now >= self.next_metrics {
                self.next_metrics = now + METRICS_REFRESH;
                let text = self.sfu.metrics_text(now);
                if let Ok(mut m) = self.metrics.lock() {
                    *m = text;
                }
            }
            // One timer, moved only when the deadline changes, rather than a new one registered
            // on every turn.
            let deadline =
                tokio::time::Instant::from_std(self.sfu.poll_timeout().min(self.next_metrics));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                ready = self.socket.readable() => match ready {
                    Ok(()) => self.receive(),
                    Err(e) => debug!("udp socket: {e}"),
                },
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    // Every handle is gone: stop.
                    None => return,
                },
                () = &mut timer => {
                    self.sfu.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Read one batch of datagrams and hand each to the core.
    fn receive(&mut self) {
        let Driver {
            sfu,
            socket,
            udp,
            slot,
            recv_buf,
            metas,
            ..
        } = self;
        let mut slots: Vec<IoSliceMut<'_>> =
            recv_buf.chunks_mut(*slot).map(IoSliceMut::new).collect();
        let got = socket.try_io(Interest::READABLE, || {
            udp.recv(UdpSockRef::from(&*socket), &mut slots, metas)
        });
        drop(slots);
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // ICMP errors from a peer that went away surface here on some systems.
            Err(e) => {
                debug!("udp receive: {e}");
                return;
            }
        };
        let now = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        for (meta, buf) in metas.iter().take(n).zip(recv_buf.chunks(*slot)) {
            let Some(data) = buf.get(..meta.len) else {
                continue;
            };
            // The kernel's receive timestamp (wall clock) as an `Instant`: the time the
            // datagram waited in the socket counts as the server's.
            let received = meta
                .timestamp
                .and_then(|at| now.checked_sub(wall.saturating_sub(at)))
                .unwrap_or(now);
            // Datagrams the kernel coalesced (GRO) are `stride` bytes apart.
            for datagram in data.chunks(meta.stride.max(1)) {
                sfu.handle_udp(now, received, meta.addr, datagram);
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Connect { reply } => {
                let conn = self.sfu.connect();
                let (tx, rx) = mpsc::unbounded_channel();
                self.conns.insert(conn, tx);
                let _ = reply.send((conn, rx));
            }
            Command::Text { conn, text } => self.sfu.handle_text(now, conn, &text),
            Command::Disconnect { conn } => {
                self.conns.remove(&conn);
                self.sfu.disconnect(conn);
            }
            Command::Stats { encounter, reply } => {
                let _ = reply.send(self.sfu.room_stats(now, &encounter));
            }
            Command::CloseRoom { encounter, reply } => {
                self.sfu.close_room(now, &encounter);
                let _ = reply.send(());
            }
            Command::ForwardDelay { reply } => {
                let _ = reply.send(self.sfu.forward_delay().clone());
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(out) = self.sfu.poll_output() {
            match out {
                Output::Transmit {
                    destination,
                    contents,
                    forwards,
                } => self.sends.push((destination, contents, forwards)),
                Output::Signal { conn, msg } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.send(Some(msg));
                    }
                }
                Output::CloseSignal { conn } => {
                    if let Some(tx) = self.conns.remove(&conn) {
                        let _ = tx.send(None);
                    }
                }
                Output::Event(e) => {
                    // No subscriber is fine: nobody asked.
                    if self.events.send(e).is_err() {
                        debug!("room event without subscribers");
                    }
                }
            }
        }
        self.send_all().await;
    }

    /// Send the queued datagrams. Datagrams to one peer keep their order (datagrams to
    /// different peers need none); a run of them of one size (the last may be shorter) leaves
    /// in one system call where the kernel can segment it (UDP GSO).
    async fn send_all(&mut self) {
        if self.sends.is_empty() {
            return;
        }
        let mut sends = std::mem::take(&mut self.sends);
        sends.sort_by_key(|(destination, _, _)| *destination);
        let max_segments = self.udp.max_gso_segments().max(1);
        let mut rest = sends.as_slice();
        while let Some(((destination, first, _), _)) = rest.split_first() {
            let size = first.len();
            let mut bytes = size;
            let mut run = 1;
            while let Some((d, next, _)) = rest.get(run) {
                let previous_full = rest.get(run - 1).is_some_and(|(_, p, _)| p.len() == size);
                if d != destination
                    || !previous_full
                    || next.len() > size
                    || next.is_empty()
                    || run >= max_segments
                    || bytes + next.len() > GSO_MAX_BYTES
                {
                    break;
                }
                bytes += next.len();
                run += 1;
            }
            let (train, after) = rest.split_at(run);
            rest = after;
            if run == 1 {
                self.send(*destination, first, None).await;
            } else {
                self.send_buf.clear();
                for (_, datagram, _) in train {
                    self.send_buf.extend_from_slice(datagram);
                }
                let contents = std::mem::take(&mut self.send_buf);
                if !self.send(*destination, &contents, Some(size)).await {
                    // The kernel refused the train (a device without segmentation offload
                    // turns it off for later sends): send its datagrams one by one.
                    for (_, datagram, _) in train {
                        self.send(*destination, datagram, None).await;
                    }
                }
                self.send_buf = contents;
            }
            let sent = Instant::now();
            for at in train.iter().filter_map(|(_, _, forwards)| *forwards) {
                self.sfu
                    .record_forward_delay(sent.saturating_duration_since(at));
            }
        }
        sends.clear();
        self.sends = sends;
    }

    /// Send one datagram, or a train of `segment_size` datagrams, waiting while the socket's
    /// buffer is full. False when the kernel refused it. A failure is logged without the
    /// destination: a participant's address is as personal as its id.
    async fn send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> bool {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        loop {
            // Try without waiting first: the socket is almost always writable.
            match self.socket.try_io(Interest::WRITABLE, || {
                self.udp.try_send(UdpSockRef::from(&self.socket), &transmit)
            }) {
                Ok(()) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.socket.writable().await {
                        debug!("udp send: {e}");
                        return false;
                    }
                }
                Err(e) => {
                    debug!("udp send: {e}");
                    return false;
                }
            }
        }
    }
}
