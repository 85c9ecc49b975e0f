//! The uplink: a branch on the encoded tee pushing to the remote media server with
//! rtspclientsink while viewers watch. Its failures stay its own: the branch is detached and
//! retried, recording and the local RTSP server never notice. While it runs it follows its
//! link (`adapt`): the encoder's bitrate goes down when the link narrows, and the video it holds
//! back is bounded in time.

pub mod adapt;
pub mod rate;
pub mod tcp;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use gst::prelude::*;
use tokio::sync::mpsc;

use crate::branch::{self, Branch};
use crate::config::UplinkConfig;
use crate::profile::Properties;
use adapt::{Adapter, EncoderRate, LinkStats};

/// Where the uplink's H.264 comes from (`uplink.encode`, the board profile's `uplink_encode`).
pub enum Source {
    /// The encoded tee, shared with the recording and RTSP; the shared encoder's bitrate, when
    /// it can change while running (None: an H.264 camera, or a fixed rate).
    Shared(Option<EncoderRate>),
    /// An encoder of its own on the raw tee.
    Own {
        raw_tee: gst::Element,
        /// `queue ! videoconvert ! caps ! <encoder> name=uplinkenc ! caps ! h264parse ! caps`.
        description: String,
        /// How its bitrate changes while it runs (`encoders.toml`, `rate`).
        rate: Properties,
        keyframe_interval: gst::ClockTime,
    },
}

/// A new, unguessable path id: 128 random bits, hex (URL-safe).
pub fn random_path() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub struct Uplink {
    cfg: UplinkConfig,
    device: String,
    branch: Option<Branch>,
    path: Option<String>,
    /// Bumped at each attach, so a late "live" from an old branch is ignored.
    generation: Arc<AtomicU64>,
    live: bool,
    /// Set when the server answered RECORD; the next keyframe into the branch, which then
    /// flows straight through to the server, makes the uplink live.
    recording: Arc<AtomicBool>,
    live_tx: mpsc::Sender<u64>,
    source: Source,
    /// The configured bitrate, which the uplink may lower.
    max_kbps: u32,
    /// Where a keyframe is asked for when the server takes the stream: the uplink queue's
    /// sink, upstream of which is the encoder (shared or its own).
    keyframe_pad: Option<gst::Pad>,
    adapter: Option<Adapter>,
    stats: Arc<LinkStats>,
}

impl Uplink {
    /// `live_tx` receives the generation of a branch whose first keyframe after RECORD went out.
    pub fn new(cfg: &UplinkConfig, device: &str, live_tx: mpsc::Sender<u64>) -> Self {
        Self {
            cfg: cfg.clone(),
            device: device.to_string(),
            branch: None,
            path: None,
            generation: Arc::new(AtomicU64::new(0)),
            live: false,
            recording: Arc::new(AtomicBool::new(false)),
            live_tx,
            source: Source::Shared(None),
            max_kbps: 0,
            keyframe_pad: None,
            adapter: None,
            stats: Arc::new(LinkStats::default()),
        }
    }

    /// Where the uplink's video comes from, at `kbps` as configured.
    pub fn set_source(&mut self, source: Source, kbps: u32) {
        self.source = source;
        self.max_kbps = kbps;
    }

    /// The link as last measured, while attached: bitrate asked of the encoder, what the link
    /// carried (kbit/s), video waiting (ms), round trip (ms).
    pub fn link(&self) -> Option<[u64; 4]> {
        use std::sync::atomic::Ordering::Relaxed;
        self.adapter.as_ref()?;
        let s = &self.stats;
        Some([
            s.bitrate_kbps.load(Relaxed),
            s.carried_kbps.load(Relaxed),
            s.backlog_ms.load(Relaxed),
            s.rtt_ms.load(Relaxed),
        ])
    }

    pub fn is_attached(&self) -> bool {
        self.branch.is_some()
    }

    /// The path viewers play, once live.
    pub fn live_path(&self) -> Option<&str> {
        self.live.then_some(self.path.as_deref()).flatten()
    }

    pub fn owns(&self, obj: &gst::Object) -> bool {
        branch::owned_by(self.branch.as_ref(), obj)
    }

