//! Keyframes by time, not by frame count. An encoder's own keyframe interval counts frames, so
//! it stretches whenever fewer frames arrive than configured: a camera slower than asked
//! (vivid gives 12.5 fps at 720p), one that lengthens its exposure in low light, or frames the
//! leaky queue before the encoder drops on a busy CPU. The recording's power-cut bound and a
//! late joiner's wait are both a keyframe interval in time, so the interval is kept in time
//! here: a keyframe is requested of the encoder once `interval` of stream time has passed since
//! the last forced one. The encoder's own interval is only a backstop (twice as long).
//!
//! Keyframes asked for by RTSP clients (`request_for_client`: a new media, a PLAY) all pass
//! the encoder's source pad, where one gate decides for every client at once. A client's
//! request is granted when no client was granted one within the last interval and the forced
//! keyframes so far leave room in a budget of one per interval with a reserve of one (a token
//! bucket that every forced keyframe draws from, the periodic ones included). Otherwise it is
//! dropped and the client waits for the next periodic keyframe, at most one interval away.
//! Any forced keyframe (a client's, or the uplink's on attach, which is never refused) restarts
//! the periodic count, so the periodic one comes a whole interval after it. So a client joining
//! a quiet stream gets its keyframe at once, while any number of clients can force no more
//! keyframes than the periodic ones plus two, over any span of time: a flood of PLAYs does not
//! raise the recording's keyframe rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gst::prelude::*;

/// Field of an upstream force-key-unit event that marks it as an RTSP client's request.
const CLIENT_FIELD: &str = "camstream-rtsp-client";

/// Asks the encoder upstream of `sink_pad` for an IDR with SPS/PPS on behalf of an RTSP client:
/// the encoder's gate (see the module) grants or drops it.
pub fn request_for_client(sink_pad: &gst::Pad) {
    let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .other_field(CLIENT_FIELD, true)
        .build();
    sink_pad.push_event(ev);
}

/// The forced-keyframe budget shared by the periodic keyframes and the clients' requests.
#[derive(Debug)]
struct Budget {
    interval_s: f64,
    /// Tokens: one per interval accrues, up to `CAPACITY`; every forced keyframe takes one.
    tokens: f64,
    at: Instant,
    /// When a client's request was last granted.
    last_client: Option<Instant>,
    granted: u64,
    refused: u64,
}

const CAPACITY: f64 = 2.0;

impl Budget {
    fn new(interval: gst::ClockTime, now: Instant) -> Self {
        Self {
            interval_s: interval.nseconds() as f64 / 1e9,
            tokens: CAPACITY,
            at: now,
            last_client: None,
            granted: 0,
            refused: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt / self.interval_s).min(CAPACITY);
        self.at = now;
    }

