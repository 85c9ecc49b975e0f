//! Frames dropped by the graph's leaky queues. Every branch sits behind a leaky queue so that a
//! slow consumer never stalls the others; what that costs is counted here, per branch, and
//! reported: a warning in the log when a period saw drops, the totals in systemd's STATUS= line
//! and in the summary at exit.
//!
//! Queues are found as they join the pipeline (`deep-element-added`), so a branch attached later
//! is counted without any code of its own. The branch is the pipeline's direct child holding the
//! queue ("encode", "display", "recording", "uplink", one bin per RTSP media …).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

#[derive(Default)]
struct Counter {
    /// Buffers that entered the queue.
    seen: AtomicU64,
    /// Buffers the queue threw away because it was full.
    dropped: AtomicU64,
}

/// Totals per branch, shared with the streaming threads that count.
#[derive(Clone, Default)]
pub struct Drops {
    counters: Arc<Mutex<BTreeMap<String, Arc<Counter>>>>,
    /// What the last report showed, to report only what is new. Main-loop thread.
    reported: Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
}

/// The name of the pipeline's direct child that holds `element`.
fn branch_of(pipeline: &gst::Pipeline, element: &gst::Element) -> String {
    let mut obj: gst::Object = element.clone().upcast();
    while let Some(parent) = obj.parent() {
        if &parent == pipeline.upcast_ref::<gst::Object>() {
            break;
        }
        obj = parent;
    }
    // A branch's bins are numbered per attachment (`uplink-7`): count them as one.
    let name = obj.name();
    match name.rsplit_once('-') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base.into(),
        _ => name.to_string(),
    }
}

impl Drops {
    /// Watches every leaky queue added to `pipeline` from now on.
    pub fn watch(&self, pipeline: &gst::Pipeline) {
        let this = self.clone();
        let weak = pipeline.downgrade();
        // Whichever thread adds the element (main loop, or a streaming thread for the elements
        // rtspclientsink creates); only counters are touched here.
        pipeline.connect_deep_element_added(move |_, _, element| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            if element.factory().is_none_or(|f| f.name() != "queue") {
                return;
            }
            let leaky = element.property_value("leaky");
            let leaky = leaky.serialize().map(|s| s.to_string()).unwrap_or_default();
            if leaky == "no" || leaky == "0" || leaky.is_empty() {
                return;
            }
            this.count(&branch_of(&pipeline, element), element);
        });
    }

    fn count(&self, branch: &str, queue: &gst::Element) {
        let counter = self.counter(branch);
        let held = counter.clone();
        // The queue's streaming thread: frames held back after an overrun are dropped too.
        crate::gop_gate::install(queue, move || {
            held.dropped.fetch_add(1, Ordering::Relaxed);
        });
        let c = counter.clone();
        // Streaming thread of the upstream element: with only a buffer limit, each overrun of a
        // leaky queue throws away exactly one buffer.
        queue.connect("overrun", false, move |_| {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            None
        });
        if let Some(pad) = queue.static_pad("sink") {
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                counter.seen.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        }
    }

    fn counter(&self, branch: &str) -> Arc<Counter> {
        self.counters
            .lock()
            .unwrap()
            .entry(branch.to_string())
            .or_default()
            .clone()
    }

    /// Counts the frames a camera source delivers (the "camera" branch). Main-loop thread.
    pub fn count_camera(&self, src_pad: &gst::Pad) {
        let counter = self.counter("camera");
        // Streaming thread of the source.
        src_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.seen.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }

    /// Frames the camera lost before they reached the graph: v4l2src sees gaps in the driver's
    /// sequence numbers and says so in a QoS message. Main-loop thread.
    pub fn camera_lost(&self, frames: u64) {
        let counter = self.counter("camera");
        counter.seen.fetch_add(frames, Ordering::Relaxed);
        counter.dropped.fetch_add(frames, Ordering::Relaxed);
    }

    /// (branch, seen, dropped) for every branch that has had a leaky queue.
    pub fn totals(&self) -> Vec<(String, u64, u64)> {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    c.seen.load(Ordering::Relaxed),
                    c.dropped.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// "dropped frames: encode 34 of 250 (13.6 %), display 0 of 250".
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .totals()
            .iter()
            .map(|(name, seen, dropped)| {
                format!("{name} {dropped} of {seen}{}", percent(*dropped, *seen))
            })
            .collect();
        if parts.is_empty() {
            "dropped frames: none counted yet".into()
        } else {
            format!("dropped frames: {}", parts.join(", "))
        }
    }

    /// Logs the drops since the last call, if any, and returns the summary. Main-loop thread.
    pub fn report(&self) -> String {
        let mut reported = self.reported.lock().unwrap();
        let mut news = Vec::new();
        for (name, seen, dropped) in self.totals() {
            let (seen0, dropped0) = reported
                .insert(name.clone(), (seen, dropped))
                .unwrap_or((0, 0));
            let (seen, dropped) = (seen - seen0, dropped - dropped0);
            if dropped > 0 {
                news.push(format!(
                    "{name} {dropped} of {seen}{}",
                    percent(dropped, seen)
                ));
            }
        }
        if !news.is_empty() {
            log::warn!(
                "frames dropped by leaky queues since the last report: {} (a consumer fell behind)",
                news.join(", ")
            );
        }
        self.summary()
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        String::new()
    } else {
        format!(" ({:.1} %)", part as f64 * 100.0 / whole as f64)
    }
}
