//! How fast the uplink may send: judged from what the link does with what it is given, the way
//! field encoders on bonded 4G do (BELABOX's belacoder checks every 20 ms): down at once, and
//! hard, when bytes pile up or the round trip grows; up slowly, a step at a time, once the link
//! has stayed clear. Pure arithmetic on samples, so it can be tested without a network.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the owner allows (config `[uplink]` and `[encoder]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The encoder's configured bitrate: never above it.
    pub max_kbps: u32,
    /// The floor: below it the shared encoder would spoil the recording; the uplink's queue
    /// drops whole GOPs instead.
    pub min_kbps: u32,
    /// Below the floor, lower the frame rate (an encoder of its own only: a shared one's
    /// frames are the recording's).
    pub frame_steps: bool,
}

/// One look at the link, every `PERIOD`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Video waiting in the uplink's queue, before the socket.
    pub queued_ms: u64,
    /// Bytes in the socket not sent yet.
    pub unsent_bytes: u32,
    /// Smoothed round-trip time, µs (0: unknown).
    pub rtt_us: u32,
    /// Bytes acknowledged since the connection opened.
    pub acked_bytes: u64,
}

pub const PERIOD: Duration = Duration::from_millis(100);
/// Video waiting (queue and socket) beyond which the link is taken to be too narrow.
const CONGESTED_MS: u64 = 300;
/// Round-trip growth over the empty link's beyond which it is (a 4G cell's jitter is ±20 ms).
const CONGESTED_RTT_MS: u64 = 200;
/// Below both of these the link is clear.
const CLEAR_MS: u64 = 100;
const CLEAR_RTT_MS: u64 = 60;
/// After a step down, the next one waits this long: the previous one must show first.
const DOWN_EVERY: Duration = Duration::from_millis(600);
/// The link must stay clear this long before it is stepped up, then a step every `UP_EVERY`.
const UP_AFTER: Duration = Duration::from_secs(2);
const UP_EVERY: Duration = Duration::from_secs(1);
const FRAME_STEP_UP_EVERY: Duration = Duration::from_secs(4);
/// No step down in a connection's first seconds (the bounded queue covers them).
const WARM_UP: Duration = Duration::from_secs(2);
/// The empty link's round trip is the least seen over this last while.
const BASE_RTT_OVER: Duration = Duration::from_secs(10);
/// The link is judged on the samples of this last while.
const JUDGED_OVER: Duration = Duration::from_secs(1);
/// What the link carried is measured over this window.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Rate {
    limits: Limits,
    kbps: u32,
    last_change: Option<Instant>,
    clear_since: Option<Instant>,
    acked: VecDeque<(Instant, u64)>,
    /// The backlog at the last step down while congested.
    last_backlog: Option<u64>,
    /// (time, backlog ms, round-trip growth ms) over the last second: a keyframe is a burst
    /// that a clear link drains within a few hundred ms, a narrow one does not.
    recent: VecDeque<(Instant, (u64, u64))>,
    /// Round trips (µs) of the last `BASE_RTT_OVER`.
    rtts: VecDeque<(Instant, u32)>,
    /// The first sample.
    started: Option<Instant>,
    /// Index into `KEEP_EVERY` (frame rate steps below the floor).
    step: usize,
}

/// Below the floor, an uplink with an encoder of its own keeps one raw frame in this many:
/// 30 fps → 15, 10, 5.
const KEEP_EVERY: [u32; 4] = [1, 2, 3, 6];

