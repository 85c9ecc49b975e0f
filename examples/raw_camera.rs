//! A camera stand-in for the FFmpeg chain in `scripts/bench`: the same test picture the device
//! makes (`camera.source = "test"`), written as raw I420 to stdout for `ffmpeg -f rawvideo`.
//! With `timestamp-qr` every frame carries its capture wall-clock time as a QR code, exactly
//! as the device stamps it, so the same latency client can read both.
//!
//! cargo run --release --example raw_camera -- WIDTH HEIGHT FPS [timestamp-qr|clock|none] > frames.yuv

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: raw_camera WIDTH HEIGHT FPS [timestamp-qr|clock|none]";
    let num = |i: usize| -> Result<u32> { Ok(args.get(i).context(usage)?.parse()?) };
    let (w, h, fps) = (num(1)?, num(2)?, num(3)?);
    let overlay = match args.get(4).map(String::as_str).unwrap_or("none") {
        // Same overlays, same parameters as the device's test source (src/plan.rs).
        "timestamp-qr" => format!(
            " ! qroverlay name=stamp x=5 y=5 pixel-size={} qrcode-error-correction=0",
            (h / 60).clamp(2, 16)
        ),
        "clock" => {
            " ! clockoverlay time-format=\"%Y-%m-%d %H:%M:%S\" shaded-background=true".into()
        }
        "none" => String::new(),
        other => return Err(anyhow!("unknown overlay {other}; {usage}")),
    };
    gst::init()?;
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 \
         {overlay} ! videoconvert ! video/x-raw,format=I420 ! fdsink fd=1 sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow!("not a pipeline"))?;
    if let Some(qr) = pipeline.by_name("stamp") {
        camstream::stamp::install(&qr);
    }
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().context("no bus")?;
    // Runs until the reader goes away (fdsink then fails with EPIPE) or the source ends.
    let result = match bus
        .iter_timed_filtered(
            gst::ClockTime::NONE,
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .next()
    {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => Err(anyhow!("{}", e.error())),
            _ => Ok(()),
        },
        None => Ok(()),
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}
