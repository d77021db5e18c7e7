//! Per-receiver forwarding of one video (or audio) track: which simulcast layer goes out, when a
//! switch happens, and the rewriting that makes the layers look like one stream.
//!
//! Nothing here reads an RTP payload. The payload may be end-to-end encrypted (SFrame, insertable
//! streams), so the only inputs are the RTP header (sequence number, timestamp, marker bit), the
//! payload's length, and header extensions (frame marking, when the sender negotiated it).
//!
//! ## When to switch
//!
//! A receiver can only start decoding a new layer at a keyframe. Without parsing the payload we
//! cannot see the keyframe bit in the codec header, so a switch goes like this:
//!
//! 1. Ask the sender for a keyframe on the target layer (PLI, sent by the caller when
//!    [`Forwarder::set_target`] says so), and keep forwarding the current layer meanwhile, so the
//!    receiver never sees a gap while it waits.
//! 2. Buffer the target layer's frame in progress (one frame: packets with one RTP timestamp,
//!    ended by the marker bit) and decide when it is complete:
//!    - if the sender negotiated frame marking (draft-ietf-avtext-framemarking), its
//!      "independent" bit says it exactly;
//!    - otherwise a frame that arrives after the request and is much larger than the layer's
//!      recent frames is the keyframe: keyframes are several times the size of delta frames for
//!      every video codec, and the size survives encryption (SFrame adds a few bytes).
//!    - a layer that has just (re)started sends a keyframe first, so its first frame counts.
//! 3. Flush that frame and forward the target layer from then on.
//!
//! A wrong guess costs a few undecodable frames; the receiver then sends its own PLI, which the
//! caller forwards to the layer being sent, and the stream repairs itself. If no keyframe shows
//! up within [`FORCE_SWITCH_AFTER`] (a sender that ignores PLIs), the switch happens at the next
//! frame boundary anyway for the same reason. Switching off (to audio only) is immediate.
//!
//! ## Rewriting
//!
//! Every layer has its own SSRC, sequence numbers and RTP timestamps. The receiver gets one SSRC
//! (the m-line's own, chosen by str0m), and on each switch the forwarder picks offsets so that
//! sequence numbers continue at the next number and timestamps advance by the wall time elapsed
//! since the last forwarded packet. Within one layer the offsets stay fixed, so gaps from loss
//! stay gaps (and the receiver's NACKs mean something) and reordering stays reordering.

use std::time::{Duration, Instant};

/// Ask again for a keyframe when none came within this long.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(500);
/// Switch at the next frame boundary when no keyframe was seen within this long.
pub const FORCE_SWITCH_AFTER: Duration = Duration::from_millis(2500);
/// A frame at least this many times the layer's average frame size is taken for a keyframe.
const KEYFRAME_SIZE_RATIO: f64 = 2.5;
/// Frame sizes kept per layer for the keyframe size test.
const SIZE_HISTORY: usize = 16;
/// A layer silent for this long has restarted (paused by its sender, or lost) when it resumes.
const LAYER_RESTART_GAP: Duration = Duration::from_millis(1000);
/// At most this many packets are buffered for one frame of a pending switch (a 4K keyframe is
/// ~300 packets; beyond this the frame is dropped and the next one considered).
const MAX_BUFFERED: usize = 400;

/// The frame marking extension's "start of frame" and "independent frame" bits, in the first
/// byte of the 4-byte form str0m exposes (draft-ietf-avtext-framemarking-07 §3.1).
const FRAME_MARK_START: u32 = 0x80 << 24;
const FRAME_MARK_INDEPENDENT: u32 = 0x20 << 24;

/// What the forwarder needs to know of an incoming packet (all from the RTP header).
#[derive(Clone, Copy, Debug)]
pub struct PacketMeta {
    /// Extended sequence number (no wrap).
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    /// Marker bit: for video, the last packet of a frame.
    pub marker: bool,
    /// Payload length in bytes.
    pub len: usize,
    /// Frame marking extension, if present.
    pub frame_mark: Option<u32>,
    /// Arrival time.
    pub at: Instant,
}

