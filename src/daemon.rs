//! The running device: one pipeline, its bus, its branches and their recovery.
//!
//! Everything here runs on the main-loop thread (bus watch, signal sources, timers, the RTSP
//! server's clients), so the state is a plain `RefCell`; streaming threads only ever hand work
//! over through `glib::idle_add_once`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;

use crate::backoff::Retry;
use crate::branch::{self, Branch};
use crate::camera;
use crate::config::{Config, ConfigError, SourceKind};
use crate::drops::Drops;
use crate::offload;
use crate::plan::{self, SourceOutput};
use crate::profile::Profiles;
use crate::recording::{Recorder, Recovery};
use crate::rtsp::RtspServer;
use crate::signal::{self, Command};
use crate::status;
use crate::uplink::Uplink;

struct State {
    cfg: Config,
    profiles: Profiles,
    pipeline: gst::Pipeline,
    raw_tee: gst::Element,
    enc_tee: gst::Element,
    raw_format: String,
    source: Option<gst::Bin>,
    /// Set while a source is being opened off the main loop.
    source_opening: bool,
    /// Set until the first source attempt is over; the display is attached then.
    display_after_source: bool,
    source_retry: Retry,
    /// The camera streamed last, known once it has been opened: found again by this identity
    /// after an unplug, whatever node it comes back as.
    camera: Option<camera::Identity>,
    /// Set while a watch for the unplugged camera's return is running.
    camera_watch: bool,
    /// The camera's device number (st_rdev), to find handles on it left open after it failed.
    camera_rdev: Option<u64>,
    /// Set once stopping: only then may a source's end-of-stream travel down the graph.
    eos_allowed: Arc<AtomicBool>,
    display: Option<Branch>,
    display_description: Option<String>,
    display_retry: Retry,
    rtsp: Option<RtspServer>,
    recorder: Option<Recorder>,
    /// Recordings from afar: listings and playback sessions (with remote viewing).
    playback: Option<Rc<crate::playback::Playback>>,
    /// Set while the card is checked off the main loop before recording attaches.
    recording_checking: bool,
    recording_retry: Retry,
    uplink: Option<Uplink>,
    uplink_retry: Retry,
    /// Viewers are watching until then (renewed by their heartbeats).
    viewers: HashMap<String, Instant>,
    /// Paths to announce with `bridge`.
    bridge_tx: Option<tokio::sync::mpsc::Sender<signal::Bridge>>,
    /// Answers to viewers' requests (`status`).
    answer_tx: Option<tokio::sync::mpsc::Sender<signal::Answer>>,
    status: status::Reporter,
    main_loop: glib::MainLoop,
    exit_code: i32,
    stopping: bool,
    drops: Drops,
}

type Shared = Rc<RefCell<State>>;

fn make(factory: &str, name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| anyhow!("GStreamer element {factory} is not installed"))
}

/// Builds the fixed part of the graph: tees and, unless the camera's H.264 is passed through,
/// the one encoder between them.
fn build_core(
    cfg: &Config,
    profiles: &Profiles,
    passthrough: bool,
    drops: &Drops,
) -> Result<(gst::Pipeline, gst::Element, gst::Element, String)> {
    let pipeline = gst::Pipeline::with_name("camstream");
    drops.watch(&pipeline);
    let raw_tee = make("tee", "raw")?;
    let enc_tee = make("tee", "enc")?;
    for t in [&raw_tee, &enc_tee] {
        t.set_property("allow-not-linked", true);
    }
    pipeline.add_many([&raw_tee, &enc_tee])?;
    let raw_format;
    if passthrough {
        raw_format = "I420".to_string();
        let dec = plan::first_usable(&profiles.board.h264_decoders)
            .ok_or_else(|| anyhow!("no usable H.264 decoder for the display"))?;
        let bin = branch::bin_from_description(
            "decode",
            &format!("queue max-size-buffers=5 max-size-bytes=0 max-size-time=0 leaky=downstream ! {dec} ! videoconvert"),
        )?;
        pipeline.add(&bin)?;
        gst::Element::link_many([&enc_tee, bin.upcast_ref(), &raw_tee])?;
    } else {
        let enc = plan::plan_encoder(cfg, profiles)?;
        for s in &enc.skipped {
            log::warn!("encoder {}: property skipped: {s}", enc.element);
        }
        if enc.fallback_from.is_empty() {
            log::info!("encoder: {}", enc.element);
        } else {
            log::warn!("encoder: {}", enc.summary());
        }
        raw_format = profiles.encoder_input_format(&enc.element).to_string();
        let bin = branch::bin_from_description("encode", &enc.description)?;
        if let Some(encoder) = bin.by_name("encoder") {
            let ms = cfg.encoder.keyframe_interval_ms.get() as u64;
            crate::keyframes::keep_interval(&encoder, gst::ClockTime::from_mseconds(ms));
        }
        pipeline.add(&bin)?;
        gst::Element::link_many([&raw_tee, bin.upcast_ref(), &enc_tee])?;
    }
    Ok((pipeline, raw_tee, enc_tee, raw_format))
}