impl Rate {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            kbps: limits.max_kbps,
            last_change: None,
            clear_since: None,
            acked: VecDeque::new(),
            last_backlog: None,
            recent: VecDeque::new(),
            rtts: VecDeque::new(),
            started: None,
            step: 0,
        }
    }

    pub fn kbps(&self) -> u32 {
        self.kbps
    }

    /// One raw frame in this many goes to the encoder (1: all).
    pub fn keep_every(&self) -> u32 {
        KEEP_EVERY[self.step]
    }

    fn frame_steps(&self) -> usize {
        if self.limits.frame_steps {
            KEEP_EVERY.len()
        } else {
            1
        }
    }

    /// Video waiting, in ms: the queue's own, plus the socket's bytes at the rate the link
    /// drains them (what it carried; before that is known, the current bitrate).
    pub fn backlog_ms(&self, s: &Sample) -> u64 {
        let drain = self
            .carried_kbps()
            .filter(|c| *c > 0)
            .unwrap_or(self.kbps)
            .max(1);
        s.queued_ms + (s.unsent_bytes as u64 * 8) / drain as u64
    }

    /// What the link carried over the last window, kbit/s (None until a window has passed).
    pub fn carried_kbps(&self) -> Option<u32> {
        let (t0, b0) = *self.acked.front()?;
        let (t1, b1) = *self.acked.back()?;
        let dt = t1.duration_since(t0);
        if dt < THROUGHPUT_WINDOW / 2 {
            return None;
        }
        Some(((b1.saturating_sub(b0) * 8) as f64 / dt.as_secs_f64() / 1000.0) as u32)
    }

    /// Takes a sample made at `now`; returns the new bitrate when it changes.
    pub fn on_sample(&mut self, now: Instant, s: &Sample) -> Option<u32> {
        if s.acked_bytes > 0 {
            keep_last(&mut self.acked, now, s.acked_bytes, THROUGHPUT_WINDOW);
        }
        let backlog = self.backlog_ms(s);
        // The empty link's round trip: the least of the last few seconds, not the
        // connection's all-time least (which the kernel keeps for minutes), since a mobile
        // link's own delay changes (another cell, another radio mode) and a longer path is not
        // a fuller one. Sending below the link's width empties its queue within that while.
        if s.rtt_us > 0 {
            keep_last(&mut self.rtts, now, s.rtt_us, BASE_RTT_OVER);
        }
        let base_rtt_us = self.rtts.iter().map(|r| r.1).min().unwrap_or(0);
        let rtt_growth_ms = if s.rtt_us > 0 && base_rtt_us > 0 {
            s.rtt_us.saturating_sub(base_rtt_us) as u64 / 1000
        } else {
            0
        };
        let since_change = self.last_change.map(|t| now.duration_since(t));
        keep_last(&mut self.recent, now, (backlog, rtt_growth_ms), JUDGED_OVER);
        // Congested: the backlog or the round trip stayed high for the last half second (the
        // least of those samples is high). Clear: most of the last second was low.
        let lately = self
            .recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= JUDGED_OVER / 2);
        let (least_backlog, least_growth) = lately.fold((u64::MAX, u64::MAX), |(b, g), s| {
            (b.min(s.1 .0), g.min(s.1 .1))
        });
        let mut backlogs: Vec<u64> = self.recent.iter().map(|s| s.1 .0).collect();
        let mut growths: Vec<u64> = self.recent.iter().map(|s| s.1 .1).collect();
        backlogs.sort_unstable();
        growths.sort_unstable();
        let typical_backlog = backlogs[backlogs.len() / 2];
        let typical_growth = growths[growths.len() / 2];
        // A new connection is in slow start: what it carries is not yet the link's width.
        let warming = now.duration_since(*self.started.get_or_insert(now)) < WARM_UP;
        if !warming && (least_backlog > CONGESTED_MS || least_growth > CONGESTED_RTT_MS) {
            self.clear_since = None;
            // A backlog that drains after a step down needs no further one.
            let draining = self.last_backlog.is_some_and(|b| backlog < b * 9 / 10);
            let at_floor = self.kbps <= self.limits.min_kbps;
            if at_floor
                && !draining
                && since_change.is_none_or(|d| d >= DOWN_EVERY)
                && self.step + 1 < self.frame_steps()
            {
                // Below the floor the frame rate goes down instead (an encoder of its own).
                self.step += 1;
                self.last_backlog = Some(backlog);
                self.last_change = Some(now);
                return None;
            }
            if since_change.is_some_and(|d| d < DOWN_EVERY) || at_floor || draining {
                if draining && since_change.is_some_and(|d| d >= DOWN_EVERY) {
                    // Judged again against this backlog one step later.
                    self.last_backlog = Some(backlog);
                    self.last_change = Some(now);
                }
                return None;
            }
            self.last_backlog = Some(backlog);
            // At most what the link carried (it is full, so that is its width), less a margin
            // for the backlog to drain; at least a quarter off, at most half.
            let mut target = self.kbps * 3 / 4;
            if let Some(carried) = self.carried_kbps().filter(|c| *c > 0) {
                target = target.min(carried * 85 / 100).max(self.kbps / 2);
            }
            return self.set(now, target.max(self.limits.min_kbps));
        }
        self.last_backlog = None;
        if typical_backlog < CLEAR_MS && typical_growth < CLEAR_RTT_MS {
            let clear_since = *self.clear_since.get_or_insert(now);
            let waited = now.duration_since(clear_since) >= UP_AFTER
                && since_change.is_none_or(|d| d >= UP_EVERY);
            // A frame rate step up is a bitrate step of half or more: it waits longer.
            let waited_long = since_change.is_none_or(|d| d >= FRAME_STEP_UP_EVERY);
            if waited && waited_long && self.step > 0 {
                // The frame rate comes back first, then the bitrate.
                self.step -= 1;
                self.last_change = Some(now);
                return None;
            }
            if waited && self.step == 0 && self.kbps < self.limits.max_kbps {
                // 8 % a step: from a weak link's rate back to 2.5 Mbit/s in about 20 s.
                let target = (self.kbps + self.kbps / 12 + 10).min(self.limits.max_kbps);
                return self.set(now, target);
            }
        } else {
            self.clear_since = None;
        }
        None
    }

    fn set(&mut self, now: Instant, kbps: u32) -> Option<u32> {
        self.last_change = Some(now);
        if kbps == self.kbps {
            return None;
        }
        self.kbps = kbps;
        Some(kbps)
    }
}

