//! One playback session: recorded MP4 files pushed to the media server, paced at real time, in
//! pipelines of their own (never the live graph, so recording and live viewing never wait for
//! it).
//!
//! ```text
//! reader:  splitmuxsrc (the files, in order) ! h264parse ! appsink (sync: real time)
//! sender:  appsrc ! queue ! rtspclientsink (as the uplink: TCP, credentials, TLS CA)
//! ```
//!
//! The reader seeks to the keyframe at or before the start (KEY_UNIT | SNAP_BEFORE) while
//! paused, then plays; its appsink releases each frame at its time and hands it to the sender,
//! stamped with the reader's running time (both pipelines share one clock and base time), and
//! the sender sends on arrival. Every state change happens on the session's own thread, as do
//! the waits on its buses; its errors end this session only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::UplinkConfig;

/// What a session plays and where it sends it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub files: Vec<PathBuf>,
    /// Per file: where it begins in the stream the reader makes of the files (ns), and its UTC
    /// start (µs). Tells the UTC of each frame, across gaps between files.
    pub map: Vec<(u64, i64)>,
    /// Where to start, in that stream (ns); 0: the first file's first frame.
    pub seek_ns: u64,
    /// How many times faster than real time (1: real time). The reader runs at that rate; the
    /// frames keep their spacing in the reader's running time, so the server receives a stream
    /// of as many more frames a second.
    pub speed: u32,
    /// Frames from this UTC time on (µs) are not sent.
    pub to_us: Option<i64>,
    /// rtsp(s)://host/channel/<path>
    pub location: String,
    pub uplink: UplinkConfig,
}

/// What a session tells the main loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The server answered RECORD and the first keyframe, at `start_us` (UTC), went out.
    Live { session: u64, start_us: i64 },
    /// The session is over: `failed` when it broke rather than ended.
    Ended {
        session: u64,
        reason: String,
        failed: bool,
    },
}

/// Ends a session from the main loop.
#[derive(Clone)]
pub struct Handle {
    stop: Arc<Mutex<Option<String>>>,
}

impl Handle {
    /// Asks the session to end, saying why; it ends on its own thread.
    pub fn stop(&self, reason: &str) {
        let mut s = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(reason.to_string());
        }
    }
}

/// The UTC time (µs) of a frame at `stream_ns` in the reader's stream.
pub fn utc_at(map: &[(u64, i64)], stream_ns: u64) -> i64 {
    let k = map
        .iter()
        .rposition(|(off, _)| *off <= stream_ns)
        .unwrap_or(0);
    let Some((off, start)) = map.get(k) else {
        return 0;
    };
    start + (stream_ns.saturating_sub(*off) / 1000) as i64
}

/// Starts session `session` on a thread of its own.
pub fn start(session: u64, spec: Spec, events: UnboundedSender<Event>) -> Handle {
    let handle = Handle {
        stop: Arc::new(Mutex::new(None)),
    };
    let stop = handle.stop.clone();
    let tx = events.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("playback-{session}"))
        .spawn(move || {
            let (reason, failed) = match run(session, &spec, &stop, &tx) {
                Ok(reason) => (reason, false),
                Err(e) => (format!("{e:#}"), true),
            };
            let _ = tx.send(Event::Ended {
                session,
                reason,
                failed,
            });
        });
    if let Err(e) = spawned {
        let _ = events.send(Event::Ended {
            session,
            reason: format!("cannot start a thread: {e}"),
            failed: true,
        });
    }
    handle
}

/// How long a session that sent everything stays connected before its TEARDOWN: a server
/// tears the stream down at once, and may drop what it has not written out yet.
const LINGER: Duration = Duration::from_millis(500);

/// Shared with the reader's streaming thread.
struct Progress {
    /// UTC of the first frame sent, µs; 0 until then.
    first_us: AtomicI64,
    /// A frame at or after `to` came: the range is played.
    reached_to: AtomicBool,
    /// A keyframe entered the sender.
    key_in: AtomicBool,
    /// Frames handed to the sender, and the UTC of the last one (µs).
    sent: std::sync::atomic::AtomicU64,
    last_us: AtomicI64,
}

fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| anyhow!("GStreamer element {factory} is not installed"))
}

