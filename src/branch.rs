//! Attaching and detaching consumer branches on a running tee without disturbing the others.
//!
//! A detached branch is retired, not forgotten: it stays in the pipeline until its elements
//! have stopped, which for an rtspclientsink on a stalled link can take its whole TCP timeout,
//! and an error it posts meanwhile must be told apart from one of the branch that replaced it.
//! So every bin gets a name of its own (`uplink-7`), and retired bins are listed here until
//! they have left the pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

/// Bins detached from their tee and not yet out of the pipeline.
static RETIRED: Mutex<Vec<gst::Bin>> = Mutex::new(Vec::new());

/// Numbers the bins attached, so that no two share a name in the pipeline.
static ATTACHED: AtomicU64 = AtomicU64::new(0);

/// A bin hanging off a tee request pad.
#[derive(Debug, Clone)]
pub struct Branch {
    pub name: String,
    pub bin: gst::Bin,
    pub tee_pad: gst::Pad,
}

/// Builds a bin from a gst-launch description with ghost pads for its unlinked ends.
pub fn bin_from_description(name: &str, description: &str) -> Result<gst::Bin> {
    let bin =
        gst::parse::bin_from_description_full(description, true, None, gst::ParseFlags::empty())
            .with_context(|| format!("cannot build {name}: {description}"))?
            .downcast::<gst::Bin>()
            .map_err(|_| anyhow!("{name}: description did not produce a bin"))?;
    bin.set_property("name", name);
    Ok(bin)
}

/// Opens `element` (to READY) on the calling thread; on failure the error says why, in the
/// words of the element that refused (a lone element or bin has no bus, so it is opened inside
/// a pipeline of its own and taken out again).
pub fn open(element: &gst::Element) -> Result<()> {
    let probe = gst::Pipeline::new();
    probe.add(element)?;
    let opened = element.set_state(gst::State::Ready).is_ok();
    let why = (!opened).then(|| {
        probe
            .bus()
            .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(format!(
                    "{}: {} ({})",
                    e.src().map(|s| s.name().to_string()).unwrap_or_default(),
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                )),
                _ => None,
            })
            .unwrap_or_else(|| "it refused to open".into())
    });
    if !opened {
        let _ = element.set_state(gst::State::Null);
    }
    probe.remove(element)?;
    match why {
        None => Ok(()),
        Some(why) => Err(anyhow!("{why}")),
    }
}

/// Whether `obj` (a bus message source) lives inside `bin`.
pub fn contains(bin: &gst::Bin, obj: &gst::Object) -> bool {
    obj == bin.upcast_ref::<gst::Object>() || obj.has_as_ancestor(bin)
}

/// Whether a bus message source belongs to the attached branch.
pub fn owned_by(attached: Option<&Branch>, obj: &gst::Object) -> bool {
    attached.is_some_and(|b| contains(&b.bin, obj))
}

/// The name of the retired bin `obj` lives in, if any: its late messages are only reported.
pub fn retired(obj: &gst::Object) -> Option<String> {
    RETIRED
        .lock()
        .ok()?
        .iter()
        .find(|b| contains(b, obj))
        .map(|b| b.name().to_string())
}

/// How many retired bins have not left the pipeline yet.
pub fn retired_count() -> usize {
    RETIRED.lock().map(|r| r.len()).unwrap_or(0)
}

/// Adds `bin` to `pipeline` and links it to a new request pad of `tee`.
///
/// Runs on the main-loop thread. The new pad's RECONFIGURE events are dropped: they would travel
/// up to the encoder and make x264 renegotiate (a ~25 ms stall felt by every other consumer).
/// With `keyframe`, an IDR is requested so the branch starts on a decodable frame.
pub fn attach(
    pipeline: &gst::Pipeline,
    tee: &gst::Element,
    bin: gst::Bin,
    keyframe: bool,
) -> Result<Branch> {
    let name = format!(
        "{}-{}",
        bin.name(),
        ATTACHED.fetch_add(1, Ordering::Relaxed) + 1
    );
    bin.set_property("name", &name);
    let sink = bin
        .static_pad("sink")
        .ok_or_else(|| anyhow!("{name} has no sink pad"))?;
    pipeline.add(&bin)?;
    // Running before linked: data must not reach elements that are still changing state (a
    // muxer or sink created on the first buffer would otherwise stay PAUSED and block).
    if bin.sync_state_with_parent().is_err() {
        retire(pipeline, &bin);
        return Err(anyhow!("{name} failed to start"));
    }
    let tee_pad = tee
        .request_pad_simple("src_%u")
        .ok_or_else(|| anyhow!("tee refused a new pad for {name}"))?;
    tee_pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, |_, info| {
        match info.event() {
            // HANDLED, not DROP: GStreamer 1.22 unrefs a NULL event when a probe drops one
            // inside gst_pad_link (a CRITICAL); HANDLED consumes it cleanly.
            Some(ev) if ev.type_() == gst::EventType::Reconfigure => gst::PadProbeReturn::Handled,
            _ => gst::PadProbeReturn::Ok,
        }
    });
    let branch = Branch {
        name: name.clone(),
        bin: bin.clone(),
        tee_pad: tee_pad.clone(),
    };
    if let Err(e) = tee_pad.link(&sink) {
        discard(pipeline, tee, &branch);
        return Err(anyhow!("cannot link {name} to {}: {e:?}", tee.name()));
    }
    if keyframe {
        request_keyframe(&sink);
    }
    Ok(branch)
}

