//! Watches a stream the way a viewer does, second by second: what arrives, how late, whether
//! it decodes. For tests and benchmarks of weak links.
//!
//! The device runs with `camera.test_overlay = "timestamp-qr"` (every frame carries its
//! capture wall-clock time); both ends share this machine's clock. Each second this prints one
//! JSON line: `{"t": s since start, "frames": decoded, "kbps": H.264 received, "delay_ms":
//! median capture → decoded (null: none read), "delay_max_ms", "errors": decoder and stream
//! errors, "connected": bool}`. A stream that fails or ends is opened again at once (as a
//! player retries), so an outage shows as seconds without frames and the recovery as their
//! return.
//!
//! cargo run --example stream_watch -- rtsp://10.201.0.2:8555/channel/<path> SECONDS

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

/// Counted on streaming threads, read and reset once a second on the main thread.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Decoded frame PTS → when it was decoded (µs since the epoch), for zbar's answers.
    arrivals: Mutex<HashMap<u64, u64>>,
}

fn reader(url: &str, counts: &Arc<Counts>) -> Result<gst::Pipeline> {
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc location={url} protocols=tcp latency=0 ! rtph264depay ! identity name=bytes \
         ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! identity name=arrival \
         ! queue leaky=downstream max-size-buffers=1 max-size-bytes=0 max-size-time=0 \
         ! zbar cache=false ! fakesink sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow!("not a pipeline"))?;
    let c = counts.clone();
    pipeline
        .by_name("bytes")
        .and_then(|e| e.static_pad("src"))
        .context("no bytes pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                c.bytes.fetch_add(b.size() as u64, Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    let c = counts.clone();
    pipeline
        .by_name("arrival")
        .and_then(|e| e.static_pad("src"))
        .context("no arrival pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            c.frames.fetch_add(1, Ordering::Relaxed);
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                if let Ok(mut m) = c.arrivals.lock() {
                    if m.len() > 1000 {
                        m.clear();
                    }
                    m.insert(pts.nseconds(), camstream::stamp::now_us());
                }
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing)?;
    Ok(pipeline)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).context("usage: stream_watch URL SECONDS")?;
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(30);
    gst::init()?;
    let counts = Arc::new(Counts::default());
    let t0 = Instant::now();
    let mut pipeline = Some(reader(url, &counts)?);
    let mut reopen_at: Option<Instant> = None;
    let mut delays: Vec<f64> = Vec::new();
    let mut errors = 0u64;
    let mut next_report = t0 + Duration::from_secs(1);
    let mut connected = false;
    while t0.elapsed() < Duration::from_secs(seconds) {
        if reopen_at.is_some_and(|at| Instant::now() >= at) {
            reopen_at = None;
            pipeline = reader(url, &counts).ok();
            if pipeline.is_none() {
                reopen_at = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        let msg = pipeline
            .as_ref()
            .and_then(|p| p.bus())
            .and_then(|bus| bus.timed_pop(gst::ClockTime::from_mseconds(50)));
        if pipeline.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(msg) = msg {
            match msg.view() {
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure().filter(|s| s.name() == "barcode") {
                        if let (Ok(symbol), Ok(ts)) =
                            (s.get::<String>("symbol"), s.get::<u64>("timestamp"))
                        {
                            let arrived =
                                counts.arrivals.lock().ok().and_then(|mut m| m.remove(&ts));
                            if let (Ok(captured), Some(arrived)) =
                                (symbol.trim().parse::<u64>(), arrived)
                            {
                                delays.push((arrived as f64 - captured as f64) / 1000.0);
                            }
                        }
                    }
                }
                // A player opens the stream again when it fails or ends.
                gst::MessageView::Error(_) | gst::MessageView::Eos(_) => {
                    if connected {
                        errors += 1;
                    }
                    if let Some(p) = pipeline.take() {
                        let _ = p.set_state(gst::State::Null);
                    }
                    connected = false;
                    reopen_at = Some(Instant::now() + Duration::from_millis(200));
                }
                gst::MessageView::Warning(w) => {
                    // Decoders warn about pictures they could not decode whole.
                    let from_decoder = w.src().is_some_and(|s| {
                        s.name().starts_with("avdec") || s.name().starts_with("h264parse")
                    });
                    if from_decoder {
                        errors += 1;
                    }
                }
                _ => {}
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let frames = counts.frames.swap(0, Ordering::Relaxed);
            let bytes = counts.bytes.swap(0, Ordering::Relaxed);
            connected = connected || frames > 0;
            delays.sort_by(|a, b| a.total_cmp(b));
            let median = delays.get(delays.len() / 2).map(|d| format!("{d:.0}"));
            let max = delays.last().map(|d| format!("{d:.0}"));
            println!(
                "{{\"t\": {}, \"frames\": {frames}, \"kbps\": {}, \"delay_ms\": {}, \"delay_max_ms\": {}, \"errors\": {errors}, \"connected\": {}}}",
                t0.elapsed().as_secs(),
                bytes * 8 / 1000,
                median.unwrap_or_else(|| "null".into()),
                max.unwrap_or_else(|| "null".into()),
                pipeline.is_some() && frames > 0,
            );
            delays.clear();
            errors = 0;
        }
    }
    if let Some(p) = pipeline {
        let _ = p.set_state(gst::State::Null);
    }
    Ok(())
}