/// splitmuxsrc ! h264parse ! appsink, each frame handed to `appsrc`.
fn reader(
    spec: &Spec,
    appsrc: &gst_app::AppSrc,
    progress: &Arc<Progress>,
) -> Result<gst::Pipeline> {
    let p = gst::Pipeline::with_name("playback-reader");
    let src = make("splitmuxsrc")?;
    let files: Vec<String> = spec.files.iter().map(|f| f.display().to_string()).collect();
    if let Some(first) = files.first() {
        src.set_property("location", first);
    }
    src.connect("format-location", false, move |_| Some(files.to_value()));
    let parse = gst::ElementFactory::make("h264parse")
        .property("config-interval", -1i32)
        .build()?;
    let caps = gst::ElementFactory::make("capsfilter")
        .property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("stream-format", "byte-stream")
                .field("alignment", "au")
                .build(),
        )
        .build()?;
    let sink = gst_app::AppSink::builder()
        .sync(true)
        .max_buffers(4)
        .build();
    p.add_many([&src, &parse, &caps, sink.upcast_ref()])?;
    gst::Element::link_many([&parse, &caps, sink.upcast_ref()])?;
    let parse_sink = parse
        .static_pad("sink")
        .context("h264parse has no sink pad")?;
    // Streaming thread of splitmuxsrc.
    src.connect_pad_added(move |_, pad| {
        if !parse_sink.is_linked() {
            let _ = pad.link(&parse_sink);
        }
    });
    let (appsrc, progress, map, to_us) = (
        appsrc.clone(),
        progress.clone(),
        spec.map.clone(),
        spec.to_us,
    );
    // Streaming thread: each frame at its time, stamped with the reader's running time.
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if progress.reached_to.load(Ordering::SeqCst) {
                    return Ok(gst::FlowSuccess::Ok);
                }
                let (Some(buf), Some(seg)) = (
                    sample.buffer(),
                    sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned()),
                ) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Some(pts) = buf.pts() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let stream = seg.to_stream_time(pts).unwrap_or(pts);
                let utc = utc_at(&map, stream.nseconds());
                if to_us.is_some_and(|to| utc >= to) {
                    progress.reached_to.store(true, Ordering::SeqCst);
                    return Ok(gst::FlowSuccess::Ok);
                }
                if progress.first_us.load(Ordering::SeqCst) == 0 {
                    if buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                        // Only ever from a keyframe.
                        return Ok(gst::FlowSuccess::Ok);
                    }
                    if let Some(caps) = sample.caps() {
                        appsrc.set_caps(Some(&caps.to_owned()));
                    }
                    progress.first_us.store(utc, Ordering::SeqCst);
                }
                progress.sent.fetch_add(1, Ordering::Relaxed);
                progress.last_us.store(utc, Ordering::Relaxed);
                let mut out = buf.copy();
                {
                    let out = out.get_mut().expect("a fresh copy");
                    out.set_pts(seg.to_running_time(pts));
                    out.set_dts(buf.dts().and_then(|d| seg.to_running_time(d)));
                }
                appsrc
                    .push_buffer(out)
                    .map(|_| gst::FlowSuccess::Ok)
                    .or_else(|e| match e {
                        // The sender is stopping: the session is ending anyway.
                        gst::FlowError::Flushing => Ok(gst::FlowSuccess::Ok),
                        e => Err(e),
                    })
            })
            .build(),
    );
    Ok(p)
}