fn wants_passthrough(cfg: &Config, profiles: &Profiles) -> bool {
    cfg.camera.h264_passthrough
        && cfg.camera.source == crate::config::SourceKind::V4l2
        && plan::plan_source(cfg, profiles, "I420")
            .map(|s| s.output == SourceOutput::H264)
            .unwrap_or(false)
}

/// Builds and links a new source. Main-loop thread.
/// A source opened off the main loop, to be linked in.
struct OpenedSource {
    /// The settings it was opened with (the camera's node as found).
    cfg: Config,
    plan: plan::SourcePlan,
    /// Open (READY): the camera's device is open and its formats known.
    bin: gst::Bin,
}

/// Finds the camera's node, plans the source and opens it. Runs on a thread of its own: a USB
/// camera can take seconds to open, and the main loop feeds the watchdog.
fn open_source(
    mut cfg: Config,
    profiles: Profiles,
    raw_format: String,
    known: Option<camera::Identity>,
) -> Result<OpenedSource> {
    if cfg.camera.source == SourceKind::V4l2 {
        if let Some(node) = camera_node(&cfg.camera.device, known.as_ref()) {
            if node != cfg.camera.device {
                log::info!("source: the camera is now {node}");
            }
            cfg.camera.device = node;
        }
    }
    let plan = plan::plan_source(&cfg, &profiles, &raw_format)?;
    let bin = branch::bin_from_description("source", &plan.description)?;
    branch::open(bin.upcast_ref())
        .with_context(|| format!("cannot open the source ({})", plan.note))?;
    Ok(OpenedSource { cfg, plan, bin })
}

/// Links an opened source in and starts it. Main-loop thread.
fn start_source(st: &Shared, opened: OpenedSource) -> Result<()> {
    let OpenedSource { cfg, plan, bin } = opened;
    let pipeline = st.borrow().pipeline.clone();
    if let Some(qr) = bin.by_name(plan::TIMESTAMP_QR) {
        crate::stamp::install(&qr);
    }
    if let Some(pad) = bin.static_pad("src") {
        // A failing source ends its stream (basesrc pushes end-of-stream after an error): that
        // must not reach the encoder, which would drain and refuse further frames, nor the RTSP
        // clients, which would hang up. The camera is replaced; the stream goes on.
        let allowed = st.borrow().eos_allowed.clone();
        // Streaming thread of the source.
        pad.add_probe(
            gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| match info.event() {
                Some(ev)
                    if ev.type_() == gst::EventType::Eos && !allowed.load(Ordering::SeqCst) =>
                {
                    gst::PadProbeReturn::Drop
                }
                _ => gst::PadProbeReturn::Ok,
            },
        );
    }
    let target = match plan.output {
        SourceOutput::Raw => st.borrow().raw_tee.clone(),
        SourceOutput::H264 => st.borrow().enc_tee.clone(),
    };
    pipeline.add(&bin)?;
    if let Err(e) = bin.link(&target) {
        let _ = bin.set_state(gst::State::Null);
        let _ = pipeline.remove(&bin);
        bail!("cannot link source: {e}");
    }
    st.borrow_mut().source = Some(bin.clone());
    if bin.sync_state_with_parent().is_err() {
        stop_source(st);
        bail!("source failed to start ({})", plan.note);
    }
    {
        let mut s = st.borrow_mut();
        s.source_retry.started();
        if cfg.camera.source == SourceKind::V4l2 {
            if s.camera.is_none() {
                s.camera = camera::identify(&cfg.camera.device);
            }
            s.camera_rdev = camera::rdev(&cfg.camera.device);
        }
    }
    log::info!("source: {}", plan.note);
    if let Some(pad) = bin.static_pad("src") {
        report_real_rate(&pad);
        st.borrow().drops.count_camera(&pad);
    }
    Ok(())
}

/// Logs the rate the source really delivers, once, over its first seconds: a camera may give
/// fewer frames than its mode says (exposure in low light, a loopback fed slower).
fn report_real_rate(pad: &gst::Pad) {
    let first: std::sync::Mutex<Option<(gst::ClockTime, u64)>> = Default::default();
    // Streaming thread of the source.
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let mut first = first.lock().unwrap();
        let (t0, n) = first.get_or_insert((pts, 0));
        *n += 1;
        let span = pts.saturating_sub(*t0);
        if span < gst::ClockTime::from_seconds(3) {
            return gst::PadProbeReturn::Ok;
        }
        let real = (*n - 1) as f64 / span.seconds_f64();
        let nominal = pad
            .current_caps()
            .and_then(|c| {
                c.structure(0)
                    .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
            })
            .map(|f| format!("{}/{}", f.numer(), f.denom()))
            .unwrap_or_else(|| "unknown".into());
        log::info!("source: delivers {real:.1} frames/s (negotiated rate {nominal})");
        gst::PadProbeReturn::Remove
    });
}

/// The frames a source's QoS message says were lost: v4l2src gives their duration (lost frames
/// times the frame duration), not a count.
fn camera_lost_frames(q: &gst::message::Qos, src: &gst::Object) -> u64 {
    let (_, _, _, _, duration) = q.get();
    let (_, dropped) = q.stats();
    if dropped.value() > 0 {
        return dropped.value() as u64;
    }
    let Some(duration) = duration else { return 0 };
    let interval = src
        .downcast_ref::<gst::Element>()
        .and_then(|e| e.static_pad("src"))
        .and_then(|p| p.current_caps())
        .and_then(|c| {
            c.structure(0)
                .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        })
        .filter(|f| f.numer() > 0)
        .map(|f| 1e9 * f.denom() as f64 / f.numer() as f64);
    match interval {
        Some(ns) => (duration.nseconds() as f64 / ns).round() as u64,
        None => 1,
    }
}

