//! Per-participant statistics, room statistics and the Prometheus text of the SFU.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::signaling::TrackQuality;
use crate::token::Role;

/// Statistics of one participant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParticipantStats {
    /// The participant id.
    pub participant: String,
    /// The number the SFU's logs and metrics know it by (see [`crate::sfu::RoomEvent`]).
    pub peer: u64,
    /// Its role.
    pub role: Role,
    /// Bits per second received from it over the last two seconds (all datagrams).
    pub bitrate_in_bps: u64,
    /// Bits per second sent to it over the last two seconds.
    pub bitrate_out_bps: u64,
    /// Bytes received from it in total.
    pub bytes_in: u64,
    /// Bytes sent to it in total.
    pub bytes_out: u64,
    /// Fraction of its packets lost on the way in (0..1), from str0m's receiver reports.
    pub loss_in: Option<f64>,
    /// Fraction of the packets sent to it that it reported lost (0..1).
    pub loss_out: Option<f64>,
    /// Round-trip time, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Interarrival jitter of its media, milliseconds.
    pub jitter_ms: Option<f64>,
    /// The bandwidth estimate towards it, bits per second.
    pub estimate_bps: Option<u64>,
    /// Whether it is on audio only now.
    pub audio_only: bool,
    /// Times it fell to audio only.
    pub audio_only_episodes: u64,
    /// Total time on audio only.
    #[serde(with = "seconds")]
    pub time_on_audio_only: Duration,
    /// Time since it joined.
    #[serde(with = "seconds")]
    pub connected_for: Duration,
    /// The layer forwarded to it per video track (`null`: video off).
    pub layers: Vec<TrackQuality>,
    /// Keyframe requests made for its layer switches.
    pub keyframe_requests: u64,
    /// Layer switches done for it.
    pub layer_switches: u64,
}

impl ParticipantStats {
    /// Empty statistics of a participant.
    pub fn new(participant: String, peer: u64, role: Role) -> Self {
        ParticipantStats {
            participant,
            peer,
            role,
            bitrate_in_bps: 0,
            bitrate_out_bps: 0,
            bytes_in: 0,
            bytes_out: 0,
            loss_in: None,
            loss_out: None,
            rtt_ms: None,
            jitter_ms: None,
            estimate_bps: None,
            audio_only: false,
            audio_only_episodes: 0,
            time_on_audio_only: Duration::ZERO,
            connected_for: Duration::ZERO,
            layers: Vec::new(),
            keyframe_requests: 0,
            layer_switches: 0,
        }
    }
}

/// Statistics of a room.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoomStats {
    /// The Encounter id.
    pub encounter: String,
    /// The number the SFU's logs and metrics know it by (see [`crate::sfu::RoomEvent`]).
    pub room: u64,
    /// Time since the room opened.
    #[serde(with = "seconds")]
    pub open_for: Duration,
    /// Its participants, by id.
    pub participants: Vec<ParticipantStats>,
}

/// Counters since the server started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// RTP packets forwarded (one per receiver).
    pub packets_forwarded: u64,
    /// Payload bytes forwarded.
    pub bytes_forwarded: u64,
    /// Keyframe requests sent to senders.
    pub keyframe_requests: u64,
    /// Rooms opened.
    pub rooms_opened: u64,
    /// Rooms closed.
    pub rooms_closed: u64,
    /// Participants joined.
    pub participants_joined: u64,
    /// Participants left or removed.
    pub participants_left: u64,
    /// Datagrams dropped before reaching a participant: from an address no participant owns,
    /// or not STUN, DTLS, RTP or RTCP at all.
    pub datagrams_unrouted: u64,
}

/// Bytes over a sliding window of two seconds, in 250 ms buckets.
#[derive(Clone, Debug, Default)]
pub struct RateMeter {
    buckets: [u64; 8],
    /// Index of the bucket of `start`.
    start: Option<Instant>,
    head: u64,
}

const BUCKET: Duration = Duration::from_millis(250);

impl RateMeter {
    fn advance(&mut self, now: Instant) -> u64 {
        let start = *self.start.get_or_insert(now);
        let n = (now.saturating_duration_since(start).as_millis() / BUCKET.as_millis()) as u64;
        if n > self.head {
            let gap = (n - self.head).min(8);
            for i in 1..=gap {
                self.buckets[((self.head + i) % 8) as usize] = 0;
            }
            self.head = n;
        }
        n
    }

    /// Account `bytes` at `now`.
    pub fn add(&mut self, now: Instant, bytes: usize) {
        let n = self.advance(now);
        self.buckets[(n % 8) as usize] += bytes as u64;
    }