/// Frame statistics of one incoming layer, kept for all layers whether forwarded or not.
#[derive(Clone, Debug, Default)]
pub struct LayerFrames {
    cur_ts: Option<u32>,
    cur_bytes: usize,
    /// Sizes of the last frames, as a ring.
    sizes: [u32; SIZE_HISTORY],
    frames: u32,
    last_at: Option<Instant>,
    /// Frames seen since the layer (re)started.
    since_start: u32,
    /// Whether the last packet ended a frame (so the next one starts a whole frame).
    last_marker: bool,
}

impl LayerFrames {
    /// Account a packet of this layer. Returns true when the packet restarts the layer
    /// after a silence.
    pub fn observe(&mut self, p: &PacketMeta) -> bool {
        let restarted = self
            .last_at
            .is_some_and(|last| p.at.saturating_duration_since(last) >= LAYER_RESTART_GAP);
        if restarted {
            self.since_start = 0;
            self.cur_ts = None;
            self.cur_bytes = 0;
        }
        self.last_at = Some(p.at);
        if self.cur_ts != Some(p.ts) {
            self.cur_ts = Some(p.ts);
            self.cur_bytes = 0;
        }
        self.cur_bytes += p.len;
        self.last_marker = p.marker;
        if p.marker {
            let slot = self.frames as usize % SIZE_HISTORY;
            self.sizes[slot] = u32::try_from(self.cur_bytes).unwrap_or(u32::MAX);
            self.frames = self.frames.saturating_add(1);
            self.since_start = self.since_start.saturating_add(1);
        }
        restarted
    }

    /// Whether the layer has sent steadily for `d` (at least `frames` frames since its last
    /// start, and nothing missing lately).
    pub fn steady(&self, frames: u32, now: Instant) -> bool {
        self.since_start >= frames
            && self
                .last_at
                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_RESTART_GAP)
    }

    /// The average frame size, once a few frames were seen.
    ///
    /// The median of the last frames, not the mean: keyframes (the stream's first, and every
    /// one a PLI asked for) would pull a mean up until the next keyframe no longer stands out
    /// against it, while delta frames stay the median as long as they are most frames.
    fn average(&self) -> Option<f64> {
        let n = (self.frames as usize).min(SIZE_HISTORY);
        if n < 5 {
            return None;
        }
        let mut sizes = self.sizes;
        let recent = &mut sizes[..n];
        recent.sort_unstable();
        Some(f64::from(recent[n / 2]))
    }
}

/// A switch waiting for a keyframe on the target layer.
#[derive(Debug)]
struct Pending<P> {
    target: usize,
    requested_at: Instant,
    last_request: Instant,
    /// The target layer's frame in progress, with the packets themselves (cheap clones).
    frame: Vec<(PacketMeta, P)>,
    frame_ts: Option<u32>,
    frame_bytes: usize,
    frame_independent: bool,
    /// Whether the frame in the buffer started after the previous one ended (so it is whole).
    frame_whole: bool,
    prev_marker: bool,
    /// The average frame size of the target layer when the switch began (from [`LayerFrames`]).
    baseline: Option<f64>,
    /// Frames the target layer had sent since its start when the switch began.
    fresh_layer: bool,
}

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<P> {
    /// Drop it (not the layer being sent, or the video is off).
    Drop,
    /// Forward it, rewritten.
    Forward(Rewritten),
    /// Hold it: it belongs to a frame that may complete a switch.
    Hold,
    /// The switch completed: forward the held frame (in order), rewritten, then this packet.
    Flush(Vec<(Rewritten, P)>),
}

/// A packet's new header values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// Outgoing extended sequence number.
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub ts: u32,
    /// The sequence number of the incoming packet (to find it in the held frame).
    pub in_seq: u64,
}

/// Sequence/timestamp mapping from the layer being sent to the receiver's stream.
#[derive(Debug, Default)]
struct Rewriter {
    seq_offset: u64,
    ts_offset: u32,
    /// Highest outgoing sequence number sent, and the timestamp and time of the last packet.
    last_seq: Option<u64>,
    last_ts: u32,
    last_at: Option<Instant>,
    /// First incoming sequence number of the current layer: older packets (late retransmissions
    /// from before the switch) are dropped.
    first_in_seq: u64,
}