fn stop_source(st: &Shared) {
    let (bin, pipeline) = {
        let mut s = st.borrow_mut();
        (s.source.take(), s.pipeline.clone())
    };
    if let Some(bin) = bin {
        if let Some(peer) = bin.static_pad("src").and_then(|p| p.peer()) {
            if let Some(src) = bin.static_pad("src") {
                let _ = src.unlink(&peer);
            }
        }
        let _ = bin.set_state(gst::State::Null);
        let _ = pipeline.remove(&bin);
        drop(bin);
        // GStreamer 1.22's v4l2 buffer pool can outlive a camera that failed mid-stream and keep
        // its own handle on the device open: the kernel then gives a replugged camera another
        // node, and a camera that reconnects only once closed (vivid's disconnect) never does.
        if let Some(rdev) = st.borrow().camera_rdev {
            let n = camera::release_handles(rdev);
            if n > 0 {
                log::warn!("source: released {n} handle(s) on the failed camera left open by its buffer pool");
            }
        }
    }
}

/// The node to open for the camera: the configured one while it is the known camera (or none
/// is known yet and it exists), else wherever the known camera is now (or, none known, the
/// first camera there is).
fn camera_node(configured: &str, known: Option<&camera::Identity>) -> Option<String> {
    match known {
        None if std::path::Path::new(configured).exists() => Some(configured.to_string()),
        None => camera::first_camera(),
        Some(id) if camera::identify(configured).as_ref() == Some(id) => {
            Some(configured.to_string())
        }
        Some(id) => camera::find(id),
    }
}

/// Tries to (re)start the source now, or later with backoff.
fn try_source(st: &Shared) {
    let (cfg, profiles, raw_format, known) = {
        let mut s = st.borrow_mut();
        if s.stopping || s.source.is_some() || s.source_opening {
            return;
        }
        s.source_opening = true;
        (
            s.cfg.clone(),
            s.profiles.clone(),
            s.raw_format.clone(),
            s.camera.clone(),
        )
    };
    let st = st.clone();
    offload::offload(
        "open-source",
        move || open_source(cfg, profiles, raw_format, known),
        move |opened| {
            let stopping = {
                let mut s = st.borrow_mut();
                s.source_opening = false;
                s.stopping
            };
            match opened {
                Ok(o) if stopping => {
                    let _ = o.bin.set_state(gst::State::Null);
                }
                Ok(o) => {
                    if let Err(e) = start_source(&st, o) {
                        retry_source(&st, &format!("{e:#}"));
                    }
                }
                Err(e) => retry_source(&st, &format!("{e:#}")),
            }
            // The display joins once the first source attempt is over, as it did when the
            // source started on the main loop: its branch then negotiates with a running
            // source.
            let display_waits = std::mem::take(&mut st.borrow_mut().display_after_source);
            if display_waits {
                try_display(&st);
            }
        },
    );
}

fn retry_source(st: &Shared, why: &str) {
    // A camera that has gone (unplugged, its driver unbound) is waited for, not backed off
    // from: it is started again as soon as it is back, under whichever node.
    let gone = {
        let s = st.borrow();
        s.cfg.camera.source == SourceKind::V4l2
            && s.camera.is_some()
            && camera_node(&s.cfg.camera.device, s.camera.as_ref()).is_none()
    };
    if gone {
        log::error!("source: {why}; the camera is gone, waiting for it to come back");
        watch_for_camera(st);
        return;
    }
    let again = st.clone();
    let when = retrying(
        st.borrow_mut()
            .source_retry
            .schedule(move || try_source(&again)),
    );
    log::error!("source: {why}; {when}");
}

/// How the next attempt was scheduled, for the log.
fn retrying(delay: Option<Duration>) -> String {
    match delay {
        Some(d) => format!("retrying in {} s", d.as_secs()),
        None => "a retry is already scheduled".into(),
    }
}

/// Polls for the known camera's return (four times a second: a udev event would be as quick,
/// and this needs no netlink socket), then starts it at once. Main-loop thread.
fn watch_for_camera(st: &Shared) {
    if std::mem::replace(&mut st.borrow_mut().camera_watch, true) {
        return;
    }
    let st = st.clone();
    glib::timeout_add_local(Duration::from_millis(250), move || {
        let back = {
            let s = st.borrow();
            if s.stopping || s.source.is_some() || s.source_opening {
                // Stopping, or started by the back-off path meanwhile: nothing to wait for.
                Err(())
            } else {
                Ok(camera_node(&s.cfg.camera.device, s.camera.as_ref()))
            }
        };
        match back {
            Ok(None) => return glib::ControlFlow::Continue,
            Ok(Some(node)) => log::info!("source: the camera is back as {node}"),
            Err(()) => {}
        }
        st.borrow_mut().camera_watch = false;
        try_source(&st);
        glib::ControlFlow::Break
    });
}