    /// A keyframe forced without asking (periodic, or the uplink's): it draws on the budget,
    /// which may go below zero.
    fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// A client's request: granted (and drawn from the budget) or refused.
    fn client(&mut self, now: Instant) -> bool {
        self.refill(now);
        let window_open = self
            .last_client
            .is_none_or(|t| now.saturating_duration_since(t).as_secs_f64() >= self.interval_s);
        if window_open && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.last_client = Some(now);
            self.granted += 1;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// Forces a keyframe into `encoder` at least every `interval` of its input's timestamps, and
/// gates the RTSP clients' requests for keyframes (see the module).
pub fn keep_interval(encoder: &gst::Element, interval: gst::ClockTime) {
    let (Some(sink), Some(src)) = (encoder.static_pad("sink"), encoder.static_pad("src")) else {
        return;
    };
    let budget = Arc::new(Mutex::new(Budget::new(interval, Instant::now())));
    // Set when a forced keyframe request went into the encoder: the next frame is its keyframe
    // and restarts the periodic count.
    let forced = Arc::new(AtomicBool::new(false));

    // Any thread that pushes the request (the main loop for RTSP clients).
    let (b, f) = (budget.clone(), forced.clone());
    src.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        let Some(ev) = info.event() else {
            return gst::PadProbeReturn::Ok;
        };
        if gst_video::UpstreamForceKeyUnitEvent::parse(ev).is_err() {
            return gst::PadProbeReturn::Ok;
        }
        let from_client = ev
            .structure()
            .and_then(|s| s.get::<bool>(CLIENT_FIELD).ok())
            .unwrap_or(false);
        let now = Instant::now();
        let Ok(mut budget) = b.lock() else {
            return gst::PadProbeReturn::Ok;
        };
        if from_client {
            if !budget.client(now) {
                log::debug!(
                    "RTSP client's keyframe request refused (within the keyframe interval of the last; {} granted, {} refused)",
                    budget.granted,
                    budget.refused
                );
                // HANDLED, not DROP: the event is consumed and the push reports success.
                return gst::PadProbeReturn::Handled;
            }
            log::debug!("RTSP client's keyframe request granted");
        } else {
            budget.take(now);
        }
        f.store(true, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });

    // PTS of the frame the last forced keyframe was made for; u64::MAX until the first frame.
    let last = Arc::new(AtomicU64::new(u64::MAX));
    // Streaming thread of the element before the encoder. The event goes in ahead of the
    // buffer, so that very frame becomes the keyframe.
    sink.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let pts = pts.nseconds();
        let previous = last.load(Ordering::Relaxed);
        // Cleared on every frame, the first included: a request that came before the first
        // frame is spent on it, and must not move the count to the frame after.
        let was_forced = forced.swap(false, Ordering::Relaxed);
        if previous == u64::MAX || pts < previous || was_forced {
            // First frame (the encoder starts with a keyframe anyway), a new segment, or a
            // keyframe a request just forced.
            last.store(pts, Ordering::Relaxed);
            return gst::PadProbeReturn::Ok;
        }
        if pts - previous >= interval.nseconds() {
            last.store(pts, Ordering::Relaxed);
            if let Ok(mut b) = budget.lock() {
                b.take(Instant::now());
            }
            let ev = gst_video::DownstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            if !pad.send_event(ev) {
                log::debug!("encoder refused a keyframe request");
            }
        }
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_lone_client_is_granted_at_once_a_second_within_the_interval_is_not() {
        let t0 = Instant::now();
        let mut b = Budget::new(gst::ClockTime::from_mseconds(1000), t0);
        assert!(b.client(at(t0, 10)));
        assert!(!b.client(at(t0, 20)));
        assert!(!b.client(at(t0, 900)));
        // Periodic keyframe one interval after the granted one; a client after it.
        b.take(at(t0, 1010));
        assert!(b.client(at(t0, 2500)));
    }

    #[test]
    fn a_flood_forces_no_more_than_the_periodic_keyframes_plus_two() {
        let t0 = Instant::now();
        let interval = 500;
        let mut b = Budget::new(gst::ClockTime::from_mseconds(interval), t0);
        // Clients ask every 10 ms for 20 s; the periodic keyframe comes a whole interval after
        // the last forced keyframe of any kind (as the encoder's probe does).
        let (mut last, mut forced) = (0, 0);
        for ms in (0..20_000).step_by(10) {
            if b.client(at(t0, ms)) {
                last = ms;
                forced += 1;
            } else if ms - last >= interval {
                b.take(at(t0, ms));
                last = ms;
                forced += 1;
            }
        }
        assert!(forced <= 20_000 / interval + 2, "{forced} keyframes forced");
        assert!(b.granted >= 1 && b.refused > 1000, "{b:?}");
    }

    /// Keyframe timestamps (ms) an x264 encoder under `keep_interval` makes for frames at
    /// `pts_ms`, after a keyframe request that came before the first frame.
    fn keyframes_for(pts_ms: &[u64]) -> Vec<u64> {
        gst::init().unwrap();
        let pipeline = gst::parse::launch(
            "appsrc name=src format=time caps=video/x-raw,format=I420,width=64,height=64,framerate=0/1 \
             ! x264enc name=encoder tune=zerolatency key-int-max=1000 ! appsink name=out sync=false",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let encoder = pipeline.by_name("encoder").unwrap();
        keep_interval(&encoder, gst::ClockTime::from_mseconds(500));
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        let out = pipeline
            .by_name("out")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        // A branch attached before any frame asks for a keyframe, as the recording does.
        crate::branch::request_keyframe(&out.static_pad("sink").unwrap());
        for &ms in pts_ms {
            let mut buf = gst::Buffer::from_mut_slice(vec![128u8; 64 * 64 * 3 / 2]);
            buf.get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(ms));
            src.push_buffer(buf).unwrap();
        }
        src.end_of_stream().unwrap();
        let mut keys = Vec::new();
        while let Some(sample) = out.try_pull_sample(gst::ClockTime::from_seconds(10)) {
            let buf = sample.buffer().unwrap();
            if !buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                keys.push(buf.pts().unwrap().mseconds());
            }
        }
        pipeline.set_state(gst::State::Null).unwrap();
        // x264enc shifts every timestamp by the same offset (room for its DTS).
        let first = keys.first().copied().unwrap_or(0);
        keys.iter().map(|k| k - first).collect()
    }

    #[test]
    fn a_request_before_the_first_frame_does_not_push_the_next_keyframe_back() {
        // The second frame comes late (frames dropped before the encoder at start-up): the
        // periodic count still runs from the first frame, the keyframe the request was spent on.
        let mut pts = vec![0];
        pts.extend((300..=1000).step_by(50));
        assert_eq!(keyframes_for(&pts)[..2], [0, 500]);
    }
}