impl Rewriter {
    /// Start mapping a new layer whose first packet to send is `first`.
    fn rebase(&mut self, first: &PacketMeta, clock_rate: u32) {
        match self.last_seq {
            None => {
                // The first layer ever: keep its 16-bit numbers (random already, RFC 3550), but
                // in the first cycle of the receiver's extended numbering. SRTP authenticates
                // each packet under its index, the extended number (RFC 3711 §3.3.1), and a
                // receiver takes a new stream to start in cycle 0: a sender whose numbers
                // wrapped before this receiver subscribed would otherwise be forwarded in a
                // cycle the receiver cannot know, and every packet would fail authentication.
                self.seq_offset = (first.seq & 0xFFFF).wrapping_sub(first.seq);
                self.ts_offset = 0;
            }
            Some(last_seq) => {
                let next = last_seq.wrapping_add(1);
                self.seq_offset = next.wrapping_sub(first.seq);
                let elapsed = self
                    .last_at
                    .map(|at| first.at.saturating_duration_since(at))
                    .unwrap_or_default();
                let ticks = (elapsed.as_secs_f64() * f64::from(clock_rate)) as u32;
                let next_ts = self.last_ts.wrapping_add(ticks.max(1));
                self.ts_offset = next_ts.wrapping_sub(first.ts);
            }
        }
        self.first_in_seq = first.seq;
    }

    fn map(&mut self, p: &PacketMeta) -> Option<Rewritten> {
        if p.seq < self.first_in_seq {
            return None;
        }
        let seq = p.seq.wrapping_add(self.seq_offset);
        let ts = p.ts.wrapping_add(self.ts_offset);
        if self.last_seq.is_none_or(|last| seq > last) {
            self.last_seq = Some(seq);
            self.last_ts = ts;
            self.last_at = Some(p.at);
        }
        Some(Rewritten {
            seq,
            ts,
            in_seq: p.seq,
        })
    }
}

/// The forwarding state of one track towards one receiver.
#[derive(Debug)]
pub struct Forwarder<P> {
    clock_rate: u32,
    /// The layer being sent (index into the sender's layers, low to high).
    current: Option<usize>,
    pending: Option<Pending<P>>,
    rewriter: Rewriter,
    /// Whether `current` has had its first packet mapped (the rewriter is based on it).
    based: bool,
    /// Keyframe requests made for switches (for stats and tests).
    pub keyframe_requests: u64,
    /// Layer switches completed.
    pub switches: u64,
}

/// What the caller must do after [`Forwarder::set_target`] or [`Forwarder::poll_request`].
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Nothing.
    None,
    /// Send a PLI for this layer to the sender.
    Keyframe(usize),
}

impl<P: Clone> Forwarder<P> {
    /// A forwarder for a track with this RTP clock rate; it sends nothing until a target is set.
    pub fn new(clock_rate: u32) -> Self {
        Forwarder {
            clock_rate,
            current: None,
            pending: None,
            rewriter: Rewriter::default(),
            based: false,
            keyframe_requests: 0,
            switches: 0,
        }
    }

    /// The layer being sent.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// The layer being sent, or the one a pending switch goes to.
    pub fn target(&self) -> Option<usize> {
        match &self.pending {
            Some(p) => Some(p.target),
            None => self.current,
        }
    }

    /// Choose the layer to send. `frames` is the target layer's frame statistics.
    pub fn set_target(
        &mut self,
        target: Option<usize>,
        frames: Option<&LayerFrames>,
        now: Instant,
    ) -> Request {
        if target == self.target() {
            return Request::None;
        }
        let Some(target) = target else {
            // Off is immediate: nothing to wait for.
            self.pending = None;
            if self.current.is_some() {
                self.switches += 1;
            }
            self.current = None;
            return Request::None;
        };
        if Some(target) == self.current {
            // Back to the layer being sent: cancel the switch.
            self.pending = None;
            return Request::None;
        }
        self.pending = Some(Pending {
            target,
            requested_at: now,
            last_request: now,
            frame: Vec::new(),
            frame_ts: None,
            frame_bytes: 0,
            frame_independent: false,
            frame_whole: false,
            // A layer that sent nothing yet starts with a whole frame.
            prev_marker: frames.is_none_or(|f| f.last_marker || f.last_at.is_none()),
            baseline: frames.and_then(LayerFrames::average),
            fresh_layer: frames.is_none_or(|f| f.since_start == 0),
        });
        self.keyframe_requests += 1;
        Request::Keyframe(target)
    }