fn try_display(st: &Shared) {
    let desc = {
        let s = st.borrow();
        if s.stopping || s.display.is_some() {
            return;
        }
        let Some(d) = s.display_description.clone() else {
            return;
        };
        d
    };
    // Opening a display can block (kmssink takes ~1.3 s to give up without DRM): do it on a
    // helper thread so the main loop, which also serves RTSP clients, never waits for it.
    let (tx, rx) = std::sync::mpsc::channel::<Result<gst::Bin>>();
    std::thread::spawn(move || {
        let opened = branch::bin_from_description("display", &desc).and_then(|bin| {
            branch::open(bin.upcast_ref()).context("display sink does not open")?;
            Ok(bin)
        });
        let _ = tx.send(opened);
    });
    let st = st.clone();
    glib::timeout_add_local(Duration::from_millis(50), move || {
        let opened = match rx.try_recv() {
            Err(std::sync::mpsc::TryRecvError::Empty) => return glib::ControlFlow::Continue,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Err(anyhow!("display probe thread died"))
            }
            Ok(r) => r,
        };
        let (pipeline, tee) = {
            let s = st.borrow();
            (s.pipeline.clone(), s.raw_tee.clone())
        };
        let result = opened.and_then(|bin| branch::attach(&pipeline, &tee, bin, false));
        match result {
            Ok(b) => {
                log::info!("display: attached");
                let mut s = st.borrow_mut();
                s.display = Some(b);
                s.display_retry.started();
            }
            Err(e) => retry_display(&st, &format!("{e:#}")),
        }
        glib::ControlFlow::Break
    });
}

fn retry_display(st: &Shared, why: &str) {
    let again = st.clone();
    let when = retrying(
        st.borrow_mut()
            .display_retry
            .schedule(move || try_display(&again)),
    );
    log::warn!("display: {why}; other branches go on, {when}");
}

fn try_recording(st: &Shared) {
    let check = {
        let mut guard = st.borrow_mut();
        let s = &mut *guard;
        if s.stopping || s.recording_checking {
            return;
        }
        match s.recorder.as_ref() {
            None => return,
            Some(r) if r.is_attached() => return,
            Some(r) => r.card_check(),
        }
    };
    st.borrow_mut().recording_checking = true;
    let st = st.clone();
    offload::offload("check-card", check, move |checked| {
        let result = {
            let mut guard = st.borrow_mut();
            let s = &mut *guard;
            s.recording_checking = false;
            if s.stopping {
                return;
            }
            match (checked, s.recorder.as_mut()) {
                (Ok(boot), Some(r)) if !r.is_attached() => r.attach(&s.pipeline, &s.enc_tee, boot),
                (Err(e), _) => Err(e),
                _ => return,
            }
        };
        match result {
            Ok(()) => st.borrow_mut().recording_retry.started(),
            Err(e) => retry_recording(&st, &format!("{e:#}")),
        }
    });
}

fn retry_recording(st: &Shared, why: &str) {
    let again = st.clone();
    let when = retrying(
        st.borrow_mut()
            .recording_retry
            .schedule(move || try_recording(&again)),
    );
    log::error!("recording: {why}; RTSP and display go on; {when}");
}

/// After a full disk: poll until retention or the user has made room, then resume.
fn wait_for_space(st: &Shared) {
    let st = st.clone();
    glib::timeout_add_local(Duration::from_secs(2), move || {
        let (stopping, ok) = {
            let s = st.borrow();
            (
                s.stopping,
                s.recorder.as_ref().is_some_and(|r| r.has_space()),
            )
        };
        if stopping {
            return glib::ControlFlow::Break;
        }
        if !ok {
            return glib::ControlFlow::Continue;
        }
        log::info!("recording: space is available again, resuming");
        try_recording(&st);
        glib::ControlFlow::Break
    });
}

/// Attaches the uplink if viewers want it and it is not attached. Main-loop thread.
fn try_uplink(st: &Shared, new_session: bool) {
    let result = {
        let mut guard = st.borrow_mut();
        let s = &mut *guard;
        // A retry already scheduled stands for this attempt: one schedule for the uplink,
        // whatever the number of viewers, their heartbeats or their comings and goings.
        let wanted = watching(s) && !s.uplink_retry.is_pending();
        match s.uplink.as_mut() {
            Some(u) if wanted && !s.stopping && !u.is_attached() => {
                u.attach(&s.pipeline, &s.enc_tee, new_session)
            }
            _ => return,
        }
    };
    match result {
        Ok(()) => st.borrow_mut().uplink_retry.started(),
        Err(e) => retry_uplink(st, &format!("{e:#}")),
    }
}

fn retry_uplink(st: &Shared, why: &str) {
    let again = st.clone();
    let when = retrying(
        st.borrow_mut()
            .uplink_retry
            .schedule(move || try_uplink(&again, false)),
    );
    log::warn!("uplink: {why}; recording and local RTSP go on; {when} while viewers watch");
}

/// The viewers whose lease runs.
fn watchers(s: &State) -> impl Iterator<Item = &String> {
    let now = Instant::now();
    s.viewers
        .iter()
        .filter(move |(_, t)| **t > now)
        .map(|(v, _)| v)
}

