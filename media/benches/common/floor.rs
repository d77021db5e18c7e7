//! The floor under any SFU on this machine: what forwarding one SRTP packet costs when nothing
//! is done but the work no forwarding path can skip. Datagrams are received in batches (as the
//! server's driver receives them); each one's SRTP authentication tag is checked and its payload
//! decrypted, then encrypted and tagged again with the receiver's keys (AES_CM_128_HMAC_SHA1_80,
//! the profile browsers negotiate, with RustCrypto's AES-CTR and HMAC-SHA1); and it is
//! sent on. No RTP header is rewritten, no RTCP, no bandwidth estimate, no pacing, no timers.
//!
//! Only the forwarding is counted (the thread's CPU time): a batch of packets is put in the
//! forwarder's socket before, and its receiver's socket drained after. So the forwarder never
//! waits for a packet and never wakes a receiver, as a real one would: the figure is a floor.
//!
//! Shared by the `floor` bench, which reports it alone, and the `sfu` bench, which measures it
//! first as the baseline of its run.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use aes::cipher::{KeyIvInit as _, StreamCipher as _};
use anyhow::Context as _;
use hmac::{Hmac, Mac as _};
use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSockRef, UdpSocketState};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;
type HmacSha1 = Hmac<sha1::Sha1>;

/// An RTP header (12 bytes) and a video payload of the `sfu` bench's size.
const PACKET: usize = 12 + 1100;
/// SRTP's 80-bit authentication tag.
const TAG: usize = 10;
/// A forwarded datagram's size.
pub const DATAGRAM: usize = PACKET + TAG;

/// One direction's SRTP keys (session keys, as derived from DTLS).
struct Srtp {
    key: [u8; 16],
    salt: [u8; 14],
    auth: [u8; 20],
}

impl Srtp {
    fn new(seed: u8) -> Self {
        Self {
            key: [seed; 16],
            salt: [seed.wrapping_add(1); 14],
            auth: [seed.wrapping_add(2); 20],
        }
    }

    /// RFC 3711 §4.1.1: the counter block of packet `index` of `ssrc`.
    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        iv
    }

    fn tag(&self, packet: &[u8], roc: u32) -> [u8; TAG] {
        let mut mac = HmacSha1::new_from_slice(&self.auth).expect("HMAC takes any key length");
        mac.update(packet);
        mac.update(&roc.to_be_bytes());
        let mut tag = [0u8; TAG];
        tag.copy_from_slice(&mac.finalize().into_bytes()[..TAG]);
        tag
    }

    /// Encrypts the payload of the packet (RTP header, payload) that ends `out` from `start` on,
    /// in place, and appends its tag.
    fn protect(&self, out: &mut Vec<u8>, start: usize, seq: u16) {
        let iv = self.iv(0x1234_5678, u64::from(seq));
        Aes128Ctr::new(&self.key.into(), &iv.into()).apply_keystream(&mut out[start + 12..]);
        let tag = self.tag(&out[start..], 0);
        out.extend_from_slice(&tag);
    }

    /// Checks the tag of `packet` and decrypts its payload in place; its length without the tag.
    fn unprotect(&self, packet: &mut [u8], seq: u16) -> Option<usize> {
        let body = packet.len().checked_sub(TAG)?;
        if self.tag(&packet[..body], 0) != packet[body..] {
            return None;
        }
        let iv = self.iv(0x1234_5678, u64::from(seq));
        Aes128Ctr::new(&self.key.into(), &iv.into()).apply_keystream(&mut packet[12..body]);
        Some(body)
    }
}