/// Asks the encoder upstream of `sink_pad` for an IDR with SPS/PPS.
pub fn request_keyframe(sink_pad: &gst::Pad) {
    let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    sink_pad.push_event(ev);
}

/// Releases a branch that is already unlinked or never flowed. Main-loop thread (releasing a
/// tee pad there); stopping the bin, which may block, happens on a thread of its own.
fn discard(pipeline: &gst::Pipeline, tee: &gst::Element, branch: &Branch) {
    tee.release_request_pad(&branch.tee_pad);
    retire(pipeline, &branch.bin);
}

/// Stops `bin` and takes it out of `pipeline` off the calling thread, keeping it listed as
/// retired until it is out.
fn retire(pipeline: &gst::Pipeline, bin: &gst::Bin) {
    if let Ok(mut r) = RETIRED.lock() {
        if !r.contains(bin) {
            r.push(bin.clone());
        }
    }
    let (pipeline, bin) = (pipeline.clone(), bin.clone());
    crate::offload::detached("retire-branch", move || {
        let started = std::time::Instant::now();
        let _ = bin.set_state(gst::State::Null);
        let _ = pipeline.remove(&bin);
        if let Ok(mut r) = RETIRED.lock() {
            r.retain(|b| b != &bin);
        }
        log::debug!(
            "branch {} removed ({} ms to stop)",
            bin.name(),
            started.elapsed().as_millis()
        );
    });
}

/// Detaches a branch between two buffers: an IDLE probe unlinks it (in whichever thread the tee
/// pad is idle in) and the main loop then releases its tee pad; the bin is retired.
pub fn detach(pipeline: &gst::Pipeline, tee: &gst::Element, branch: Branch) {
    if let Ok(mut r) = RETIRED.lock() {
        r.push(branch.bin.clone());
    }
    let pipeline = pipeline.downgrade();
    let tee = tee.downgrade();
    let pad = branch.tee_pad.clone();
    pad.add_probe(gst::PadProbeType::IDLE, move |pad, _| {
        if let Some(peer) = pad.peer() {
            let _ = pad.unlink(&peer);
        }
        let (pipeline, tee, branch) = (pipeline.clone(), tee.clone(), branch.clone());
        // Deferred even on the main thread: never release a pad from inside its own probe.
        glib::idle_add_once(move || {
            if let (Some(pipeline), Some(tee)) = (pipeline.upgrade(), tee.upgrade()) {
                discard(&pipeline, &tee, &branch);
            }
        });
        gst::PadProbeReturn::Remove
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Runs the default main context until `done` or 10 s.
    fn run_until(done: impl Fn() -> bool) {
        let ctx = glib::MainContext::default();
        let t0 = Instant::now();
        while !done() && t0.elapsed() < Duration::from_secs(10) {
            while ctx.iteration(false) {}
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_detached_branch_is_known_as_retired_until_it_has_left_the_pipeline() {
        gst::init().unwrap();
        let ctx = glib::MainContext::default();
        let _guard = ctx.acquire().unwrap();
        let pipeline = gst::Pipeline::new();
        let src = gst::ElementFactory::make("videotestsrc")
            .property("is-live", true)
            .build()
            .unwrap();
        let tee = gst::ElementFactory::make("tee").build().unwrap();
        pipeline.add_many([&src, &tee]).unwrap();
        src.link(&tee).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let make = || bin_from_description("uplink", "queue ! fakesink name=end").unwrap();
        let first = attach(&pipeline, &tee, make(), false).unwrap();
        let end = first.bin.by_name("end").unwrap();
        detach(&pipeline, &tee, first.clone());
        // At once, and while it is still in the pipeline, its elements are the retired bin's;
        // the branch attached in its place has a name of its own.
        assert_eq!(retired(end.upcast_ref()), Some(first.name.clone()));
        let second = attach(&pipeline, &tee, make(), false).unwrap();
        assert_ne!(second.name, first.name);
        assert!(retired(second.bin.upcast_ref()).is_none());
        run_until(|| first.bin.parent().is_none());
        assert!(first.bin.parent().is_none(), "never left the pipeline");
        run_until(|| retired(end.upcast_ref()).is_none());
        assert_eq!(retired(end.upcast_ref()), None);
        pipeline.set_state(gst::State::Null).unwrap();
    }
}