/// Whether any viewer's lease runs.
fn watching(s: &State) -> bool {
    watchers(s).next().is_some()
}

/// The device's status now. Main-loop thread.
fn current_status(s: &State) -> status::Status {
    s.status.status(&status::Parts {
        cfg: &s.cfg,
        profile: &s.profiles.board.name,
        pipeline: &s.pipeline,
        source: s.source.as_ref(),
        drops: &s.drops,
        recording_attached: s.recorder.as_ref().is_some_and(|r| r.is_attached()),
        uplink_attached: s.uplink.as_ref().is_some_and(|u| u.is_attached()),
        uplink_live: s.uplink.as_ref().is_some_and(|u| u.live_path().is_some()),
        uplink_link: s.uplink.as_ref().and_then(|u| u.link()),
        viewers: watchers(s).count(),
        rtsp: s.rtsp.as_ref().map(|r| r.sessions()),
    })
}

/// Answers a viewer's `status`. Main-loop thread.
fn answer_status(st: &Shared, viewer: String) {
    let s = st.borrow();
    let Some(tx) = &s.answer_tx else { return };
    let args = match serde_json::to_value(current_status(&s)) {
        Ok(v) => vec![v],
        Err(e) => return log::warn!("status: cannot serialise: {e}"),
    };
    let _ = tx.try_send(signal::Answer {
        event: "status",
        args,
        to: vec![viewer],
    });
}

/// A command from the signalling thread. Main-loop thread.
fn on_command(st: &Shared, cmd: Command) {
    let (viewer, until, asked) = match cmd {
        Command::Watch {
            viewer,
            until,
            asked,
        } => (viewer, until, asked),
        Command::Status { viewer } => return answer_status(st, viewer),
        Command::Playback {
            viewer,
            until,
            asked,
        } => {
            let pb = st.borrow().playback.clone();
            if pb.is_some_and(|pb| pb.request(viewer.clone(), until, asked)) && !viewer.is_empty() {
                // A viewer watching a recording no longer watches live video: its live lease
                // ends now, so the uplink is not kept running (on a metered link) for a picture
                // nobody sees. Back to live is a new `auth`. Through a plain relay viewers are
                // anonymous (one lease for all): the others may still watch live.
                if let Some(t) = st.borrow_mut().viewers.get_mut(&viewer) {
                    *t = Instant::now();
                }
                check_lease(st);
            }
            return;
        }
    };
    // A viewer that plays recordings renews its sessions with its heartbeats; unless it asked
    // for live video too, they must not start the uplink.
    let pb = st.borrow().playback.clone();
    if pb.is_some_and(|pb| pb.renew(&viewer, until))
        && !asked
        && !st.borrow().viewers.contains_key(&viewer)
    {
        return;
    }
    let (fresh, new_viewer) = {
        let mut s = st.borrow_mut();
        let fresh = !watching(&s);
        let old = s.viewers.insert(viewer.clone(), until);
        (fresh, old.is_none_or(|t| t <= Instant::now()))
    };
    let attached = st.borrow().uplink.as_ref().is_some_and(|u| u.is_attached());
    if !attached {
        // A session already running has its attach under way or its retry scheduled: one
        // schedule, whatever the number of viewers and heartbeats.
        if fresh {
            try_uplink(st, true);
        }
        return;
    }
    if new_viewer || asked {
        // Already live: the new viewer can play at once.
        let s = st.borrow();
        if let (Some(path), Some(tx)) =
            (s.uplink.as_ref().and_then(|u| u.live_path()), &s.bridge_tx)
        {
            let _ = tx.try_send(signal::Bridge {
                path: path.to_string(),
                to: vec![viewer],
            });
        }
    }
}

fn on_uplink_live(st: &Shared, generation: u64) {
    let s = &mut *st.borrow_mut();
    let Some(path) = s.uplink.as_mut().and_then(|u| u.on_live(generation)) else {
        return;
    };
    log::info!("uplink: live at path {path}");
    let to = watchers(s).cloned().collect();
    if let Some(tx) = &s.bridge_tx {
        let _ = tx.try_send(signal::Bridge { path, to });
    }
}

/// Forgets viewers whose lease ran out (no heartbeat, or their token expired) and ends the
/// uplink when none is left. Main-loop thread, four times a second.
fn check_lease(st: &Shared) {
    let s = &mut *st.borrow_mut();
    let now = Instant::now();
    let before = s.viewers.len();
    s.viewers.retain(|_, t| *t > now);
    if before == 0 || !s.viewers.is_empty() {
        return;
    }
    let (p, t) = (s.pipeline.clone(), s.enc_tee.clone());
    if let Some(u) = s.uplink.as_mut() {
        if u.is_attached() {
            log::info!("uplink: no viewer heartbeat within the lease, stopping");
        }
        u.detach(&p, &t, true);
    }
}