    /// Repeat a keyframe request that went unanswered.
    pub fn poll_request(&mut self, now: Instant) -> Request {
        let Some(p) = &mut self.pending else {
            return Request::None;
        };
        if now.saturating_duration_since(p.last_request) >= KEYFRAME_RETRY {
            p.last_request = now;
            self.keyframe_requests += 1;
            return Request::Keyframe(p.target);
        }
        Request::None
    }

    /// Decide about a packet of `layer`. `frames` are that layer's statistics *before* this
    /// packet was observed (so a keyframe does not raise its own baseline).
    pub fn on_packet(
        &mut self,
        layer: usize,
        p: &PacketMeta,
        packet: &P,
        layer_restarted: bool,
    ) -> Decision<P> {
        if let Some(pending) = &mut self.pending
            && pending.target == layer
        {
            if layer_restarted {
                pending.fresh_layer = true;
                pending.prev_marker = true;
            }
            if pending.frame_ts != Some(p.ts) {
                // A new frame: it is whole if the previous packet ended a frame (no packet of
                // its start is missing, as far as we can see).
                pending.frame_whole = pending.prev_marker;
                pending.frame.clear();
                pending.frame_ts = Some(p.ts);
                pending.frame_bytes = 0;
                pending.frame_independent = false;
            }
            pending.prev_marker = p.marker;
            if let Some(mark) = p.frame_mark
                && mark & FRAME_MARK_START != 0
            {
                pending.frame_whole = true;
                pending.frame_independent = mark & FRAME_MARK_INDEPENDENT != 0;
            }
            if pending.frame.len() >= MAX_BUFFERED {
                pending.frame.clear();
                pending.frame_whole = false;
                return Decision::Drop;
            }
            pending.frame.push((*p, packet.clone()));
            pending.frame_bytes += p.len;
            if !p.marker {
                // The held packet is not sent yet; the current layer goes on meanwhile.
                return Decision::Hold;
            }
            let after_request = pending
                .frame
                .first()
                .is_some_and(|(f, _)| f.at >= pending.requested_at);
            let big = pending
                .baseline
                .is_some_and(|avg| pending.frame_bytes as f64 >= avg * KEYFRAME_SIZE_RATIO);
            let waited = p.at.saturating_duration_since(pending.requested_at);
            let keyframe = pending.frame_independent
                || (after_request && (big || pending.fresh_layer))
                || waited >= FORCE_SWITCH_AFTER;
            if !(keyframe && pending.frame_whole) {
                pending.frame.clear();
                return Decision::Hold;
            }
            let frame = std::mem::take(&mut pending.frame);
            self.pending = None;
            self.current = Some(layer);
            self.switches += 1;
            let Some((first, _)) = frame.first() else {
                return Decision::Drop;
            };
            self.rewriter.rebase(first, self.clock_rate);
            self.based = true;
            let out = frame
                .into_iter()
                .filter_map(|(f, packet)| self.rewriter.map(&f).map(|r| (r, packet)))
                .collect();
            return Decision::Flush(out);
        }
        if self.current != Some(layer) {
            return Decision::Drop;
        }
        // A restarted layer (new SSRC, or back after a silence) may number its packets anew:
        // map it like a switch, so the receiver's sequence numbers still run on.
        if !self.based || layer_restarted {
            self.rewriter.rebase(p, self.clock_rate);
            self.based = true;
        }
        match self.rewriter.map(p) {
            Some(r) => Decision::Forward(r),
            None => Decision::Drop,
        }
    }

