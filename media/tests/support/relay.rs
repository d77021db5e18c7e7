//! A loopback UDP relay that stands between one client and a server and shapes what passes:
//! a rate limit with a bounded queue (a bottleneck link, as on a patient's weak uplink or
//! congested Wi-Fi) and random loss, each direction on its own.
//!
//! The client is pointed at [`Relay::addr`] instead of the server (its copy of the server's ICE
//! candidate is rewritten, see [`rewrite_candidate`]); the server sees the relay's upstream
//! socket as the client's address. Packets are real UDP datagrams, so ICE, DTLS and SRTP run
//! through the relay unchanged; only their timing and loss are changed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// How one direction of the relay treats packets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    /// Link rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Packets waiting longer than this for the link are dropped (drop-tail on the delay a
    /// router's buffer would hold). Ignored when unlimited.
    pub max_queue: Duration,
    /// Probability that a packet is dropped, independent of the rate limit.
    pub loss: f64,
}

impl Shape {
    /// No limit, no loss.
    pub fn open() -> Self {
        Self::default()
    }

    /// A bottleneck of `rate_bps` with a 200 ms buffer, like a home router's.
    pub fn limited(rate_bps: u64) -> Self {
        Self {
            rate_bps: Some(rate_bps),
            max_queue: Duration::from_millis(200),
            loss: 0.0,
        }
    }
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Packets passed on.
    pub forwarded: u64,
    /// Bytes passed on.
    pub forwarded_bytes: u64,
    /// Packets dropped because the queue was full.
    pub dropped_queue: u64,
    /// Packets dropped at random.
    pub dropped_loss: u64,
}

struct Direction {
    shape: Shape,
    /// When the link is busy until (the departure time of the last queued packet).
    busy_until: Instant,
    queue: VecDeque<(Instant, Vec<u8>)>,
    counters: Counters,
}

impl Direction {
    fn new() -> Self {
        Self {
            shape: Shape::open(),
            busy_until: Instant::now(),
            queue: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Decides when `packet` leaves, or drops it. Serialization on a link of the given rate:
    /// each packet leaves after the previous one plus its own transmission time.
    fn admit(&mut self, now: Instant, packet: Vec<u8>) -> bool {
        if self.shape.loss > 0.0 && rand::random::<f64>() < self.shape.loss {
            self.counters.dropped_loss += 1;
            return false;
        }
        let departure = match self.shape.rate_bps {
            None => now,
            Some(rate) => {
                let start = self.busy_until.max(now);
                if start.duration_since(now) > self.shape.max_queue {
                    self.counters.dropped_queue += 1;
                    return false;
                }
                // 28 bytes of IPv4 + UDP header count against the link too.
                let bits = (packet.len() as u64 + 28) * 8;
                let departure = start + Duration::from_nanos(bits * 1_000_000_000 / rate.max(1));
                self.busy_until = departure;
                departure
            }
        };
        self.queue.push_back((departure, packet));
        true
    }
}

struct State {
    /// Client → server.
    up: Direction,
    /// Server → client.
    down: Direction,
    /// Where the client sends from (learned from its first packet).
    client: Option<SocketAddr>,
}

/// A running relay; dropping it stops its tasks.
pub struct Relay {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on `127.0.0.1` forwarding to `server`.
    pub async fn start(server: SocketAddr) -> std::io::Result<Self> {
        let ip = server.ip();
        let client_side = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
        let server_side = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
        server_side.connect(server).await?;
        let addr = client_side.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            up: Direction::new(),
            down: Direction::new(),
            client: None,
        }));
        let up_ready = Arc::new(Notify::new());
        let down_ready = Arc::new(Notify::new());
        let mut tasks = Vec::new();

        // Client → relay: remember the client, queue towards the server.
        tasks.push(tokio::spawn({
            let (sock, state, ready) = (client_side.clone(), state.clone(), up_ready.clone());
            async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    let admitted = match state.lock() {
                        Ok(mut s) => {
                            s.client = Some(from);
                            s.up.admit(Instant::now(), buf[..n].to_vec())
                        }
                        Err(_) => return,
                    };
                    if admitted {
                        ready.notify_one();
                    }
                }
            }
        }));
        // Server → relay: queue towards the client.
        tasks.push(tokio::spawn({
            let (sock, state, ready) = (server_side.clone(), state.clone(), down_ready.clone());
            async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(n) = sock.recv(&mut buf).await {
                    let admitted = match state.lock() {
                        Ok(mut s) => s.down.admit(Instant::now(), buf[..n].to_vec()),
                        Err(_) => return,
                    };
                    if admitted {
                        ready.notify_one();
                    }
                }
            }
        }));
        // The two links: send each queued packet at its departure time.
        tasks.push(tokio::spawn(drain(state.clone(), up_ready, true, {
            let sock = server_side.clone();
            move |packet: Vec<u8>, _client: Option<SocketAddr>| {
                let _ = sock.try_send(&packet);
            }
        })));
        tasks.push(tokio::spawn(drain(state.clone(), down_ready, false, {
            let sock = client_side.clone();
            move |packet: Vec<u8>, client: Option<SocketAddr>| {
                if let Some(client) = client {
                    let _ = sock.try_send_to(&packet, client);
                }
            }
        })));
        Ok(Self { addr, state, tasks })
    }

    /// The address the client should send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shapes the server → client direction (the client's downlink).
    pub fn set_downlink(&self, shape: Shape) {
        if let Ok(mut s) = self.state.lock() {
            s.down.shape = shape;
        }
    }

    /// Shapes the client → server direction (the client's uplink).
    pub fn set_uplink(&self, shape: Shape) {
        if let Ok(mut s) = self.state.lock() {
            s.up.shape = shape;
        }
    }

    /// Counters of (uplink, downlink).
    pub fn counters(&self) -> (Counters, Counters) {
        self.state
            .lock()
            .map(|s| (s.up.counters, s.down.counters))
            .unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn drain(
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
    up: bool,
    send: impl Fn(Vec<u8>, Option<SocketAddr>),
) {
    loop {
        let next = {
            let Ok(mut s) = state.lock() else { return };
            let client = s.client;
            let dir = if up { &mut s.up } else { &mut s.down };
            match dir.queue.front() {
                Some((at, _)) if *at <= Instant::now() => match dir.queue.pop_front() {
                    Some((_, packet)) => {
                        dir.counters.forwarded += 1;
                        dir.counters.forwarded_bytes += packet.len() as u64;
                        Err((packet, client))
                    }
                    None => Ok(None),
                },
                Some((at, _)) => Ok(Some(*at)),
                None => Ok(None),
            }
        };
        match next {
            Err((packet, client)) => send(packet, client),
            Ok(Some(at)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = ready.notified() => {}
                }
            }
            Ok(None) => ready.notified().await,
        }
    }
}

/// Rewrites the host candidate `server` in an SDP (or a candidate line) to `relay`, so the
/// client sends to the relay instead.
pub fn rewrite_candidate(sdp: &str, server: SocketAddr, relay: SocketAddr) -> String {
    sdp.replace(
        &format!(" {} {} typ ", server.ip(), server.port()),
        &format!(" {} {} typ ", relay.ip(), relay.port()),
    )
}
