//! Continuous recording to the SD card: a branch on the encoded tee into splitmuxsink writing MP4
//! with robust muxing (mp4mux rewrites the index in reserved space every `index_interval_ms`),
//! so a power cut costs at most the GOP splitmuxsink holds plus one index interval, never the
//! file. Segments split only at keyframes, so every frame lands in exactly one file.
//!
//! Measured (kill -9, 500 ms keyframe interval, 250 ms index interval): 0.2 to 0.7 s lost.
//! Fragmented MP4 was measured too and lost about two GOPs (mp4mux starts fragments only at
//! keyframes, on top of the GOP splitmuxsink holds): 2.6 s at a 1 s keyframe interval.

pub mod boot;
pub mod index;
pub mod list;
pub mod mp4;
pub mod naming;
pub mod retention;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

use crate::branch::{self, Branch};
use crate::config::Config;
use naming::{SegmentId, SegmentName};
use retention::Policy;

/// State shared with streaming-thread callbacks.
struct Shared {
    device: String,
    dir: PathBuf,
    /// This run's boot number, read from the card on first attach; 0 until then.
    boot: AtomicU32,
    next_segment: AtomicU32,
    current: Mutex<Option<PathBuf>>,
    /// Frames that entered the branch from its first keyframe on.
    frames_in: AtomicU64,
    /// Frames handed to the muxer.
    frames_out: AtomicU64,
    files: AtomicU64,
    retention: mpsc::Sender<Option<PathBuf>>,
    /// The recordings on the card, kept up to date for listings and playback.
    index: index::SharedIndex,
}

/// What the daemon should do after a recording error.
pub enum Recovery {
    /// The disk is full: poll for space.
    WaitForSpace,
    /// Anything else (directory gone, card removed, I/O error): retry after a while.
    Retry,
}

pub struct Recorder {
    shared: Arc<Shared>,
    policy: Policy,
    settings: crate::config::RecordingConfig,
    branch: Option<Branch>,
}

/// The recording branch in gst-launch syntax: what the recorder builds and `camstream graph`
/// prints.
///
/// Each file gets a fresh muxer and sink (async-finalize): the finished file is closed in the
/// background while the next one starts. Robust muxing keeps an up-to-date index in space
/// reserved for a segment of up to twice the configured length (a segment ends at the first
/// keyframe after it); the sink is not async, since a sink that wanted to preroll would take the
/// live pipeline back to PAUSED.
pub fn description(cfg: &crate::config::RecordingConfig) -> String {
    let segment = cfg.segment_seconds.get() as u64 * 1_000_000_000;
    format!(
        "queue name=recqueue max-size-buffers=0 max-size-bytes=0 max-size-time={} leaky=downstream \
         ! h264parse ! splitmuxsink name=splitmux async-finalize=true muxer-factory=mp4mux \
         muxer-properties=\"properties,reserved-max-duration=(guint64){},reserved-moov-update-period=(guint64){}\" \
         sink-factory=filesink sink-properties=\"properties,async=(boolean)false\" \
         max-size-time={segment} send-keyframe-requests=false",
        cfg.queue_seconds.get() as u64 * 1_000_000_000,
        segment * 2 + 10_000_000_000,
        cfg.index_interval_ms.get() as u64 * 1_000_000,
    )
}

/// The boot number of this run: see `boot` for why it comes from the card as well as the
/// counter file, and never wraps.
fn next_boot(dir: &Path, device: &str) -> Result<u32> {
    boot::next_boot(dir, device)
}