    /// Start forwarding at once (audio, and a video track's only layer): no keyframe wait.
    pub fn set_immediate(&mut self, layer: usize) {
        if self.current != Some(layer) {
            self.current = Some(layer);
            self.pending = None;
            self.based = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(at: Instant, seq: u64, ts: u32, marker: bool, len: usize) -> PacketMeta {
        PacketMeta {
            seq,
            ts,
            marker,
            len,
            frame_mark: None,
            at,
        }
    }

    /// Feeds `n` frames of `size` bytes (2 packets each) of one layer; returns the decisions.
    struct Layer {
        seq: u64,
        ts: u32,
        frames: LayerFrames,
    }

    impl Layer {
        fn frame(
            &mut self,
            f: &mut Forwarder<()>,
            idx: usize,
            at: Instant,
            size: usize,
        ) -> Vec<Decision<()>> {
            let mut out = Vec::new();
            for i in 0..2 {
                let p = pkt(at, self.seq, self.ts, i == 1, size / 2);
                let restarted = self.frames.observe(&p);
                out.push(f.on_packet(idx, &p, &(), restarted));
                self.seq += 1;
            }
            self.ts = self.ts.wrapping_add(3000);
            out
        }
    }

    #[test]
    fn switch_waits_for_a_large_frame_and_keeps_numbers_continuous() {
        let t0 = Instant::now();
        let mut f: Forwarder<()> = Forwarder::new(90_000);
        let mut low = Layer {
            seq: 100,
            ts: 1_000,
            frames: LayerFrames::default(),
        };
        let mut high = Layer {
            seq: 50_000,
            ts: 7_000_000,
            frames: LayerFrames::default(),
        };
        f.set_immediate(0);
        let mut last = None;
        for i in 0..10 {
            let at = t0 + Duration::from_millis(33 * i);
            for d in low.frame(&mut f, 0, at, 1000) {
                if let Decision::Forward(r) = d {
                    last = Some(r);
                }
            }
            high.frame(&mut f, 1, at, 4000);
        }
        let at = t0 + Duration::from_millis(330);
        assert_eq!(
            f.set_target(Some(1), Some(&high.frames), at),
            Request::Keyframe(1)
        );
        // Delta frames of the high layer do not switch; the low layer keeps flowing.
        for i in 10..14 {
            let at = t0 + Duration::from_millis(33 * i);
            assert!(
                high.frame(&mut f, 1, at, 4000)
                    .iter()
                    .all(|d| *d == Decision::Hold)
            );
            for d in low.frame(&mut f, 0, at, 1000) {
                let Decision::Forward(r) = d else {
                    panic!("low layer stopped: {d:?}")
                };
                last = Some(r);
            }
        }
        let last = last.expect("low layer forwarded");
        // The keyframe (5x the average) completes the switch.
        let at = t0 + Duration::from_millis(33 * 14);
        let d = high.frame(&mut f, 1, at, 20_000);
        assert_eq!(d[0], Decision::Hold);
        let Decision::Flush(out) = &d[1] else {
            panic!("no switch: {d:?}")
        };
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.seq, last.seq + 1);
        assert_eq!(out[1].0.seq, last.seq + 2);
        assert!(out[0].0.ts > last.ts);
        assert_eq!(f.current(), Some(1));
        // The low layer is no longer sent.
        assert!(
            low.frame(&mut f, 0, at, 1000)
                .iter()
                .all(|d| *d == Decision::Drop)
        );
    }

    #[test]
    fn a_keyframe_soon_after_the_streams_first_keyframe_is_recognised() {
        // The layer starts with a keyframe; a receiver joins 10 frames later. The first
        // keyframe must not hide the one the PLI brings.
        let t0 = Instant::now();
        let mut f: Forwarder<()> = Forwarder::new(90_000);
        let mut layer = Layer {
            seq: 1,
            ts: 0,
            frames: LayerFrames::default(),
        };
        layer.frame(&mut f, 0, t0, 10_000);
        for i in 1..10 {
            layer.frame(&mut f, 0, t0 + Duration::from_millis(33 * i), 2_000);
        }
        let at = t0 + Duration::from_millis(330);
        assert_eq!(
            f.set_target(Some(0), Some(&layer.frames), at),
            Request::Keyframe(0)
        );
        let d = layer.frame(&mut f, 0, at + Duration::from_millis(40), 10_000);
        assert!(matches!(d[1], Decision::Flush(_)), "{d:?}");
    }

    #[test]
    fn frame_marking_independent_bit_switches_on_an_ordinary_sized_frame() {
        let t0 = Instant::now();
        let mut f: Forwarder<()> = Forwarder::new(90_000);
        f.set_immediate(0);
        let mut frames = LayerFrames::default();
        for i in 0..10u64 {
            let p = pkt(t0, i, 0, true, 1000);
            frames.observe(&p);
        }
        assert_eq!(
            f.set_target(Some(1), Some(&frames), t0),
            Request::Keyframe(1)
        );
        let mut p = pkt(t0 + Duration::from_millis(40), 20, 90, true, 1000);
        p.frame_mark = Some(FRAME_MARK_START | FRAME_MARK_INDEPENDENT);
        assert!(matches!(f.on_packet(1, &p, &(), false), Decision::Flush(_)));
    }

    #[test]
    fn unanswered_request_is_repeated_then_forced() {
        let t0 = Instant::now();
        let mut f: Forwarder<()> = Forwarder::new(90_000);
        f.set_immediate(0);
        let mut frames = LayerFrames::default();
        for i in 0..10u64 {
            frames.observe(&pkt(t0, i, i as u32, true, 1000));
        }
        f.set_target(Some(1), Some(&frames), t0);
        assert_eq!(
            f.poll_request(t0 + Duration::from_millis(100)),
            Request::None
        );
        assert_eq!(f.poll_request(t0 + KEYFRAME_RETRY), Request::Keyframe(1));
        // An ordinary frame before the deadline is held, after it switches.
        let p = pkt(t0 + Duration::from_millis(600), 100, 5, true, 1000);
        assert_eq!(
            f.on_packet(1, &pkt(p.at, 99, 4, true, 1000), &(), false),
            Decision::Hold
        );
        assert_eq!(f.on_packet(1, &p, &(), false), Decision::Hold);
        let late = pkt(t0 + FORCE_SWITCH_AFTER, 101, 6, true, 1000);
        assert!(matches!(
            f.on_packet(1, &late, &(), false),
            Decision::Flush(_)
        ));
    }

    #[test]
    fn a_restarted_stream_continues_the_receivers_numbering() {
        let t0 = Instant::now();
        let mut f: Forwarder<()> = Forwarder::new(48_000);
        f.set_immediate(0);
        let Decision::Forward(a) = f.on_packet(0, &pkt(t0, 50_000, 9_000, false, 10), &(), false)
        else {
            panic!("not forwarded");
        };
        // The sender starts a new SSRC with new numbers, lower than the old ones.
        let at = t0 + Duration::from_millis(20);
        let Decision::Forward(b) = f.on_packet(0, &pkt(at, 7, 100, false, 10), &(), true) else {
            panic!("not forwarded");
        };
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.ts, a.ts + 960);
    }