/// appsrc ! queue ! rtspclientsink, as the uplink pushes.
fn sender(spec: &Spec, progress: &Arc<Progress>) -> Result<(gst::Pipeline, gst_app::AppSrc)> {
    let p = gst::Pipeline::with_name("playback-sender");
    let appsrc = gst_app::AppSrc::builder()
        .format(gst::Format::Time)
        .is_live(true)
        .build();
    let queue = make("queue")?;
    let up = &spec.uplink;
    let mut sink = gst::ElementFactory::make("rtspclientsink")
        .name("rtspclientsink")
        .property("location", &spec.location)
        .property("latency", 0u32)
        .property_from_str("protocols", "tcp");
    if !up.tls_ca_file.is_empty() {
        use gst_rtsp_server::gio;
        let ca = &up.tls_ca_file;
        let db =
            gio::TlsFileDatabase::new(ca).map_err(|e| anyhow!("uplink.tls_ca_file {ca}: {e}"))?;
        sink = sink.property(
            "tls-database",
            db.dynamic_cast::<gio::TlsDatabase>()
                .map_err(|_| anyhow!("uplink.tls_ca_file {ca}: not a TLS database"))?,
        );
    }
    if !up.user.is_empty() {
        sink = sink
            .property("user-id", &up.user)
            .property("user-pw", &up.password);
    }
    let sink = sink
        .build()
        .map_err(|_| anyhow!("rtspclientsink (GStreamer rtsp-server plugins) is not installed"))?;
    // Frames arrive at their time already: sent on arrival (see uplink.rs).
    p.connect_deep_element_added(|_, _, element| {
        let is_sender = element
            .factory()
            .is_some_and(|f| matches!(f.name().as_str(), "appsink" | "multiudpsink" | "udpsink"));
        if is_sender && element.has_property("sync") {
            element.set_property("sync", false);
        }
    });
    p.add_many([appsrc.upcast_ref(), &queue, &sink])?;
    gst::Element::link_many([appsrc.upcast_ref(), &queue, &sink])?;
    let progress = progress.clone();
    queue
        .static_pad("src")
        .context("queue has no src pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if info
                .buffer()
                .is_some_and(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT))
            {
                progress.key_in.store(true, Ordering::SeqCst);
                return gst::PadProbeReturn::Remove;
            }
            gst::PadProbeReturn::Ok
        });
    Ok((p, appsrc))
}

/// The first error on `bus`, if any, as text.
fn error_text(msg: &gst::Message) -> Option<String> {
    match msg.view() {
        gst::MessageView::Error(e) => Some(format!(
            "{}: {}",
            e.src().map(|s| s.name().to_string()).unwrap_or_default(),
            e.error()
        )),
        _ => None,
    }
}

/// Waits for the reader to finish prerolling (after a state change or a flushing seek).
fn wait_preroll(p: &gst::Pipeline, stop: &Mutex<Option<String>>, timeout: Duration) -> Result<()> {
    let bus = p.bus().context("pipeline without bus")?;
    let t0 = Instant::now();
    loop {
        if let Some(why) = stop.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            bail!("{why}");
        }
        if t0.elapsed() > timeout {
            bail!("the recordings did not open within {} s", timeout.as_secs());
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(50),
            &[gst::MessageType::AsyncDone, gst::MessageType::Error],
        ) else {
            continue;
        };
        if let Some(e) = error_text(&msg) {
            bail!("cannot read the recordings: {e}");
        }
        return Ok(());
    }
}

/// Ends both pipelines; blocking (a stalled server can hold a TEARDOWN), on the session thread.
fn teardown(reader: &gst::Pipeline, sender: &gst::Pipeline) {
    let _ = reader.set_state(gst::State::Null);
    let _ = sender.set_state(gst::State::Null);
}

/// Runs the session to its end: Ok(why it ended), Err when it broke.
fn run(
    session: u64,
    spec: &Spec,
    stop: &Mutex<Option<String>>,
    events: &UnboundedSender<Event>,
) -> Result<String> {
    let progress = Arc::new(Progress {
        first_us: AtomicI64::new(0),
        reached_to: AtomicBool::new(false),
        key_in: AtomicBool::new(false),
        sent: Default::default(),
        last_us: AtomicI64::new(0),
    });
    let (send, appsrc) = sender(spec, &progress)?;
    let read = reader(spec, &appsrc, &progress)?;
    let result = play(
        session, spec, stop, events, &read, &send, &appsrc, &progress,
    );
    teardown(&read, &send);
    let (first, last) = (
        progress.first_us.load(Ordering::SeqCst),
        progress.last_us.load(Ordering::SeqCst),
    );
    log::info!(
        "playback {session}: {} frames sent, captured from {} to {}",
        progress.sent.load(Ordering::SeqCst),
        crate::recording::index::rfc3339_us(first),
        crate::recording::index::rfc3339_us(last)
    );
    result
}