    /// Bits per second over the window.
    pub fn bps(&self, now: Instant) -> u64 {
        let Some(start) = self.start else { return 0 };
        let n = (now.saturating_duration_since(start).as_millis() / BUCKET.as_millis()) as u64;
        // Buckets head-7..=head hold data; of those, the ones within the window ending at n.
        let lowest = n.saturating_sub(7).max(self.head.saturating_sub(7));
        let bytes: u64 = (lowest..=self.head)
            .filter(|i| *i + 8 > n)
            .map(|i| self.buckets[(i % 8) as usize])
            .sum();
        // The window is seven whole buckets and the part of bucket n that has passed.
        let since_start = now.saturating_duration_since(start);
        let partial = since_start.saturating_sub(BUCKET * n as u32);
        let elapsed = since_start
            .min(BUCKET * 7 + partial)
            .max(Duration::from_millis(50));
        (bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64
    }
}

/// Sub-buckets per power of two of a [`DelayHistogram`]: a bucket is at most 1/16 (6.25%) of
/// its values wide.
const SUB_BUCKETS: u64 = 16;
/// Powers of two a [`DelayHistogram`] covers above its linear start: up to about 19 hours.
const OCTAVES: u64 = 32;

/// Counts of delays, in microseconds, to within 6.25%. Recording is a few instructions and
/// never allocates, so it can run for every forwarded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayHistogram {
    counts: Vec<u64>,
    count: u64,
    sum_us: u64,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        DelayHistogram {
            counts: vec![0; Self::LAST + 1],
            count: 0,
            sum_us: 0,
        }
    }
}

impl DelayHistogram {
    /// The bucket of `us` microseconds: exact below 16, then 16 per power of two.
    fn bucket(us: u64) -> usize {
        if us < SUB_BUCKETS {
            return us as usize;
        }
        let octave = u64::from(63 - us.leading_zeros()) - 3; // 1 for 16..31
        if octave > OCTAVES {
            return Self::LAST;
        }
        let sub = (us >> (octave - 1)) - SUB_BUCKETS; // 0..15
        (octave * SUB_BUCKETS + sub) as usize
    }

    /// The last bucket, which also holds everything beyond the range.
    const LAST: usize = (SUB_BUCKETS * (OCTAVES + 1) - 1) as usize;

    /// The largest value of bucket `i`, microseconds.
    fn upper(i: usize) -> u64 {
        let (octave, sub) = (i as u64 / SUB_BUCKETS, i as u64 % SUB_BUCKETS);
        if i >= Self::LAST {
            return u64::MAX;
        }
        if octave == 0 {
            return sub;
        }
        ((SUB_BUCKETS + sub + 1) << (octave - 1)) - 1
    }

    /// Count one delay.
    pub fn record(&mut self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(Self::bucket(us)) {
            *c += 1;
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Delays counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the delays counted.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us)
    }

    /// The delay below which a share `q` (0..=1) of the counted delays lie, as the upper
    /// bound of its bucket; zero when nothing was counted.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(Self::upper(i));
            }
        }
        Duration::from_micros(Self::upper(Self::LAST))
    }

    /// What was counted since `earlier`, a copy of this histogram taken before.
    pub fn since(&self, earlier: &DelayHistogram) -> DelayHistogram {
        DelayHistogram {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }
}