/// Where the uplink's video comes from: the encoder it shares with the recording (none with
/// an H.264 camera), or one of its own on the raw tee, as the owner or the board chose.
fn uplink_source(cfg: &Config, s: &State) -> Result<crate::uplink::Source> {
    use crate::config::UplinkEncodeChoice;
    use crate::profile::UplinkEncode;
    let own = match cfg.uplink.encode {
        UplinkEncodeChoice::Own => true,
        UplinkEncodeChoice::Shared => false,
        UplinkEncodeChoice::Auto => s.profiles.board.uplink_encode == UplinkEncode::Own,
    };
    if !own {
        let encoder = s.pipeline.by_name("encoder").and_then(|e| {
            let factory = e.factory()?.name().to_string();
            crate::uplink::adapt::EncoderRate::new(e, s.profiles.encoder_rate(&factory))
        });
        return Ok(crate::uplink::Source::Shared(encoder));
    }
    let plan = plan::plan_encoder(cfg, &s.profiles).context("the uplink's own encoder")?;
    log::info!("uplink: an encoder of its own ({})", plan.element);
    Ok(crate::uplink::Source::Own {
        raw_tee: s.raw_tee.clone(),
        description: plan
            .description
            .replace("name=encqueue", "name=uplinkencqueue")
            .replace("name=encoder", "name=uplinkenc"),
        rate: s.profiles.encoder_rate(&plan.element),
        keyframe_interval: gst::ClockTime::from_mseconds(
            cfg.encoder.keyframe_interval_ms.get() as u64
        ),
    })
}

/// Wires the signalling thread and the uplink into the main loop.
fn start_remote_viewing(st: &Shared, cfg: &Config) -> Result<()> {
    use tokio::sync::mpsc;
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);
    let (bridge_tx, bridge_rx) = mpsc::channel::<signal::Bridge>(16);
    let (answer_tx, answer_rx) = mpsc::channel::<signal::Answer>(16);
    let (live_tx, mut live_rx) = mpsc::channel::<u64>(16);
    signal::spawn(
        cfg.signal.clone(),
        cfg.device.id.as_str().to_string(),
        cmd_tx,
        bridge_rx,
        answer_rx,
    )
    .context("cannot start the signalling thread")?;
    {
        let mut s = st.borrow_mut();
        let mut uplink = Uplink::new(&cfg.uplink, cfg.device.id.as_str(), live_tx);
        uplink.set_source(uplink_source(cfg, &s)?, cfg.encoder.bitrate_kbps.u32());
        s.uplink = Some(uplink);
        s.bridge_tx = Some(bridge_tx);
        s.answer_tx = Some(answer_tx);
    }
    let ctx = glib::MainContext::default();
    let st1 = st.clone();
    ctx.spawn_local(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            on_command(&st1, cmd);
        }
    });
    let st2 = st.clone();
    ctx.spawn_local(async move {
        while let Some(generation) = live_rx.recv().await {
            on_uplink_live(&st2, generation);
        }
    });
    let st3 = st.clone();
    glib::timeout_add_local(Duration::from_millis(250), move || {
        check_lease(&st3);
        glib::ControlFlow::Continue
    });
    // Recordings from afar, answered through the same channel as the other requests.
    let (index, answers) = {
        let s = st.borrow();
        (s.recorder.as_ref().map(|r| r.index()), s.answer_tx.clone())
    };
    if let Some(answers) = answers {
        st.borrow_mut().playback = Some(crate::playback::Playback::start(cfg, index, answers));
    }
    log::info!("remote viewing: signalling at {}", cfg.signal.url);
    Ok(())
}

/// Publishes the status every second for the metrics server, which serves the last one.
fn start_metrics(st: &Shared, bind: std::net::SocketAddr) -> Result<()> {
    let publish = {
        let st = st.clone();
        move || {
            let s = st.borrow();
            s.status.publish(current_status(&s));
        }
    };
    publish();
    crate::metrics::spawn(bind, st.borrow().status.published())
        .context("cannot start the metrics thread")?;
    glib::timeout_add_local(Duration::from_secs(1), move || {
        publish();
        glib::ControlFlow::Continue
    });
    Ok(())
}

/// Which part of the graph a bus message came from.
enum Origin {
    Source,
    Display,
    Recording,
    Uplink,
    Rtsp,
    /// The fixed graph (tees, encoder or decoder, the pipeline): nothing replaces it.
    Core,
    /// A branch already detached (`branch::retired`), or no longer in the pipeline at all
    /// (splitmuxsink even drops a failed file's sink from itself before its error is read):
    /// its messages are reported, never acted on.
    Gone(Option<String>),
}

fn origin_of(st: &State, obj: &gst::Object) -> Origin {
    if st.source.as_ref().is_some_and(|b| branch::contains(b, obj)) {
        Origin::Source
    } else if branch::owned_by(st.display.as_ref(), obj) {
        Origin::Display
    } else if st.recorder.as_ref().is_some_and(|r| r.owns(obj)) {
        Origin::Recording
    } else if st.uplink.as_ref().is_some_and(|u| u.owns(obj)) {
        Origin::Uplink
    } else if st.rtsp.as_ref().is_some_and(|r| r.owns(obj)) {
        Origin::Rtsp
    } else if is_core(st, obj) {
        Origin::Core
    } else {
        // Anything else that posts while in the pipeline is a retired branch, or a source
        // replaced since: an allow-list for the fatal case, so that no late message of a
        // part already handled can stop the device.
        Origin::Gone(branch::retired(obj))
    }
}