/// Adds `(now, item)` to `q` and forgets what is older than `over`.
fn keep_last<T>(q: &mut VecDeque<(Instant, T)>, now: Instant, item: T, over: Duration) {
    q.push_back((now, item));
    while q
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > over)
    {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_kbps: 2500,
        min_kbps: 300,
        frame_steps: false,
    };

    /// A link of `link_kbps` fed at the rate's bitrate for `secs`: the backlog grows by what
    /// does not fit, the acknowledged bytes by what does.
    fn run(
        rate: &mut Rate,
        t: &mut Instant,
        acked: &mut u64,
        backlog_bits: &mut f64,
        link_kbps: u32,
        secs: f64,
    ) -> Vec<u32> {
        let mut changes = Vec::new();
        let steps = (secs / PERIOD.as_secs_f64()) as usize;
        for _ in 0..steps {
            *t += PERIOD;
            let dt = PERIOD.as_secs_f64();
            *backlog_bits += rate.kbps() as f64 * 1000.0 * dt;
            let sent = (link_kbps as f64 * 1000.0 * dt).min(*backlog_bits);
            *backlog_bits -= sent;
            *acked += (sent / 8.0) as u64;
            let s = Sample {
                queued_ms: 0,
                unsent_bytes: (*backlog_bits / 8.0) as u32,
                rtt_us: 40_000,
                acked_bytes: *acked,
            };
            if let Some(k) = rate.on_sample(*t, &s) {
                changes.push(k);
            }
        }
        changes
    }

    #[test]
    fn a_narrowing_link_is_followed_down_within_seconds_and_back_up_slowly() {
        let mut rate = Rate::new(LIMITS);
        let (mut t, mut acked, mut backlog) = (Instant::now(), 0u64, 0f64);
        assert!(run(&mut rate, &mut t, &mut acked, &mut backlog, 20_000, 5.0).is_empty());
        assert_eq!(rate.kbps(), 2500);
        // The link narrows to 800 kbit/s: below it within 3 s.
        let mut took = None;
        for i in 1..=30 {
            run(&mut rate, &mut t, &mut acked, &mut backlog, 800, 0.1);
            if rate.kbps() < 800 {
                took = Some(i as f64 / 10.0);
                break;
            }
        }
        let took = took.unwrap_or_else(|| panic!("still at {} kbit/s after 3 s", rate.kbps()));
        assert!(took <= 3.0, "{took}");
        // It stays under the link and the backlog drains.
        run(&mut rate, &mut t, &mut acked, &mut backlog, 800, 10.0);
        assert!(rate.kbps() <= 800 && rate.kbps() >= 400, "{}", rate.kbps());
        assert!(backlog / 800.0 < 200.0, "backlog {} ms", backlog / 800.0);
        // The link recovers: the rate climbs, a step at a time, not at once.
        let ups = run(&mut rate, &mut t, &mut acked, &mut backlog, 20_000, 6.0);
        assert!(!ups.is_empty() && rate.kbps() < 1500, "{ups:?}");
        run(&mut rate, &mut t, &mut acked, &mut backlog, 20_000, 40.0);
        assert_eq!(rate.kbps(), 2500);
    }

    #[test]
    fn an_own_encoder_at_its_floor_halves_the_frame_rate_then_gets_it_back_first() {
        let mut rate = Rate::new(Limits {
            frame_steps: true,
            ..LIMITS
        });
        let (mut t, mut acked, mut backlog) = (Instant::now(), 0u64, 0f64);
        run(&mut rate, &mut t, &mut acked, &mut backlog, 100, 20.0);
        assert_eq!((rate.kbps(), rate.keep_every()), (300, 6));
        // The link clears: the frame rate is back before the bitrate rises.
        let mut seen = Vec::new();
        for _ in 0..200 {
            run(&mut rate, &mut t, &mut acked, &mut backlog, 20_000, 0.1);
            if seen.last() != Some(&(rate.kbps(), rate.keep_every())) {
                seen.push((rate.kbps(), rate.keep_every()));
            }
        }
        let first_up = seen.iter().position(|(k, _)| *k > 300).unwrap();
        assert!(
            seen[..first_up].last().is_some_and(|(_, n)| *n == 1),
            "{seen:?}"
        );
    }

    #[test]
    fn never_below_the_floor_the_owner_set() {
        let mut rate = Rate::new(LIMITS);
        let (mut t, mut acked, mut backlog) = (Instant::now(), 0u64, 0f64);
        run(&mut rate, &mut t, &mut acked, &mut backlog, 100, 20.0);
        assert_eq!(rate.kbps(), 300);
    }

    #[test]
    fn a_growing_round_trip_alone_steps_down() {
        let mut rate = Rate::new(LIMITS);
        let mut t = Instant::now();
        let at = |rtt_ms: u32| Sample {
            rtt_us: rtt_ms * 1000,
            ..Default::default()
        };
        for _ in 0..20 {
            t += PERIOD;
            assert_eq!(rate.on_sample(t, &at(60)), None);
        }
        // Queueing somewhere on the path: down once it has lasted half a second.
        let mut steps = Vec::new();
        for _ in 0..12 {
            t += PERIOD;
            steps.extend(rate.on_sample(t, &at(400)));
        }
        assert_eq!(
            steps,
            vec![1875, 1406],
            "one step, and the next one only after {DOWN_EVERY:?}"
        );
    }

    #[test]
    fn a_longer_path_is_not_taken_for_a_fuller_one() {
        // The link's own delay goes from 40 to 240 ms (a weak cell) and stays: after a few
        // seconds that is the empty link's round trip, and the rate climbs again.
        let mut rate = Rate::new(LIMITS);
        let mut t = Instant::now();
        for i in 0..400 {
            t += PERIOD;
            let rtt_ms = if i < 20 { 40 } else { 240 };
            rate.on_sample(
                t,
                &Sample {
                    rtt_us: rtt_ms * 1000,
                    ..Default::default()
                },
            );
        }
        assert_eq!(rate.kbps(), LIMITS.max_kbps);
    }
}