/// The Prometheus text exposition format (version 0.0.4) of the totals, of the forwarding
/// delay and of every participant of every open room. Participants are labelled by their room's
/// number and their own (`room`, `peer`), never by Encounter or participant id: metrics leave
/// the server for monitoring systems that are not meant to hold who had a visit.
pub fn render_metrics(
    totals: &Totals,
    forward_delay: &DelayHistogram,
    rooms: &[RoomStats],
) -> String {
    let mut out = String::new();
    let counters = [
        (
            "media_packets_forwarded_total",
            "RTP packets forwarded to receivers.",
            totals.packets_forwarded,
        ),
        (
            "media_bytes_forwarded_total",
            "RTP payload bytes forwarded to receivers.",
            totals.bytes_forwarded,
        ),
        (
            "media_keyframe_requests_total",
            "Keyframe requests (PLI) sent to senders.",
            totals.keyframe_requests,
        ),
        (
            "media_rooms_opened_total",
            "Rooms opened.",
            totals.rooms_opened,
        ),
        (
            "media_rooms_closed_total",
            "Rooms closed.",
            totals.rooms_closed,
        ),
        (
            "media_participants_joined_total",
            "Participants joined.",
            totals.participants_joined,
        ),
        (
            "media_participants_left_total",
            "Participants left or removed.",
            totals.participants_left,
        ),
        (
            "media_datagrams_unrouted_total",
            "Datagrams dropped: unknown address, or not STUN/DTLS/RTP/RTCP.",
            totals.datagrams_unrouted,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let name = "media_forward_delay_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from a media packet's arrival at the host to the send of its forwarded copy, since start.\n# TYPE {name} summary"
    );
    for (q, label) in [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99")] {
        let value = forward_delay.quantile(q);
        let _ = writeln!(
            out,
            "{name}{{quantile=\"{label}\"}} {}",
            value.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {}",
        forward_delay.sum().as_secs_f64(),
        forward_delay.count()
    );
    let _ = writeln!(
        out,
        "# HELP media_rooms Open rooms.\n# TYPE media_rooms gauge\nmedia_rooms {}",
        rooms.len()
    );
    let participants: usize = rooms.iter().map(|r| r.participants.len()).sum();
    let _ = writeln!(
        out,
        "# HELP media_participants Participants in open rooms.\n# TYPE media_participants gauge\nmedia_participants {participants}"
    );
    type Getter = fn(&ParticipantStats) -> Option<f64>;
    let gauges: [(&str, &str, Getter); 8] = [
        (
            "media_participant_bitrate_in_bps",
            "Bits per second received from the participant.",
            |p| Some(p.bitrate_in_bps as f64),
        ),
        (
            "media_participant_bitrate_out_bps",
            "Bits per second sent to the participant.",
            |p| Some(p.bitrate_out_bps as f64),
        ),
        (
            "media_participant_loss_in_ratio",
            "Fraction of the participant's packets lost on the way in.",
            |p| p.loss_in,
        ),
        (
            "media_participant_loss_out_ratio",
            "Fraction of packets to the participant reported lost.",
            |p| p.loss_out,
        ),
        (
            "media_participant_rtt_seconds",
            "Round-trip time to the participant.",
            |p| p.rtt_ms.map(|v| v / 1000.0),
        ),
        (
            "media_participant_jitter_seconds",
            "Interarrival jitter of the participant's media.",
            |p| p.jitter_ms.map(|v| v / 1000.0),
        ),
        (
            "media_participant_estimate_bps",
            "Bandwidth estimate towards the participant.",
            |p| p.estimate_bps.map(|v| v as f64),
        ),
        (
            "media_participant_audio_only_seconds",
            "Time the participant spent on audio only.",
            |p| Some(p.time_on_audio_only.as_secs_f64()),
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in rooms {
            for p in &r.participants {
                if let Some(v) = get(p) {
                    let _ = writeln!(out, "{name}{{room=\"{}\",peer=\"{}\"}} {v}", r.room, p.peer);
                }
            }
        }
    }
    out
}

mod seconds {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_meter_measures_a_steady_rate_and_forgets_old_traffic() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..400u64 {
            // 125 bytes every 10 ms = 100 kbps.
            m.add(t0 + Duration::from_millis(i * 10), 125);
        }
        let bps = m.bps(t0 + Duration::from_millis(4000));
        assert!((90_000..=110_000).contains(&bps), "{bps}");
        assert_eq!(m.bps(t0 + Duration::from_secs(10)), 0);
    }

    #[test]
    fn delay_histogram_buckets_are_tight_and_quantiles_rank_right() {
        for us in (0..5_000)
            .chain((1..40).map(|i| 1u64 << i))
            .chain([u64::MAX / 2])
        {
            let i = DelayHistogram::bucket(us);
            let upper = DelayHistogram::upper(i);
            assert!(upper >= us, "{us} µs in a bucket ending at {upper}");
            if us < 1 << 36 {
                assert!(
                    upper - us <= us / 16,
                    "{us} µs in a bucket ending at {upper}"
                );
            }
            if i > 0 {
                assert!(DelayHistogram::upper(i - 1) < us, "{us} µs belongs lower");
            }
        }
        let mut h = DelayHistogram::default();
        assert_eq!(h.quantile(0.99), Duration::ZERO);
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let early = h.clone();
        for _ in 0..1000 {
            h.record(Duration::from_millis(40));
        }
        let near = |d: Duration, us: u64| (us..=us + us / 16).contains(&(d.as_micros() as u64));
        assert!(near(early.quantile(0.5), 500), "{:?}", early.quantile(0.5));
        assert!(
            near(early.quantile(0.99), 990),
            "{:?}",
            early.quantile(0.99)
        );
        assert!(near(h.quantile(0.25), 500), "{:?}", h.quantile(0.25));
        assert!(near(h.quantile(0.75), 40_000), "{:?}", h.quantile(0.75));
        let late = h.since(&early);
        assert_eq!(late.count(), 1000);
        assert_eq!(late.sum(), Duration::from_secs(40));
        assert!(
            near(late.quantile(0.01), 40_000),
            "{:?}",
            late.quantile(0.01)
        );
    }

    #[test]
    fn metrics_label_participants_by_number_never_by_id() {
        let rooms = [RoomStats {
            encounter: "enc-42".into(),
            room: 3,
            open_for: Duration::ZERO,
            participants: vec![ParticipantStats::new(
                "Patient/p-7".into(),
                9,
                Role::Patient,
            )],
        }];
        let text = render_metrics(&Totals::default(), &DelayHistogram::default(), &rooms);
        assert!(
            text.contains("media_participant_bitrate_in_bps{room=\"3\",peer=\"9\"} 0"),
            "{text}"
        );
        assert!(!text.contains("enc-42") && !text.contains("p-7"), "{text}");
    }
}