/// The parts of the graph that live as long as the pipeline.
fn is_core(st: &State, obj: &gst::Object) -> bool {
    if obj == st.pipeline.upcast_ref::<gst::Object>() {
        return true;
    }
    let fixed = [st.raw_tee.clone(), st.enc_tee.clone()].into_iter().chain(
        ["encode", "decode"]
            .iter()
            .filter_map(|n| st.pipeline.by_name(n)),
    );
    for e in fixed {
        if obj == e.upcast_ref::<gst::Object>() {
            return true;
        }
        if let Some(bin) = e.downcast_ref::<gst::Bin>() {
            if obj.has_as_ancestor(bin) {
                return true;
            }
        }
    }
    false
}

fn on_error(st: &Shared, msg: &gst::message::Error) {
    let Some(src) = msg.src() else { return };
    let text = format!(
        "{} ({})",
        msg.error(),
        msg.debug().map(|d| d.to_string()).unwrap_or_default()
    );
    let origin = origin_of(&st.borrow(), src);
    match origin {
        Origin::Source => {
            stop_source(st);
            retry_source(st, &format!("{text} from {}, RTSP stays up", src.name()));
        }
        Origin::Display => {
            let b = st.borrow_mut().display.take();
            if let Some(b) = b {
                let (p, t) = {
                    let s = st.borrow();
                    (s.pipeline.clone(), s.raw_tee.clone())
                };
                branch::detach(&p, &t, b);
                retry_display(st, &format!("{} failed: {text}", src.name()));
            }
        }
        Origin::Recording => {
            let recovery = {
                let mut guard = st.borrow_mut();
                let s = &mut *guard;
                let (p, t) = (s.pipeline.clone(), s.enc_tee.clone());
                s.recorder
                    .as_mut()
                    .and_then(|r| r.on_error(&p, &t, &msg.error()))
            };
            match recovery {
                Some(Recovery::WaitForSpace) => {
                    let dir = st
                        .borrow()
                        .recorder
                        .as_ref()
                        .map(|r| r.dir().display().to_string())
                        .unwrap_or_default();
                    log::error!(
                        "recording paused: the disk holding {dir} is full ({text}); \
                         footage already recorded is kept; recording resumes by itself when space returns"
                    );
                    wait_for_space(st);
                }
                Some(Recovery::Retry) => retry_recording(st, &format!("stopped: {text}")),
                None => {}
            }
        }
        Origin::Uplink => {
            let detached = {
                let s = &mut *st.borrow_mut();
                let (p, t) = (s.pipeline.clone(), s.enc_tee.clone());
                match s.uplink.as_mut() {
                    Some(u) if u.is_attached() => {
                        u.detach(&p, &t, false);
                        true
                    }
                    _ => false,
                }
            };
            if detached {
                retry_uplink(st, &format!("{} failed: {text}", src.name()));
            }
        }
        Origin::Rtsp => log::warn!("RTSP branch {}: {text}", src.name()),
        Origin::Gone(Some(bin)) => log::warn!("{} (in {bin}, retired): {text}", src.name()),
        Origin::Gone(None) => log::warn!("{} (already detached): {text}", src.name()),
        Origin::Core => {
            log::error!("{}: {text}: cannot recover, stopping", src.name());
            let mut s = st.borrow_mut();
            s.exit_code = 1;
            s.main_loop.quit();
        }
    }
}

/// SIGINT/SIGTERM: EOS through the graph so every sink finalises, then stop; a second signal or
/// the timeout stops at once.
fn shutdown(st: &Shared) {
    let (pipeline, already, timeout) = {
        let mut s = st.borrow_mut();
        let already = s.stopping;
        s.stopping = true;
        s.eos_allowed.store(true, Ordering::SeqCst);
        (
            s.pipeline.clone(),
            already,
            s.cfg.pipeline.shutdown_timeout_ms.get() as u64,
        )
    };
    crate::sdnotify::stopping();
    if already {
        log::warn!("second stop request: stopping now");
        st.borrow().main_loop.quit();
        return;
    }
    let has_sinks = pipeline.iterate_sinks().into_iter().any(|_| true);
    if !has_sinks || st.borrow().source.is_none() {
        st.borrow().main_loop.quit();
        return;
    }
    if let Some(r) = st.borrow().rtsp.as_ref() {
        r.set_stopping();
    }
    log::info!("stopping: sending end-of-stream through the graph");
    pipeline.send_event(gst::event::Eos::new());
    let st = st.clone();
    glib::timeout_add_local_once(Duration::from_millis(timeout), move || {
        log::warn!("end-of-stream did not reach every sink in {timeout} ms; stopping anyway");
        st.borrow().main_loop.quit();
    });
}

