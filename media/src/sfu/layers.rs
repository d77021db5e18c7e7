//! Which layer of each video track a receiver gets, from its bandwidth estimate.
//!
//! The rules, each with hysteresis so an estimate that wobbles around a threshold does not make
//! the picture flap:
//! - below [`AUDIO_ONLY_BELOW`] the receiver gets audio only; video comes back once the estimate
//!   has stayed at or above [`VIDEO_RESUME_AT`] for [`RESUME_HOLD`] (the server keeps probing
//!   towards the video rate, so the estimate can grow while only audio flows);
//! - otherwise every track first gets its lowest layer (screen share before cameras: a shared
//!   document matters more than a face), then tracks go up one layer at a time while the
//!   budget allows. A layer being sent is kept while it fits; a layer not being sent must fit
//!   with [`UPGRADE_HEADROOM`] to spare, and upgrades happen at most once per
//!   [`UPGRADE_INTERVAL`] so the estimate can settle after each step. Downgrades are immediate.
//! - the estimate used is the lowest of the last [`ESTIMATE_WINDOW`]: a drop counts at once, a
//!   rise only once it has lasted (a single high reading after a probe does not buy a layer
//!   that the next reading takes back).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Below this estimate a receiver gets audio only (the 500 kbps).
pub const AUDIO_ONLY_BELOW: u64 = 500_000;
/// Video resumes when the estimate is at least this ...
pub const VIDEO_RESUME_AT: u64 = 600_000;
/// ... for this long.
pub const RESUME_HOLD: Duration = Duration::from_secs(2);
/// An upgrade needs this fraction of the new layer's bitrate spare on top of it.
pub const UPGRADE_HEADROOM: f64 = 0.25;
/// At most one upgrade per receiver in this interval.
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(2);
/// The allocation uses the lowest estimate of this window.
pub const ESTIMATE_WINDOW: Duration = Duration::from_millis(1500);
/// Part of the estimate left unused for RTCP, retransmissions and the estimate's own error.
const RESERVE: f64 = 0.1;
/// The server probes for this multiple of what the next step up needs, so the estimate can
/// clear the reserve and the upgrade headroom.
pub const PROBE_FACTOR: f64 = (1.0 + UPGRADE_HEADROOM) / (1.0 - RESERVE);

/// One video track as the allocator sees it.
#[derive(Clone, Debug)]
pub struct TrackNeed {
    /// Allocated before the others (screen share).
    pub priority: bool,
    /// Bitrate of each layer, lowest first, bits per second.
    pub layer_bps: Vec<u64>,
    /// The layer targeted now.
    pub current: Option<usize>,
}

/// The per-receiver state the rules keep.
#[derive(Debug, Default)]
pub struct Allocator {
    audio_only: bool,
    resume_since: Option<Instant>,
    last_upgrade: Option<Instant>,
    recent: VecDeque<(Instant, u64)>,
}

impl Allocator {
    /// Whether the receiver is on audio only.
    pub fn audio_only(&self) -> bool {
        self.audio_only
    }