/// Makes sure `dir` exists and can take files.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create recording directory {}", dir.display()))?;
    let probe = dir.join(".camstream-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("recording directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

impl Recorder {
    /// Sets up the recorder and its retention thread; the directory is checked by `attach`.
    pub fn new(cfg: &Config) -> Self {
        let r = &cfg.recording;
        let dir = PathBuf::from(&r.dir);
        // Room for the segment being written: twice its nominal size (keyframes, forced IDRs),
        // but never more than half of a small max_bytes, which must still hold some footage.
        let mut reserve =
            cfg.encoder.bitrate_kbps.get() as u64 * 1000 / 8 * r.segment_seconds.get() as u64 * 2;
        if r.max_bytes.0 > 0 {
            reserve = reserve.min(r.max_bytes.0 / 2);
        }
        let policy = Policy {
            max_bytes: r.max_bytes.0,
            min_free: r.min_free,
            max_age: r.max_age.0,
            reserve,
        };
        let (tx, rx) = mpsc::channel::<Option<PathBuf>>();
        let index = index::Index::new();
        let shared = Arc::new(Shared {
            device: cfg.device.id.as_str().to_string(),
            dir: dir.clone(),
            boot: AtomicU32::new(0),
            next_segment: AtomicU32::new(1),
            current: Mutex::new(None),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            files: AtomicU64::new(0),
            retention: tx,
            index: index.clone(),
        });
        let device = shared.device.clone();
        // Built once, from the card, off the main loop; kept up to date from then on.
        let (i, d, dev) = (index.clone(), dir.clone(), device.clone());
        crate::offload::detached("index-recordings", move || i.build(&d, &dev));
        std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || retention_thread(rx, dir, device, policy, index))
            .ok();
        if r.sync_interval_ms.get() > 0 {
            let interval = Duration::from_millis(r.sync_interval_ms.get() as u64);
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("recording-sync".into())
                .spawn(move || sync_thread(weak, interval))
                .ok();
        }
        Self {
            shared,
            policy,
            settings: r.clone(),
            branch: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The recordings on the card, kept up to date.
    pub fn index(&self) -> index::SharedIndex {
        self.shared.index.clone()
    }

    /// An element message from the pipeline's bus: a file splitmuxsink has finished gets its
    /// duration read from its MP4, off the main loop. Main-loop thread.
    pub fn on_element(&self, msg: &gst::message::Element) {
        let Some(s) = msg.structure() else { return };
        if s.name() != "splitmuxsink-fragment-closed" {
            return;
        }
        let Ok(location) = s.get::<String>("location") else {
            return;
        };
        let index = self.shared.index.clone();
        crate::offload::detached("file-duration", move || {
            let path = PathBuf::from(location);
            index.finished(&path, mp4::duration(&path));
        });
    }

    pub fn is_attached(&self) -> bool {
        self.branch.is_some()
    }

    /// Runs retention now (start-up), on the retention thread.
    pub fn enforce_retention(&self) {
        let current = self.shared.current.lock().ok().and_then(|c| c.clone());
        let _ = self.shared.retention.send(current);
    }

    /// Whether a bus message source belongs to the recording branch.
    pub fn owns(&self, obj: &gst::Object) -> bool {
        branch::owned_by(self.branch.as_ref(), obj)
    }

    /// Free space suffices to resume after a full disk: min_free plus room for a segment
    /// (capped at a tenth of the disk, so that a small card can resume at all).
    pub fn has_space(&self) -> bool {
        match retention::disk_space(&self.shared.dir) {
            Some((avail, size)) => {
                avail >= self.policy.min_free.bytes_of(size) + self.policy.reserve.min(size / 10)
            }
            None => false,
        }
    }

    /// Builds the branch `description` prints (element by element: splitmuxsink parsed from
    /// that text could not link its muxer to its sink).
    fn build(&self) -> Result<gst::Bin> {
        let r = &self.settings;
        let segment = gst::ClockTime::from_seconds(r.segment_seconds.get() as u64);
        let bin = gst::Bin::with_name("recording");
        // splitmuxsink completes its change to PAUSED only once the first file is open; the
        // bin absorbs that so the running pipeline never loses its PLAYING state for it.
        bin.set_property("async-handling", true);
        let queue = gst::ElementFactory::make("queue")
            .name("recqueue")
            .property("max-size-buffers", 0u32)
            .property("max-size-bytes", 0u32)
            .property(
                "max-size-time",
                gst::ClockTime::from_seconds(r.queue_seconds.get() as u64).nseconds(),
            )
            .property_from_str("leaky", "downstream")
            .build()?;
        let parse = gst::ElementFactory::make("h264parse").build()?;
        if gst::ElementFactory::find("mp4mux").is_none() {
            return Err(anyhow!("mp4mux (GStreamer isomp4 plugin) is not installed"));
        }
        let muxer_props = gst::Structure::builder("properties")
            .field(
                "reserved-max-duration",
                segment.nseconds() * 2 + 10_000_000_000,
            )
            .field(
                "reserved-moov-update-period",
                gst::ClockTime::from_mseconds(r.index_interval_ms.get() as u64).nseconds(),
            )
            .build();
        let sink_props = gst::Structure::builder("properties")
            .field("async", false)
            .build();
        let splitmux = gst::ElementFactory::make("splitmuxsink")
            .name("splitmux")
            .property("async-finalize", true)
            .property("muxer-factory", "mp4mux")
            .property("muxer-properties", &muxer_props)
            .property("sink-factory", "filesink")
            .property("sink-properties", &sink_props)
            .property("max-size-time", segment.nseconds())
            .property("send-keyframe-requests", false)
            .build()?;
        bin.add_many([&queue, &parse, &splitmux])?;
        gst::Element::link_many([&queue, &parse, &splitmux])?;
        let sink_pad = queue
            .static_pad("sink")
            .ok_or_else(|| anyhow!("queue has no sink pad"))?;
        bin.add_pad(&gst::GhostPad::with_target(&sink_pad)?)?;

        // Streaming thread: a file must begin with a keyframe; delta frames before it go.
        let started = Arc::new(AtomicBool::new(false));
        let s = self.shared.clone();
        sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            if !started.load(Ordering::Relaxed) {
                if buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                    return gst::PadProbeReturn::Drop;
                }
                started.store(true, Ordering::Relaxed);
                let ms = crate::stamp::now_us() / 1000;
                log::info!(
                    "recording: first frame at {} ({ms} ms since the epoch)",
                    naming::rfc3339(ms / 1000)
                );
            }
            s.frames_in.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
        let s = self.shared.clone();
        if let Some(pad) = splitmux.static_pad("video") {
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                s.frames_out.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        }

        // Streaming thread, at each new file. Must not panic and must answer a path.
        let s = self.shared.clone();
        splitmux.connect("format-location-full", false, move |args| {
            // splitmuxsink names a file once its first GOP is complete, up to a GOP after that
            // GOP began: date the file by its first frame, not by now.
            let lag = args
                .first()
                .and_then(|v| v.get::<gst::Element>().ok())
                .zip(args.get(2).and_then(|v| v.get::<gst::Sample>().ok()))
                .and_then(|(e, sample)| {
                    let pts = sample.buffer()?.pts()?;
                    let seg = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
                    let first = seg.to_running_time(pts)?;
                    e.current_running_time()?.checked_sub(first)
                })
                .unwrap_or(gst::ClockTime::ZERO);
            let path = s.open_segment(Duration::from_nanos(lag.nseconds()));
            Some(path.display().to_string().to_value())
        });
        Ok(bin)
    }

    /// What must be true of the card before attaching: the directory takes files, and this
    /// run's boot number (read from the card once, and durably counted). It blocks on the card
    /// (creating directories, a walk of the recordings, fsync): run it off the main loop.
    pub fn card_check(&self) -> impl FnOnce() -> Result<u32> + Send + 'static {
        let (dir, device) = (self.shared.dir.clone(), self.shared.device.clone());
        let boot = self.shared.boot.load(Ordering::SeqCst);
        move || {
            prepare_dir(&dir)?;
            if boot == 0 {
                next_boot(&dir, &device)
            } else {
                Ok(boot)
            }
        }
    }

    /// Attaches the recording branch to the encoded tee. Main-loop thread.
    ///
    /// `checked` is what `card_check` found: the card takes files, and this run's boot number.
    pub fn attach(
        &mut self,
        pipeline: &gst::Pipeline,
        tee: &gst::Element,
        checked: u32,
    ) -> Result<()> {
        self.shared.boot.store(checked.max(1), Ordering::SeqCst);
        let bin = self.build()?;
        self.branch = Some(branch::attach(pipeline, tee, bin, true)?);
        log::info!("recording: to {}", self.shared.dir.display());
        Ok(())
    }

    /// Detaches after an error and says how to recover; None when the branch was already
    /// detached (one failure often posts several errors). Main-loop thread.
    pub fn on_error(
        &mut self,
        pipeline: &gst::Pipeline,
        tee: &gst::Element,
        err: &glib::Error,
    ) -> Option<Recovery> {
        let b = self.branch.take()?;
        branch::detach(pipeline, tee, b);
        // The file being written when the error struck keeps what its index covers; one left
        // with no playable frame (the error hit as it opened) is only clutter.
        // Reading it blocks on the card: off the main loop.
        self.shared.index.stopped();
        if let Some(path) = self.shared.current.lock().ok().and_then(|mut c| c.take()) {
            let index = self.shared.index.clone();
            crate::offload::detached("check-file", move || {
                let duration = mp4::duration(&path);
                if duration.is_none_or(|d| d <= 0.0) && std::fs::remove_file(&path).is_ok() {
                    log::info!("recording: removed {} (no playable frame)", path.display());
                    index.removed(&path);
                } else {
                    index.finished(&path, duration);
                }
            });
        }
        if err.matches(gst::ResourceError::NoSpaceLeft) {
            // Make room if our own old files can give it; the rest is up to the user.
            let _ = self.shared.retention.send(None);
            Some(Recovery::WaitForSpace)
        } else {
            Some(Recovery::Retry)
        }
    }

    /// One line for the log at shutdown and for tests.
    pub fn summary(&self) -> String {
        let s = &self.shared;
        let (fin, fout) = (
            s.frames_in.load(Ordering::Relaxed),
            s.frames_out.load(Ordering::Relaxed),
        );
        format!(
            "recording: {fout} frames written in {} files, {} dropped before the muxer",
            s.files.load(Ordering::Relaxed),
            fin.saturating_sub(fout)
        )
    }
}