#[allow(clippy::too_many_arguments)]
fn play(
    session: u64,
    spec: &Spec,
    stop: &Mutex<Option<String>>,
    events: &UnboundedSender<Event>,
    read: &gst::Pipeline,
    send: &gst::Pipeline,
    appsrc: &gst_app::AppSrc,
    progress: &Progress,
) -> Result<String> {
    let clock = gst::SystemClock::obtain();
    read.use_clock(Some(&clock));
    send.use_clock(Some(&clock));
    let opened = read
        .set_state(gst::State::Paused)
        .map_err(|_| anyhow!("cannot open the recordings"))?;
    if opened == gst::StateChangeSuccess::Async {
        wait_preroll(read, stop, Duration::from_secs(15))?;
    }
    if spec.seek_ns > 0 || spec.speed != 1 {
        read.seek(
            f64::from(spec.speed.max(1)),
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
            gst::SeekType::Set,
            gst::ClockTime::from_nseconds(spec.seek_ns),
            gst::SeekType::None,
            gst::ClockTime::NONE,
        )
        .map_err(|_| anyhow!("the recordings cannot be sought"))?;
        wait_preroll(read, stop, Duration::from_secs(15))?;
    }
    // The sender takes frames (queued until the server answers) before the reader releases
    // any; then both run on one clock from one base time.
    send.set_state(gst::State::Paused)
        .map_err(|_| anyhow!("cannot start the push"))?;
    read.set_state(gst::State::Playing)
        .map_err(|_| anyhow!("cannot play the recordings"))?;
    send.set_start_time(gst::ClockTime::NONE);
    send.set_base_time(read.base_time().unwrap_or(gst::ClockTime::ZERO));
    send.set_state(gst::State::Playing)
        .map_err(|_| anyhow!("cannot start the push"))?;
    log::info!("playback {session}: pushing to {}", spec.location);

    let (read_bus, send_bus) = (
        read.bus().context("pipeline without bus")?,
        send.bus().context("pipeline without bus")?,
    );
    let mut recorded = false;
    let mut announced = false;
    let mut ending: Option<(String, Instant)> = None;
    let mut lingering: Option<(String, Instant)> = None;
    loop {
        if let Some(why) = stop.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(why);
        }
        if let Some((why, since)) = &lingering {
            if since.elapsed() > LINGER {
                return Ok(why.clone());
            }
        }
        if !announced && recorded && progress.key_in.load(Ordering::SeqCst) {
            announced = true;
            let start_us = progress.first_us.load(Ordering::SeqCst);
            let _ = events.send(Event::Live { session, start_us });
        }
        if ending.is_none() && progress.reached_to.load(Ordering::SeqCst) {
            let _ = appsrc.end_of_stream();
            ending = Some(("to".into(), Instant::now()));
        }
        if let Some((why, since)) = &ending {
            // The sender's end-of-stream: everything went out. Bounded: a server that stopped
            // reading does not hold the session.
            if since.elapsed() > Duration::from_secs(1) {
                return Ok(why.clone());
            }
        }
        while let Some(msg) = read_bus.pop() {
            if let Some(e) = error_text(&msg) {
                bail!("reading the recordings: {e}");
            }
            if msg.type_() == gst::MessageType::Eos && ending.is_none() {
                let _ = appsrc.end_of_stream();
                ending = Some(("end".into(), Instant::now()));
            }
        }
        if let Some(msg) = send_bus.timed_pop(gst::ClockTime::from_mseconds(50)) {
            if let Some(e) = error_text(&msg) {
                bail!("pushing to the media server: {e}");
            }
            match msg.view() {
                gst::MessageView::Eos(_) => {
                    // Everything went out; the server gets a moment to take the last frames in
                    // before the TEARDOWN.
                    if let Some((why, _)) = ending.take() {
                        lingering = Some((why, Instant::now()));
                    }
                }
                gst::MessageView::StateChanged(c) => {
                    // As for the uplink: rtspclientsink's inner bin reaches PLAYING once the
                    // server has answered RECORD.
                    let answered = c.current() == gst::State::Playing
                        && msg.src().is_some_and(|s| {
                            s.name() == "rtspbin"
                                && s.parent().is_some_and(|p| p.name() == "rtspclientsink")
                        });
                    if answered && !recorded {
                        recorded = true;
                        log::info!(
                            "playback {session}: server accepted the stream (RECORD answered)"
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_dated_by_the_file_they_come_from() {
        // Two files of 2 s with a 10 s gap between them.
        let map = [(0, 1_000_000_000), (2_000_000_000, 1_000_012_000_000)];
        assert_eq!(utc_at(&map, 0), 1_000_000_000);
        assert_eq!(utc_at(&map, 1_500_000_000), 1_001_500_000);
        assert_eq!(utc_at(&map, 2_000_000_000), 1_000_012_000_000);
        assert_eq!(utc_at(&map, 2_100_000_000), 1_000_012_100_000);
    }
}
