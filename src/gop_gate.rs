//! Whole GOPs or nothing. A branch that falls behind drops frames (its leaky queue, or the
//! RTSP media's appsrc when full), and an H.264 frame after a dropped one refers to a picture
//! the consumer never got: the recording, an RTSP client or the media server would show a
//! corrupt picture until the next IDR. So once a branch has dropped a frame it drops every
//! frame after it up to the next keyframe, and asks the encoder for one (through the keyframe
//! gate, `keyframes::request_for_client`, so that stalling branches cannot flood the encoder
//! with IDRs; a refused request waits at most one keyframe interval for the periodic one).
//!
//! Raw video has no delta frames: a raw branch's gate reopens at its next frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gst::prelude::*;

/// The state of one branch's gate, shared by the thread that drops (upstream) and the one that
/// passes frames on.
#[derive(Debug, Default)]
pub struct Gate {
    /// A frame was dropped and no keyframe has passed since.
    broken: AtomicBool,
}

impl Gate {
    /// A frame was dropped. Returns true when this breaks the stream (the first drop since the
    /// last keyframe): the caller then asks for a keyframe.
    pub fn dropped(&self) -> bool {
        !self.broken.swap(true, Ordering::SeqCst)
    }

    /// Whether `buf` may go on: false for a delta frame after a drop and before a keyframe.
    pub fn pass(&self, buf: &gst::BufferRef) -> bool {
        if !self.broken.load(Ordering::SeqCst) {
            return true;
        }
        if buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
            return false;
        }
        self.broken.store(false, Ordering::SeqCst);
        true
    }
}

/// Whether `pad` carries H.264 (a keyframe request means something upstream).
fn is_h264(pad: &gst::Pad) -> bool {
    pad.current_caps()
        .and_then(|c| c.structure(0).map(|s| s.name() == "video/x-h264"))
        .unwrap_or(false)
}

/// Puts a gate behind the leaky `queue`: after the queue throws a frame away, what it lets out
/// is held back until a keyframe. `on_drop` is called for every frame held back.
pub fn install(queue: &gst::Element, on_drop: impl Fn() + Send + Sync + 'static) {
    let (Some(sink), Some(src)) = (queue.static_pad("sink"), queue.static_pad("src")) else {
        return;
    };
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    // Streaming thread of the element upstream (the tee's), before the queue leaks a frame.
    queue.connect("overrun", false, move |_| {
        if g.dropped() && is_h264(&sink) {
            crate::keyframes::request_for_client(&sink);
        }
        None
    });
    // The queue's own streaming thread.
    src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buf) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        if gate.pass(buf) {
            gst::PadProbeReturn::Ok
        } else {
            on_drop();
            gst::PadProbeReturn::Drop
        }
    });
}