    /// Decide the layers. `audio_bps` is what the audio forwarded to the receiver takes.
    pub fn allocate(
        &mut self,
        now: Instant,
        estimate_bps: u64,
        audio_bps: u64,
        tracks: &[TrackNeed],
    ) -> Vec<Option<usize>> {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > ESTIMATE_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, estimate_bps));
        let estimate_bps = self
            .recent
            .iter()
            .map(|(_, e)| *e)
            .min()
            .unwrap_or(estimate_bps);
        if self.audio_only {
            if estimate_bps >= VIDEO_RESUME_AT {
                let since = *self.resume_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= RESUME_HOLD {
                    self.audio_only = false;
                    self.resume_since = None;
                    // Resuming is itself an upgrade: the next step waits its interval.
                    self.last_upgrade = Some(now);
                }
            } else {
                self.resume_since = None;
            }
        } else if estimate_bps < AUDIO_ONLY_BELOW {
            self.audio_only = true;
            self.resume_since = None;
        }
        if self.audio_only {
            return vec![None; tracks.len()];
        }

        // What is being sent may use the whole estimate; anything new must also leave the
        // reserve free (a second hysteresis band, on top of the upgrade headroom).
        let mut budget = i64::try_from(estimate_bps).unwrap_or(i64::MAX)
            - i64::try_from(audio_bps).unwrap_or(i64::MAX);
        let reserve = (estimate_bps as f64 * RESERVE) as i64;
        let mut order: Vec<usize> = (0..tracks.len()).collect();
        order.sort_by_key(|&i| !tracks[i].priority);

        let mut out: Vec<Option<usize>> = vec![None; tracks.len()];
        for &i in &order {
            let Some(&low) = tracks[i].layer_bps.first() else {
                continue;
            };
            let low = i64::try_from(low).unwrap_or(i64::MAX);
            let headroom = if tracks[i].current.is_some() {
                0
            } else {
                (low as f64 * UPGRADE_HEADROOM) as i64 + reserve
            };
            if low + headroom <= budget {
                out[i] = Some(0);
                budget -= low;
            }
        }

        let may_upgrade = self
            .last_upgrade
            .is_none_or(|t| now.saturating_duration_since(t) >= UPGRADE_INTERVAL);
        let mut upgraded = false;
        loop {
            let mut changed = false;
            for &i in &order {
                let Some(cur) = out[i] else { continue };
                let layers = &tracks[i].layer_bps;
                let Some(&next_bps) = layers.get(cur + 1) else {
                    continue;
                };
                let next = cur + 1;
                let extra = i64::try_from(next_bps.saturating_sub(layers[cur])).unwrap_or(i64::MAX);
                let keeps = tracks[i].current.is_some_and(|c| next <= c);
                if !keeps && (!may_upgrade || upgraded) {
                    continue;
                }
                let headroom = if keeps {
                    0
                } else {
                    (next_bps as f64 * UPGRADE_HEADROOM) as i64 + reserve
                };
                if extra + headroom <= budget {
                    out[i] = Some(next);
                    budget -= extra;
                    changed = true;
                    if !keeps {
                        upgraded = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        if upgraded {
            self.last_upgrade = Some(now);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(current: Option<usize>) -> TrackNeed {
        TrackNeed {
            priority: false,
            layer_bps: vec![150_000, 500_000, 1_500_000],
            current,
        }
    }

    #[test]
    fn below_500_kbps_is_audio_only_and_recovery_waits_for_a_steady_estimate() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(
            a.allocate(t0, 2_000_000, 40_000, &[cam(None)]),
            vec![Some(1)]
        );
        assert_eq!(a.allocate(t0, 450_000, 40_000, &[cam(Some(1))]), vec![None]);
        assert!(a.audio_only());
        // 550 kbps is above the threshold but inside the hysteresis band: still audio only.
        assert_eq!(
            a.allocate(t0 + Duration::from_secs(5), 550_000, 40_000, &[cam(None)]),
            vec![None]
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(a.allocate(t1, 700_000, 40_000, &[cam(None)]), vec![None]);
        assert_eq!(
            a.allocate(t1 + RESUME_HOLD, 700_000, 40_000, &[cam(None)]),
            vec![Some(0)]
        );
        assert!(!a.audio_only());
    }

    #[test]
    fn upgrades_one_step_per_interval_and_downgrades_at_once() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(a.allocate(t0, 3_000_000, 0, &[cam(None)]), vec![Some(1)]);
        assert_eq!(
            a.allocate(
                t0 + Duration::from_millis(500),
                3_000_000,
                0,
                &[cam(Some(1))]
            ),
            vec![Some(1)]
        );
        assert_eq!(
            a.allocate(t0 + UPGRADE_INTERVAL, 3_000_000, 0, &[cam(Some(1))]),
            vec![Some(2)]
        );
        assert_eq!(
            a.allocate(t0 + UPGRADE_INTERVAL, 900_000, 0, &[cam(Some(2))]),
            vec![Some(1)]
        );
    }

    #[test]
    fn a_short_high_reading_does_not_buy_a_layer() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(a.allocate(t0, 600_000, 0, &[cam(None)]), vec![Some(0)]);
        let t1 = t0 + UPGRADE_INTERVAL;
        assert_eq!(a.allocate(t1, 600_000, 0, &[cam(Some(0))]), vec![Some(0)]);
        let t2 = t1 + Duration::from_millis(250);
        assert_eq!(a.allocate(t2, 5_000_000, 0, &[cam(Some(0))]), vec![Some(0)]);
        let t3 = t1 + ESTIMATE_WINDOW + Duration::from_millis(1);
        assert_eq!(a.allocate(t3, 5_000_000, 0, &[cam(Some(0))]), vec![Some(1)]);
    }

    #[test]
    fn a_layer_being_sent_is_kept_without_headroom() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        // 1.6 Mbps: the high layer fits, but not with the reserve and 25% headroom.
        assert_eq!(a.allocate(t0, 1_600_000, 0, &[cam(Some(2))]), vec![Some(2)]);
        let mut b = Allocator::default();
        assert_ne!(b.allocate(t0, 1_600_000, 0, &[cam(Some(1))]), vec![Some(2)]);
    }

    #[test]
    fn screen_share_is_served_first() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        let screen = TrackNeed {
            priority: true,
            layer_bps: vec![600_000],
            current: None,
        };
        // 900 kbps * 0.9 - 40k audio = 770k: room for the screen (600k + 25% to spare) only.
        assert_eq!(
            a.allocate(t0, 900_000, 40_000, &[cam(None), screen]),
            vec![None, Some(0)]
        );
    }
}
