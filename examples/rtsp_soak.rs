//! RTSP client churn for `scripts/bench`: connects to the device, waits for the first decoded
//! frame, disconnects, N times over (TCP and UDP in turn), so the bench can watch the device's
//! memory and recording while clients come and go.
//!
//! cargo run --release --example rtsp_soak -- rtsp://127.0.0.1:8554/live 500
//! Prints one JSON object: cycles, failures, first_frame_median_ms.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

/// One client session; returns the time from PLAY to the first decoded frame.
fn session(url: &str, protocols: &str) -> Result<Duration> {
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc location={url} protocols={protocols} latency=0 ! rtph264depay ! h264parse \
         ! avdec_h264 ! fakesink name=out sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow!("not a pipeline"))?;
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let pad = pipeline
        .by_name("out")
        .and_then(|s| s.static_pad("sink"))
        .context("no sink pad")?;
    // Streaming thread: signal the first frame, then stop watching.
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        let _ = tx.try_send(());
        gst::PadProbeReturn::Remove
    });
    let t0 = Instant::now();
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().context("no bus")?;
    let result = loop {
        if rx.try_recv().is_ok() {
            break Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break Err(anyhow!("no frame within 10 s"));
        }
        if let Some(msg) =
            bus.timed_pop_filtered(gst::ClockTime::from_mseconds(5), &[gst::MessageType::Error])
        {
            if let gst::MessageView::Error(e) = msg.view() {
                break Err(anyhow!("{}", e.error()));
            }
        }
    };
    pipeline.set_state(gst::State::Null)?;
    result
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: rtsp_soak URL CYCLES";
    let url = args.get(1).context(usage)?;
    let cycles: usize = args.get(2).context(usage)?.parse()?;
    gst::init()?;
    let mut times = Vec::new();
    let mut failures = 0;
    for i in 0..cycles {
        match session(url, if i % 2 == 0 { "tcp" } else { "udp" }) {
            Ok(t) => times.push(t.as_secs_f64() * 1000.0),
            Err(e) => {
                failures += 1;
                eprintln!("rtsp_soak: cycle {i}: {e}");
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{{\"cycles\": {cycles}, \"failures\": {failures}, \"first_frame_median_ms\": {median:.1}}}"
    );
    Ok(())
}