/// Runs the device until a stop signal or an unrecoverable error; returns the exit code.
pub fn run(cfg: Config) -> Result<i32> {
    gst::init().context("cannot initialise GStreamer")?;
    let profiles = Profiles::load(&cfg).context(ConfigError)?;
    log::info!(
        "board profile {} ({})",
        profiles.board.name,
        profiles.board.description
    );
    let passthrough = wants_passthrough(&cfg, &profiles);
    let drops = Drops::default();
    let (pipeline, raw_tee, enc_tee, raw_format) =
        build_core(&cfg, &profiles, passthrough, &drops).context(ConfigError)?;
    let display_description = plan::plan_display(&cfg, &profiles);
    if display_description.is_none() {
        log::info!("display: none ({:?})", cfg.display.sink);
    }
    let main_loop = glib::MainLoop::new(None, false);
    let st: Shared = Rc::new(RefCell::new(State {
        source_retry: Retry::new(cfg.camera.restart_max_seconds.get()),
        display_retry: Retry::new(cfg.display.retry_max_seconds.get()),
        cfg: cfg.clone(),
        profiles,
        pipeline: pipeline.clone(),
        raw_tee,
        enc_tee: enc_tee.clone(),
        raw_format,
        source: None,
        source_opening: false,
        display_after_source: true,
        camera: None,
        camera_watch: false,
        camera_rdev: None,
        eos_allowed: Arc::new(AtomicBool::new(false)),
        display: None,
        display_description,
        playback: None,
        rtsp: None,
        recorder: cfg.recording.enabled.then(|| Recorder::new(&cfg)),
        recording_checking: false,
        recording_retry: Retry::new(cfg.recording.retry_max_seconds.get()),
        uplink: None,
        uplink_retry: Retry::new(cfg.uplink.retry_max_seconds.get()),
        viewers: HashMap::new(),
        bridge_tx: None,
        answer_tx: None,
        status: status::Reporter::start(&cfg),
        main_loop: main_loop.clone(),
        exit_code: 0,
        stopping: false,
        drops: drops.clone(),
    }));

    let bus = pipeline
        .bus()
        .ok_or_else(|| anyhow!("pipeline has no bus"))?;
    let st_bus = st.clone();
    let _watch = bus.add_watch_local(move |_, msg| {
        use gst::MessageView;
        match msg.view() {
            MessageView::Error(e) => on_error(&st_bus, e),
            MessageView::Progress(p) => {
                let s = &*st_bus.borrow();
                if let (Some(u), Some(src)) = (s.uplink.as_ref(), p.src()) {
                    if u.owns(src) {
                        u.on_progress(p);
                    }
                }
            }
            MessageView::StateChanged(c) => {
                let s = &mut *st_bus.borrow_mut();
                if let (Some(u), Some(src)) = (s.uplink.as_mut(), c.src()) {
                    if u.owns(src) {
                        u.on_state_changed(c);
                    }
                }
            }
            MessageView::Qos(q) => {
                let s = &*st_bus.borrow();
                if let (Some(src), Some(source)) = (q.src(), s.source.as_ref()) {
                    if branch::contains(source, src) {
                        s.drops.camera_lost(camera_lost_frames(q, src));
                    }
                }
            }
            MessageView::Element(e) => {
                if let Some(r) = st_bus.borrow().recorder.as_ref() {
                    r.on_element(e);
                }
            }
            MessageView::Warning(w) => log::warn!(
                "{}: {}",
                w.src().map(|s| s.name().to_string()).unwrap_or_default(),
                w.error()
            ),
            // While running, an end-of-stream only means the last sink went (a failed branch
            // finalising); the graph goes on.
            MessageView::Eos(_) if st_bus.borrow().stopping => {
                log::info!("end-of-stream reached every sink");
                st_bus.borrow().main_loop.quit();
            }
            _ => {}
        }
        glib::ControlFlow::Continue
    })?;

    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| anyhow!("the pipeline refused to start"))?;
    if let Some(r) = st.borrow().recorder.as_ref() {
        r.enforce_retention();
    }
    try_source(&st);
    try_recording(&st);

    if cfg.rtsp.enabled {
        let server = RtspServer::start(&cfg.rtsp, &pipeline, &enc_tee)?;
        log::info!("RTSP server ready at {}", server.urls.join(", "));
        println!("RTSP: {}", server.url);
        st.borrow_mut().rtsp = Some(server);
    }
    // try_display: once the first source attempt is over (see try_source).
    if cfg.signal.enabled {
        start_remote_viewing(&st, &cfg)?;
    }

    if cfg.metrics.enabled {
        start_metrics(&st, cfg.metrics.bind)?;
    }

    crate::sdnotify::ready();
    let period = Duration::from_secs(cfg.log.drops_report_seconds.get() as u64);
    glib::timeout_add_local(period, move || {
        crate::sdnotify::status(&drops.report());
        glib::ControlFlow::Continue
    });
    if let Some(period) = crate::sdnotify::watchdog_period() {
        glib::timeout_add_local(period, || {
            crate::sdnotify::watchdog();
            glib::ControlFlow::Continue
        });
    }

    for sig in [nix::libc::SIGINT, nix::libc::SIGTERM] {
        let st = st.clone();
        glib::unix_signal_add_local(sig, move || {
            shutdown(&st);
            glib::ControlFlow::Continue
        });
    }

    main_loop.run();
    let _ = pipeline.set_state(gst::State::Null);
    if let Some(r) = st.borrow().recorder.as_ref() {
        log::info!("{}", r.summary());
    }
    st.borrow().drops.report();
    log::info!("{}", st.borrow().drops.summary());
    let code = st.borrow().exit_code;
    st.borrow_mut().rtsp = None;
    log::info!("stopped (exit code {code})");
    Ok(code)
}