impl Shared {
    /// Names the next file, creates its directory and queues retention. Streaming thread.
    ///
    /// filesink truncates whatever is at the path it is given, so a name already taken (a file
    /// left by another run under the same boot number, or by anything else) is skipped for the
    /// next segment number. The search is bounded to keep this cheap on the streaming thread:
    /// after `naming::NAME_TRIES` taken names the answer is the empty path, which filesink
    /// refuses ("No file name specified for writing"). Recording then stops with an error and is
    /// retried later, from the segment numbers after those tried, and nothing is overwritten.
    fn open_segment(&self, age: Duration) -> PathBuf {
        let boot = self.boot.load(Ordering::SeqCst);
        let start = naming::wall_clock_at(age);
        let start_us = crate::stamp::now_us() as i64 - age.as_micros() as i64;
        let mut free = None;
        let mut id = SegmentId { boot, segment: 0 };
        let mut skipped = 0;
        for _ in 0..naming::NAME_TRIES {
            let seq = self.next_segment.fetch_add(1, Ordering::SeqCst);
            let name = SegmentName {
                id: SegmentId { boot, segment: seq },
                start,
            };
            let path = self.dir.join(naming::relative_path(&self.device, &name));
            // Not `exists`: a dangling symlink is taken too (filesink would follow it).
            if std::fs::symlink_metadata(&path).is_err() {
                free = Some(path);
                id = name.id;
                break;
            }
            skipped += 1;
        }
        if skipped > 0 {
            log::warn!("recording: {skipped} file names of boot {boot} already taken, skipped");
        }
        let Some(path) = free else {
            log::error!(
                "recording: no free file name in {} after {} tries; pausing rather than overwriting",
                self.dir.display(),
                naming::NAME_TRIES
            );
            // No file of this run is being written: the error that follows must not remove the
            // previous one.
            if let Ok(mut c) = self.current.lock() {
                *c = None;
            }
            return PathBuf::new();
        };
        if let Some(parent) = path.parent() {
            // The card may have been emptied or replaced: recreate the layout each time.
            if let Err(e) = std::fs::create_dir_all(parent) {
                log::error!("recording: cannot create {}: {e}", parent.display());
            }
        }
        self.files.fetch_add(1, Ordering::Relaxed);
        log::info!("recording: segment {}", path.display());
        if let Ok(mut c) = self.current.lock() {
            *c = Some(path.clone());
        }
        self.index.opened(path.clone(), id, start, start_us);
        let _ = self.retention.send(Some(path.clone()));
        path
    }
}