/// Sends `contents` to `destination` in one call; with `segment_size`, the kernel cuts it into
/// datagrams of that size (GSO).
fn send(
    state: &UdpSocketState,
    socket: &UdpSocket,
    destination: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) -> std::io::Result<()> {
    let transmit = Transmit {
        destination,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    };
    state.try_send(UdpSockRef::from(socket), &transmit)
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// What forwarding cost, per packet.
pub struct Floor {
    /// Packets forwarded (the batches' sizes round the number asked for up).
    pub forwarded: u64,
    /// CPU time per forwarded packet: receive, check, decrypt, encrypt, tag, send.
    pub per_packet: Duration,
    /// Of which SRTP (check, decrypt, encrypt, tag).
    pub srtp: Duration,
    /// Packets each receive call returned, on average.
    pub per_receive: f64,
}

impl Floor {
    /// One-to-one visits per core if forwarding were all an SFU did, at the `sfu` bench's
    /// lightest load (`--pause-unneeded`): per visit, each side's audio (50 packets/s) and top
    /// video layer (150 packets/s) are received and forwarded, 400 packets a second.
    pub fn visits_per_core(&self) -> f64 {
        1.0 / (400.0 * self.per_packet.as_secs_f64())
    }
}

/// Forwards `packets` packets over loopback; with `gso`, each received batch is sent in one
/// call, cut into datagrams by the kernel (UDP GSO): the best case, every packet of a batch
/// going to the same receiver with the same size, where the server sends one call per packet.
pub fn measure(packets: u64, gso: bool) -> anyhow::Result<Floor> {
    let forwarder = UdpSocket::bind("127.0.0.1:0")?;
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let feeder = UdpSocket::bind("127.0.0.1:0")?;
    for socket in [&forwarder, &sink] {
        socket.set_nonblocking(true)?;
    }
    let (to_forwarder, to_sink) = (forwarder.local_addr()?, sink.local_addr()?);
    let state = UdpSocketState::new(UdpSockRef::from(&forwarder))?;
    anyhow::ensure!(
        !gso || state.max_gso_segments() >= BATCH_SIZE,
        "this system sends at most {} datagrams per call (no UDP GSO)",
        state.max_gso_segments()
    );

    let (from_sender, to_receiver) = (Srtp::new(1), Srtp::new(7));
    let slot = 2048;
    let mut recv_buf = vec![0u8; slot * BATCH_SIZE];
    let mut metas = vec![RecvMeta::default(); BATCH_SIZE];
    let mut out = Vec::with_capacity(slot * BATCH_SIZE);
    let mut drain = [0u8; 2048];
    let (mut forwarded, mut delivered, mut refused, mut receives) = (0u64, 0u64, 0u64, 0u64);
    let (mut cpu, mut crypto) = (Duration::ZERO, Duration::ZERO);
    let mut seq = 0u16;
    while forwarded < packets {
        // A batch from the sender, waiting in the forwarder's socket (not counted).
        for _ in 0..BATCH_SIZE {
            let mut packet = vec![0x80, 96];
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.resize(PACKET, 0xab);
            from_sender.protect(&mut packet, 0, seq);
            feeder.send_to(&packet, to_forwarder)?;
            seq = seq.wrapping_add(1);
        }
        // Forwarding it (counted): the forwarder never waits, and wakes nobody.
        let start = thread_cpu();
        loop {
            let mut slots: Vec<IoSliceMut<'_>> =
                recv_buf.chunks_mut(slot).map(IoSliceMut::new).collect();
            let n = match state.recv(UdpSockRef::from(&forwarder), &mut slots, &mut metas) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("receive"),
            };
            drop(slots);
            receives += 1;
            for (meta, buf) in metas.iter().take(n).zip(recv_buf.chunks_mut(slot)) {
                let packet = &mut buf[..meta.len];
                let seq = u16::from_be_bytes([packet[2], packet[3]]);
                let at = Instant::now();
                let Some(body) = from_sender.unprotect(packet, seq) else {
                    refused += 1;
                    continue;
                };
                if !gso {
                    out.clear();
                }
                let from = out.len();
                out.extend_from_slice(&packet[..body]);
                to_receiver.protect(&mut out, from, seq);
                crypto += at.elapsed();
                forwarded += 1;
                if !gso {
                    send(&state, &forwarder, to_sink, &out, None)?;
                }
            }
            if gso && !out.is_empty() {
                // The whole batch in one call, cut into packets by the kernel.
                send(&state, &forwarder, to_sink, &out, Some(DATAGRAM))?;
                out.clear();
            }
        }
        cpu += thread_cpu().saturating_sub(start);
        // The receiver's side (not counted): each packet arrives as a datagram of its own.
        while let Ok((len, _)) = sink.recv_from(&mut drain) {
            anyhow::ensure!(len == DATAGRAM, "a datagram of {len} bytes arrived");
            delivered += 1;
        }
    }
    anyhow::ensure!(refused == 0, "{refused} packets failed their SRTP check");
    anyhow::ensure!(
        delivered == forwarded,
        "{forwarded} packets forwarded, {delivered} delivered"
    );

    Ok(Floor {
        forwarded,
        per_packet: cpu / u32::try_from(forwarded).unwrap_or(u32::MAX),
        srtp: crypto / u32::try_from(forwarded).unwrap_or(u32::MAX),
        per_receive: forwarded as f64 / receives as f64,
    })
}
