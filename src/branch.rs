//! Attaching and detaching consumer branches on a running tee without disturbing the others.

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

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

/// Whether a bus message source belongs to the attached branch or to the last failed one (kept
/// alive so that its late messages can still be traced: a disposed bin unparents its children).
pub fn owned_by(attached: Option<&Branch>, failed: Option<&gst::Bin>, obj: &gst::Object) -> bool {
    attached
        .map(|b| &b.bin)
        .into_iter()
        .chain(failed)
        .any(|b| contains(b, obj))
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
    let name = bin.name().to_string();
    let sink = bin
        .static_pad("sink")
        .ok_or_else(|| anyhow!("{name} has no sink pad"))?;
    pipeline.add(&bin)?;
    // Running before linked: data must not reach elements that are still changing state (a
    // muxer or sink created on the first buffer would otherwise stay PAUSED and block).
    if bin.sync_state_with_parent().is_err() {
        let _ = bin.set_state(gst::State::Null);
        let _ = pipeline.remove(&bin);
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

/// Releases a branch that is already unlinked or never flowed.
/// Runs on the main-loop thread: a state change must not happen in a streaming thread.
fn discard(pipeline: &gst::Pipeline, tee: &gst::Element, branch: &Branch) {
    tee.release_request_pad(&branch.tee_pad);
    let _ = branch.bin.set_state(gst::State::Null);
    let _ = pipeline.remove(&branch.bin);
}

/// Detaches a branch between two buffers: an IDLE probe unlinks it (in whichever thread the tee
/// pad is idle in) and the main loop then stops and removes it.
pub fn detach(pipeline: &gst::Pipeline, tee: &gst::Element, branch: Branch) {
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
                log::debug!("branch {} removed", branch.name);
            }
        });
        gst::PadProbeReturn::Remove
    });
}