    /// Starts pushing; a new session gets a new path, a retry keeps it. Main-loop thread.
    pub fn attach(
        &mut self,
        pipeline: &gst::Pipeline,
        tee: &gst::Element,
        new_session: bool,
    ) -> Result<()> {
        if new_session || self.path.is_none() {
            let path = self
                .cfg
                .path
                .replace("{device}", &self.device)
                .replace("{random}", &random_path()?);
            self.path = Some(path);
        }
        let path = self.path.clone().unwrap_or_default();
        let location = self.cfg.url.replace("{path}", &path);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.live = false;
        self.recording.store(false, Ordering::SeqCst);

        let bin = gst::Bin::with_name("uplink");
        // rtspclientsink completes its change to PAUSED only after connecting: the bin keeps
        // that wait from taking the running pipeline out of PLAYING.
        bin.set_property("async-handling", true);
        // Leaky: a slow or dead link drops old frames here, never holds up the encoder; bounded
        // in time too, so the viewer's delay is (the drops' gate makes them whole GOPs).
        let queue = gst::ElementFactory::make("queue")
            .property("max-size-buffers", self.cfg.queue_buffers.u32())
            .property("max-size-bytes", 0u32)
            .property(
                "max-size-time",
                self.cfg.max_delay_ms.get() as u64 * 1_000_000,
            )
            .property_from_str("leaky", "downstream")
            .build()?;
        let mut sink = gst::ElementFactory::make("rtspclientsink")
            .name("rtspclientsink")
            .property("location", &location)
            .property("latency", 0u32)
            .property_from_str("protocols", "tcp");
        if !self.cfg.tls_ca_file.is_empty() {
            use gst_rtsp_server::gio;
            let ca = &self.cfg.tls_ca_file;
            let db = gio::TlsFileDatabase::new(ca)
                .map_err(|e| anyhow!("uplink.tls_ca_file {ca}: {e}"))?;
            sink = sink.property(
                "tls-database",
                db.dynamic_cast::<gio::TlsDatabase>()
                    .map_err(|_| anyhow!("uplink.tls_ca_file {ca}: not a TLS database"))?,
            );
        }
        if !self.cfg.user.is_empty() {
            sink = sink
                .property("user-id", &self.cfg.user)
                .property("user-pw", &self.cfg.password);
        }
        let sink = sink.build().map_err(|_| {
            anyhow!("rtspclientsink (GStreamer rtsp-server plugins) is not installed")
        })?;
        // rtspclientsink sends through sinks of its own that wait for each buffer's running
        // time plus the main pipeline's latency (a frame or two of the live source and the
        // encoder): frames that are already late by encode time would be held back ~45 ms
        // more. Sent on arrival instead, as the local RTSP server does. Runs on whichever
        // thread adds the element (rtspclientsink's own task thread).
        bin.connect_deep_element_added(|_, _, element| {
            let is_sender = element.factory().is_some_and(|f| {
                matches!(f.name().as_str(), "appsink" | "multiudpsink" | "udpsink")
            });
            if is_sender && element.has_property("sync") {
                element.set_property("sync", false);
            }
        });
        bin.add_many([&queue, &sink])?;
        queue.link(&sink)?;
        let pad = queue
            .static_pad("sink")
            .ok_or_else(|| anyhow!("queue has no sink pad"))?;
        // The bin's input: the encoded tee, or the raw tee through an encoder of its own.
        let (tee, encoder, keep_every) = match &self.source {
            Source::Shared(encoder) => {
                bin.add_pad(&gst::GhostPad::with_target(&pad)?)?;
                (tee.clone(), encoder.clone(), None)
            }
            Source::Own {
                raw_tee,
                description,
                rate,
                keyframe_interval,
            } => {
                let enc = gst::parse::bin_from_description(description, true)?;
                bin.add(&enc)?;
                enc.link(&queue)?;
                let encoder = enc
                    .by_name("uplinkenc")
                    .ok_or_else(|| anyhow!("the uplink's encoder is missing"))?;
                crate::keyframes::keep_interval(&encoder, *keyframe_interval);
                let keep_every = Arc::new(AtomicU32::new(1));
                skip_frames(&encoder, keep_every.clone())?;
                let input = enc
                    .static_pad("sink")
                    .ok_or_else(|| anyhow!("the uplink's encoder has no input"))?;
                bin.add_pad(&gst::GhostPad::with_target(&input)?)?;
                (
                    raw_tee.clone(),
                    EncoderRate::new(encoder, rate.clone()),
                    Some(keep_every),
                )
            }
        };
        self.keyframe_pad = Some(pad.clone());

        // Streaming thread: before the first keyframe, delta frames are useless to the server;
        // the first keyframe after RECORD was answered makes the uplink live.
        let (started, recording, tx, gen) = (
            Arc::new(AtomicBool::new(false)),
            self.recording.clone(),
            self.live_tx.clone(),
            self.generation.clone(),
        );
        let announced = AtomicBool::new(false);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let key = !buf.flags().contains(gst::BufferFlags::DELTA_UNIT);
            if !started.load(Ordering::Relaxed) {
                if !key {
                    return gst::PadProbeReturn::Drop;
                }
                started.store(true, Ordering::Relaxed);
            }
            if key
                && recording.load(Ordering::SeqCst)
                && !announced.swap(true, Ordering::SeqCst)
                && gen.load(Ordering::SeqCst) == generation
            {
                let _ = tx.try_send(generation);
            }
            gst::PadProbeReturn::Ok
        });

        // Sockets to the server before this push connects are other pushes (playback).
        let port = tcp::url_port(&location);
        let before = port.map(adapt::sockets_to).unwrap_or_default();
        self.branch = Some(branch::attach(pipeline, &tee, bin, true)?);
        log::info!("uplink: pushing to {location}");
        // Not adaptive (or a fixed rate): the link is still measured and the socket bounded.
        let follow = self.cfg.adaptive && encoder.is_some();
        self.adapter = match port {
            Some(port) if self.max_kbps > 0 => Some(adapt::start(adapt::Spec {
                limits: rate::Limits {
                    max_kbps: self.max_kbps,
                    min_kbps: if follow {
                        self.cfg.min_bitrate_kbps.u32().min(self.max_kbps)
                    } else {
                        self.max_kbps
                    },
                    frame_steps: follow && keep_every.is_some(),
                },
                port,
                before,
                queue,
                encoder: encoder.filter(|_| follow),
                keep_every,
                stats: self.stats.clone(),
            })),
            _ => None,
        };
        Ok(())
    }

    /// A progress message from the branch, for the log. Main-loop thread.
    pub fn on_progress(&self, msg: &gst::message::Progress) {
        let (kind, code, text) = msg.get();
        log::debug!("uplink: progress {kind:?} {code}: {text}");
    }

    /// A state change inside the branch. rtspclientsink posts no completion for RECORD (its
    /// "Starting recording" progress comes before the request is even sent), but it sets its
    /// internal bin `rtspbin` to PLAYING only once the server has answered RECORD with
    /// success: that is the moment the server takes the stream. The next keyframe is the one
    /// viewers start on, so ask for it now. Main-loop thread.
    pub fn on_state_changed(&mut self, msg: &gst::message::StateChanged) {
        let Some(src) = msg.src() else { return };
        let answered = msg.current() == gst::State::Playing
            && src.name() == "rtspbin"
            && src.parent().is_some_and(|p| p.name() == "rtspclientsink");
        if answered && self.branch.is_some() && !self.recording.swap(true, Ordering::SeqCst) {
            log::info!("uplink: server accepted the stream (RECORD answered)");
            if let Some(pad) = self.keyframe_pad.as_ref().filter(|_| self.branch.is_some()) {
                branch::request_keyframe(pad);
            }
        }
    }

    /// The branch of `generation` sent its first keyframe after RECORD. Returns the path to
    /// announce, if that branch is still the current one.
    pub fn on_live(&mut self, generation: u64) -> Option<String> {
        if generation != self.generation.load(Ordering::SeqCst) || self.branch.is_none() {
            return None;
        }
        self.live = true;
        self.path.clone()
    }

    /// Stops pushing (last viewer gone, or an error). Main-loop thread.
    pub fn detach(&mut self, pipeline: &gst::Pipeline, tee: &gst::Element, end_session: bool) {
        self.live = false;
        // Its thread puts the configured bitrate back.
        self.adapter = None;
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(b) = self.branch.take() {
            branch::detach(pipeline, tee, b);
        }
        if end_session {
            self.path = None;
        }
    }
}

/// Keeps one raw frame in `keep_every` on their way into the uplink's own encoder (streaming
/// thread): raw frames can go, encoded ones could not without breaking the next ones.
fn skip_frames(encoder: &gst::Element, keep_every: Arc<AtomicU32>) -> Result<()> {
    let pad = encoder
        .static_pad("sink")
        .ok_or_else(|| anyhow!("the uplink's encoder has no sink pad"))?;
    let n = AtomicU32::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        let every = keep_every.load(Ordering::Relaxed).max(1);
        if n.fetch_add(1, Ordering::Relaxed).is_multiple_of(every) {
            gst::PadProbeReturn::Ok
        } else {
            gst::PadProbeReturn::Drop
        }
    });
    Ok(())
}
