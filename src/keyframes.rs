//! Keyframes by time, not by frame count. An encoder's own keyframe interval counts frames, so
//! it stretches whenever fewer frames arrive than configured: a camera slower than asked
//! (vivid gives 12.5 fps at 720p), one that lengthens its exposure in low light, or frames the
//! leaky queue before the encoder drops on a busy CPU. The recording's power-cut bound and a
//! late joiner's wait are both a keyframe interval in time, so the interval is kept in time
//! here: a keyframe is requested of the encoder once `interval` of stream time has passed since
//! the last request. The encoder's own interval is only a backstop (twice as long).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gst::prelude::*;

/// Forces a keyframe into `encoder` at least every `interval` of its input's timestamps.
pub fn keep_interval(encoder: &gst::Element, interval: gst::ClockTime) {
    let Some(pad) = encoder.static_pad("sink") else {
        return;
    };
    // PTS of the frame the last request was made for; u64::MAX until the first frame.
    let last = Arc::new(AtomicU64::new(u64::MAX));
    // Streaming thread of the element before the encoder. The event goes in ahead of the
    // buffer, so that very frame becomes the keyframe.
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let pts = pts.nseconds();
        let previous = last.load(Ordering::Relaxed);
        if previous == u64::MAX || pts < previous {
            // First frame (the encoder starts with a keyframe anyway) or a new segment.
            last.store(pts, Ordering::Relaxed);
            return gst::PadProbeReturn::Ok;
        }
        if pts - previous >= interval.nseconds() {
            last.store(pts, Ordering::Relaxed);
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