    #[test]
    fn a_stream_first_sent_after_its_numbers_wrapped_starts_the_receiver_in_the_first_cycle() {
        let t0 = Instant::now();
        let mut f: Forwarder<()> = Forwarder::new(48_000);
        f.set_immediate(0);
        // The sender's numbers are in their fourth cycle when this receiver subscribes.
        let first = 3 * 65_536 + 65_530;
        let mut sent = Vec::new();
        for i in 0..10 {
            let at = t0 + Duration::from_millis(20 * i);
            let p = pkt(at, first + i, 960 * i as u32, false, 10);
            let Decision::Forward(out) = f.on_packet(0, &p, &(), i == 0) else {
                panic!("not forwarded");
            };
            sent.push(out.seq);
        }
        // The same 16-bit numbers, wrapping into the second cycle as the sender's do.
        assert_eq!(sent, (65_530..65_540).collect::<Vec<u64>>());
        assert!(
            sent.iter()
                .zip(first..)
                .all(|(o, i)| o & 0xFFFF == i & 0xFFFF)
        );
    }

    #[test]
    fn off_is_immediate() {
        let t0 = Instant::now();
        let mut f: Forwarder<()> = Forwarder::new(90_000);
        f.set_immediate(0);
        assert!(matches!(
            f.on_packet(0, &pkt(t0, 1, 1, true, 10), &(), false),
            Decision::Forward(_)
        ));
        assert_eq!(f.set_target(None, None, t0), Request::None);
        assert_eq!(
            f.on_packet(0, &pkt(t0, 2, 2, true, 10), &(), false),
            Decision::Drop
        );
    }
}
