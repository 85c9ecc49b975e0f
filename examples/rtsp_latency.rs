//! Measures capture → decoded-frame latency at an RTSP client.
//!
//! The device runs with `camera.test_overlay = "timestamp-qr"`: every frame carries its capture
//! wall-clock time as a QR code. This client decodes the stream, notes the wall-clock time each
//! decoded frame reaches the point just before `zbar` (so zbar's own scan time is not counted),
//! and subtracts the capture time zbar reads from the picture. A leaky queue in front of zbar
//! keeps a slow scan from backing up the decoder: unscanned frames are skipped, not delayed.
//! Both ends share this machine's clock.
//!
//! cargo run --release --example rtsp_latency -- rtsp://127.0.0.1:8554/live 10 [tcp|udp]
//! (URL `-`: read it from stdin once started). Connection refusals before the first frame are
//! retried at once for 15 s. Prints one JSON object: samples, median_ms, p95_ms,
//! first_frame_ms (from start or from reading the URL), first_frame_unix_ms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Builds and starts one client pipeline.
fn client(
    url: &str,
    protocols: &str,
    arrivals: &Arc<Mutex<HashMap<u64, u64>>>,
    first_frame: &Arc<Mutex<Option<Duration>>>,
    t0: Instant,
) -> Result<gst::Pipeline> {
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc location={url} protocols={protocols} latency=0 ! rtph264depay ! h264parse ! avdec_h264 \
         ! videoconvert ! video/x-raw,format=I420 ! identity name=arrival ! queue leaky=downstream max-size-buffers=1 max-size-bytes=0 max-size-time=0 ! zbar cache=false ! fakesink sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow!("not a pipeline"))?;
    let identity = pipeline.by_name("arrival").context("no identity")?;
    let (a, f) = (arrivals.clone(), first_frame.clone());
    identity.static_pad("src").context("no pad")?.add_probe(
        gst::PadProbeType::BUFFER,
        move |_, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                if let Ok(mut m) = a.lock() {
                    m.insert(pts.nseconds(), camstream::stamp::now_us());
                }
            }
            if let Ok(mut f) = f.lock() {
                f.get_or_insert_with(|| t0.elapsed());
            }
            gst::PadProbeReturn::Ok
        },
    );
    pipeline.set_state(gst::State::Playing)?;
    Ok(pipeline)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .context("usage: rtsp_latency URL [SECONDS] [tcp|udp]")?;
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let protocols = args.get(3).map(String::as_str).unwrap_or("tcp");
    gst::init()?;
    // URL "-": start up first, then read the URL from stdin, so a caller can time from the
    // moment it learns the URL without counting this process's start-up.
    let url = if url == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim().to_string()
    } else {
        url.clone()
    };
    let url = url.as_str();
    // Streaming thread: remember when each frame (by PTS) arrived, before zbar scans it.
    let arrivals: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let first_frame: Arc<Mutex<Option<Duration>>> = Arc::default();
    let t0 = Instant::now();
    let t0_unix_us = camstream::stamp::now_us();
    let mut pipeline = client(url, protocols, &arrivals, &first_frame, t0)?;
    let mut latencies_ms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds + 15);
    while Instant::now() < deadline {
        let started = first_frame.lock().ok().and_then(|f| *f);
        if started.is_some_and(|s| t0.elapsed() > s + Duration::from_secs(seconds)) {
            break;
        }
        let bus = pipeline.bus().context("no bus")?;
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Element(e) => {
                let Some(s) = e.structure() else { continue };
                if s.name() != "barcode" {
                    continue;
                }
                let (Ok(symbol), Ok(ts)) = (s.get::<String>("symbol"), s.get::<u64>("timestamp"))
                else {
                    continue;
                };
                let Ok(captured) = symbol.trim().parse::<u64>() else {
                    continue;
                };
                if let Some(arrived) = arrivals.lock().ok().and_then(|mut m| m.remove(&ts)) {
                    latencies_ms.push((arrived as f64 - captured as f64) / 1000.0);
                }
            }
            // Before the first frame a refusal is retried at once: a pushed stream (uplink,
            // FFmpeg chain) exists on the server only some time after it was asked for, and
            // the time until the first frame is one of the figures.
            gst::MessageView::Error(_) if started.is_none() => {
                let _ = pipeline.set_state(gst::State::Null);
                std::thread::sleep(Duration::from_millis(20));
                pipeline = client(url, protocols, &arrivals, &first_frame, t0)?;
            }
            gst::MessageView::Error(e) => {
                let _ = pipeline.set_state(gst::State::Null);
                return Err(anyhow!("client error: {}", e.error()));
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let first = first_frame.lock().ok().and_then(|f| *f);
    println!(
        "{{\"samples\": {}, \"median_ms\": {:.2}, \"p95_ms\": {:.2}, \"first_frame_ms\": {}, \"first_frame_unix_ms\": {}}}",
        latencies_ms.len(),
        percentile(&latencies_ms, 0.5),
        percentile(&latencies_ms, 0.95),
        first
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "null".into()),
        first
            .map(|d| format!("{:.1}", t0_unix_us as f64 / 1000.0 + d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "null".into())
    );
    Ok(())
}