/// Retention thread: deletes what the policy says at start-up and at every segment boundary,
/// off the streaming and main-loop threads (deleting a large file can take a while on SD).
/// Flushes the file being written to the card every `interval`, and its directory entry once,
/// so that a power cut loses at most the interval on top of what the muxer has not written.
/// On a thread of its own: fdatasync on an SD card can take a while, and nothing may wait for
/// it. Ends with the recorder.
fn sync_thread(shared: std::sync::Weak<Shared>, interval: Duration) {
    let mut synced_dir_for: Option<PathBuf> = None;
    loop {
        std::thread::sleep(interval);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(path) = shared.current.lock().ok().and_then(|c| c.clone()) else {
            continue;
        };
        drop(shared);
        let started = std::time::Instant::now();
        if let Err(e) = std::fs::File::open(&path).and_then(|f| f.sync_data()) {
            log::debug!("recording: cannot flush {}: {e}", path.display());
            continue;
        }
        if synced_dir_for.as_ref() != Some(&path) {
            // A new file: its name must survive too.
            if let Some(dir) = path.parent() {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            synced_dir_for = Some(path.clone());
        }
        let took = started.elapsed();
        if took > interval {
            log::warn!(
                "recording: flushing to the card took {} ms (more than the {} ms interval): the card is slow",
                took.as_millis(),
                interval.as_millis()
            );
        }
    }
}

fn retention_thread(
    rx: mpsc::Receiver<Option<PathBuf>>,
    dir: PathBuf,
    device: String,
    policy: Policy,
    index: index::SharedIndex,
) {
    let mut last_unmet: Option<String> = None;
    while let Ok(mut current) = rx.recv() {
        // Coalesce a burst of requests.
        while let Ok(next) = rx.recv_timeout(Duration::from_millis(50)) {
            current = next;
        }
        let out = retention::enforce(
            &dir,
            &device,
            &policy,
            current.as_deref(),
            naming::wall_clock(),
        );
        for p in &out.deleted {
            log::info!("retention: deleted {}", p.display());
            index.removed(p);
        }
        if out.unmet != last_unmet {
            if let Some(m) = &out.unmet {
                log::warn!("retention: {m}");
            }
            last_unmet = out.unmet;
        }
    }
}
