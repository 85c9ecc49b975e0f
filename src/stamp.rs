//! Capture-time stamps for latency measurement: each test frame carries its wall-clock capture
//! time as a QR code, which a client decodes (zbar) and compares with its own clock.
//!
//! qroverlay's `data` property is read once on GStreamer 1.22, so the time goes in a
//! `GstQROverlayMeta` custom meta on each buffer instead, which qroverlay reads per frame.

use gst::prelude::*;

const META: &str = "GstQROverlayMeta";

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Installs the stamping probe on `qroverlay`'s sink pad. Runs on the main-loop thread; the
/// probe itself runs on the source's streaming thread.
pub fn install(qroverlay: &gst::Element) {
    if !gst::meta::CustomMeta::is_registered(META) {
        gst::meta::CustomMeta::register(META, &[]);
    }
    let Some(pad) = qroverlay.static_pad("sink") else {
        return;
    };
    pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = info.data.as_mut() {
            let buffer = buffer.make_mut();
            if let Ok(mut meta) = gst::meta::CustomMeta::add(buffer, META) {
                meta.mut_structure().set("data", now_us().to_string());
            }
        }
        gst::PadProbeReturn::Ok
    });
}
