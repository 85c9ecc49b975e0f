//! Turns the config and the board profile into gst-launch descriptions of each part of the graph.
//! The daemon builds exactly these descriptions, and `camstream graph` prints them, so what a
//! user reads is what runs.

use anyhow::{anyhow, bail, Result};
use gst::prelude::*;

use crate::config::{CameraFormat, Config, DisplaySink, SourceKind, TestOverlay};
use crate::profile::{DisplayFit, Profiles, Properties};

/// What the source part of the graph produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOutput {
    /// Raw video in the encoder's input format, for the raw tee.
    Raw,
    /// The camera's own H.264 (byte-stream, AU aligned), for the encoded tee: no re-encode.
    H264,
}

#[derive(Debug, Clone)]
pub struct SourcePlan {
    pub description: String,
    pub output: SourceOutput,
    /// What was chosen and why, for logs and `graph`.
    pub note: String,
}

#[derive(Debug, Clone)]
pub struct EncoderPlan {
    pub element: String,
    /// `queue ! encoder ! caps ! h264parse ! caps`, from raw tee to encoded tee.
    pub description: String,
    pub skipped: Vec<String>,
    /// The board's preferred encoders that could not be used, with the reason each.
    pub fallback_from: Vec<(String, String)>,
}

impl EncoderPlan {
    /// "x264enc (fallback: v4l2h264enc not installed …)", for logs, `probe` and `graph`.
    pub fn summary(&self) -> String {
        if self.fallback_from.is_empty() {
            return self.element.clone();
        }
        let why: Vec<String> = self
            .fallback_from
            .iter()
            .map(|(name, reason)| format!("{name} {reason}"))
            .collect();
        format!("{} (fallback: {})", self.element, why.join("; "))
    }
}

/// Name of the qroverlay that stamps capture times into test frames.
pub const TIMESTAMP_QR: &str = "timestamp_qr";

/// Caps every consumer of the encoded tee can rely on.
pub const ENCODED_CAPS: &str = "video/x-h264,stream-format=byte-stream,alignment=au";

/// A capsfilter element; bare caps cannot end a gst-launch description.
fn capsfilter(caps: &str) -> String {
    format!("capsfilter caps={}", launch_value(caps))
}

/// Quotes a property value for gst-launch syntax when it needs it.
fn launch_value(v: &str) -> String {
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || matches!(c, ',' | '!' | '"' | '(' | ')' | '=' | ';'))
    {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v.to_string()
    }
}

fn element_with(name: &str, props: &[(String, String)]) -> String {
    let mut s = name.to_string();
    for (k, v) in props {
        s.push(' ');
        s.push_str(k);
        s.push('=');
        s.push_str(&launch_value(v));
    }
    s
}

/// Keeps only the properties the installed element has, so one mapping table serves several
/// plugin versions; the rest are returned for a warning.
fn supported_properties(
    element: &gst::Element,
    props: &Properties,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for (k, v) in props {
        match element.find_property(k) {
            Some(pspec) if glib::Value::deserialize_with_pspec(v, &pspec).is_ok() => {
                ok.push((k.clone(), v.clone()))
            }
            Some(_) => skipped.push(format!("{k}={v} (value not accepted)")),
            None => skipped.push(format!("{k} (no such property)")),
        }
    }
    (ok, skipped)
}

/// The first element of `names` whose factory exists and which reaches READY here.
pub fn first_usable(names: &[String]) -> Option<String> {
    names.iter().find(|n| usable(n)).cloned()
}

/// An element counts only if it can be created and opened: a v4l2 M2M encoder registers its
/// factory from the device list, but a VA-API one exists even without a GPU.
pub fn usable(name: &str) -> bool {
    unusable_reason(name).is_none()
}

/// Why `name` cannot be used here, or None when it can: not installed (no plugin provides
/// it), or installed but it does not open, with the element's own error.
pub fn unusable_reason(name: &str) -> Option<String> {
    let Ok(element) = gst::ElementFactory::make(name).build() else {
        return Some("not installed (no plugin provides it)".into());
    };
    let opened = crate::branch::open(&element);
    let _ = element.set_state(gst::State::Null);
    opened
        .err()
        .map(|e| format!("installed, does not open: {e:#}"))
}

/// The board's encoder candidates that were passed over before `chosen`, with the reason.
pub fn passed_over(candidates: &[String], chosen: &str) -> Vec<(String, String)> {
    candidates
        .iter()
        .take_while(|c| c.as_str() != chosen)
        .map(|c| {
            let why = unusable_reason(c).unwrap_or_else(|| "usable".into());
            (c.clone(), why)
        })
        .collect()
}

pub fn plan_encoder(cfg: &Config, profiles: &Profiles) -> Result<EncoderPlan> {
    let candidates = profiles.encoder_candidates(cfg);
    let element = first_usable(&candidates).ok_or_else(|| {
        let reasons: Vec<String> = candidates
            .iter()
            .map(|c| format!("{c}: {}", unusable_reason(c).unwrap_or_default()))
            .collect();
        anyhow!(
            "no usable H.264 encoder for board profile {} ({})",
            profiles.board.name,
            reasons.join("; ")
        )
    })?;
    let fallback_from = passed_over(&candidates, &element);
    let instance = gst::ElementFactory::make(&element).build()?;
    let (props, skipped) =
        supported_properties(&instance, &profiles.encoder_properties(&element, cfg));
    let mut out_caps = "video/x-h264".to_string();
    if let Some(p) = profiles.encoder_profile(&element, cfg) {
        out_caps.push_str(",profile=");
        out_caps.push_str(p);
    }
    let input = profiles.encoder_input_format(&element);
    // The queue is leaky: when the encoder falls behind, old raw frames go, not live ones.
    let description = format!(
        "queue name=encqueue max-size-buffers=3 max-size-bytes=0 max-size-time=0 leaky=downstream \
         ! videoconvert ! video/x-raw,format={input} ! {} name=encoder ! {out_caps} \
         ! h264parse config-interval=-1 ! {}",
        element_with(&element, &props),
        capsfilter(ENCODED_CAPS)
    );
    Ok(EncoderPlan {
        element,
        description,
        skipped,
        fallback_from,
    })
}

fn format_caps(f: CameraFormat) -> &'static str {
    match f {
        CameraFormat::Mjpeg => "image/jpeg",
        CameraFormat::Yuyv => "video/x-raw,format=YUY2",
        CameraFormat::Nv12 => "video/x-raw,format=NV12",
        CameraFormat::H264 => "video/x-h264",
    }
}

/// Asks the camera which caps it offers (the device must open at READY).
pub fn camera_caps(device: &str) -> Result<gst::Caps> {
    let src = gst::ElementFactory::make("v4l2src")
        .property("device", device)
        .build()
        .map_err(|_| anyhow!("the v4l2src element is not installed"))?;
    if src.set_state(gst::State::Ready).is_err() {
        let _ = src.set_state(gst::State::Null);
        bail!("camera {device} cannot be opened");
    }
    let caps = src
        .static_pad("src")
        .map(|p| p.query_caps(None))
        .unwrap_or_else(gst::Caps::new_empty);
    let _ = src.set_state(gst::State::Null);
    if caps.is_empty() {
        bail!("camera {device} offers no video formats");
    }
    Ok(caps)
}

/// The discrete modes (width, height, rates) a caps structure offers; a structure with size
/// ranges offers the wanted size itself, and a rate range the wanted rate or its nearest bound.
fn modes_of(
    s: &gst::StructureRef,
    w: i64,
    h: i64,
    fps: i64,
) -> Vec<(i64, i64, Vec<gst::Fraction>)> {
    let size = match (s.get::<i32>("width"), s.get::<i32>("height")) {
        (Ok(sw), Ok(sh)) => Some((sw as i64, sh as i64)),
        _ => {
            let probe = gst::Caps::builder(s.name().as_str())
                .field("width", w as i32)
                .field("height", h as i32)
                .build();
            let mut own = gst::Caps::new_empty();
            own.get_mut().unwrap().append_structure(s.to_owned());
            own.can_intersect(&probe).then_some((w, h))
        }
    };
    let Some((sw, sh)) = size else {
        return Vec::new();
    };
    let rates: Vec<gst::Fraction> = if let Ok(f) = s.get::<gst::Fraction>("framerate") {
        vec![f]
    } else if let Ok(list) = s.get::<gst::List>("framerate") {
        list.iter()
            .filter_map(|v| v.get::<gst::Fraction>().ok())
            .collect()
    } else if let Ok(range) = s.get::<gst::FractionRange>("framerate") {
        let want = gst::Fraction::new(fps as i32, 1);
        vec![if want < range.min() {
            range.min()
        } else if want > range.max() {
            range.max()
        } else {
            want
        }]
    } else {
        Vec::new()
    };
    vec![(sw, sh, rates)]
}

/// How far a mode is from what was asked, smaller is nearer: a size at least as large as
/// wanted beats a smaller one (scaling down keeps detail), then the least excess area; then the
/// rate nearest the wanted one, at or above it first.
fn distance(mode: (i64, i64, f64), w: i64, h: i64, fps: i64) -> (bool, i64, bool, i64) {
    let (mw, mh, rate) = mode;
    let covers = mw >= w && mh >= h;
    let area = (mw * mh - w * h).abs();
    let fast_enough = rate + 0.01 >= fps as f64;
    let rate_off = ((rate - fps as f64).abs() * 1000.0) as i64;
    (!covers, area, !fast_enough, rate_off)
}

/// Picks the camera caps: formats in preference order at the wanted size and rate; else the
/// nearest mode of the most preferred format that has one (scaled afterwards), never simply
/// the largest.
fn choose_camera_caps(
    device_caps: &gst::Caps,
    formats: &[CameraFormat],
    w: i64,
    h: i64,
    fps: i64,
) -> Option<(CameraFormat, String)> {
    for f in formats {
        let exact = format!("{},width={w},height={h},framerate={fps}/1", format_caps(*f));
        if exact
            .parse::<gst::Caps>()
            .is_ok_and(|c| device_caps.can_intersect(&c))
        {
            return Some((*f, exact));
        }
    }
    for f in formats {
        let Ok(wanted) = format_caps(*f).parse::<gst::Caps>() else {
            continue;
        };
        let offered = device_caps.intersect(&wanted);
        let mut best: Option<((bool, i64, bool, i64), String)> = None;
        for s in offered.iter() {
            for (mw, mh, rates) in modes_of(s, w, h, fps) {
                let rates = if rates.is_empty() {
                    vec![None]
                } else {
                    rates.into_iter().map(Some).collect()
                };
                for r in rates {
                    let rate = r
                        .map(|r| r.numer() as f64 / r.denom() as f64)
                        .unwrap_or(fps as f64);
                    let d = distance((mw, mh, rate), w, h, fps);
                    let mut filter = format!("{},width={mw},height={mh}", format_caps(*f));
                    if let Some(r) = r {
                        filter.push_str(&format!(",framerate={}/{}", r.numer(), r.denom()));
                    }
                    if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
                        best = Some((d, filter));
                    }
                }
            }
        }
        if let Some((_, filter)) = best {
            return Some((*f, filter));
        }
    }
    None
}

pub fn plan_source(cfg: &Config, profiles: &Profiles, raw_format: &str) -> Result<SourcePlan> {
    let c = &cfg.camera;
    let (w, h, fps) = (c.width.get(), c.height.get(), c.fps.get());
    let raw_caps = format!("video/x-raw,format={raw_format},width={w},height={h}");
    match c.source {
        SourceKind::Test => {
            let mut d = format!(
                "videotestsrc is-live=true pattern={} ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1",
                launch_value(&c.test_pattern)
            );
            match c.test_overlay {
                TestOverlay::Clock if gst::ElementFactory::find("clockoverlay").is_some() => {
                    d.push_str(" ! clockoverlay time-format=\"%Y-%m-%d %H:%M:%S\" shaded-background=true")
                }
                TestOverlay::Clock => log::warn!(
                    "clockoverlay is not installed (GStreamer pango plugin): test source without clock"
                ),
                TestOverlay::TimestampQr => d.push_str(&format!(
                    " ! qroverlay name={TIMESTAMP_QR} x=5 y=5 pixel-size={} qrcode-error-correction=0",
                    (h / 60).clamp(2, 16)
                )),
                TestOverlay::None => {}
            }
            d.push_str(&format!(" ! videoconvert ! {}", capsfilter(&raw_caps)));
            Ok(SourcePlan {
                description: d,
                output: SourceOutput::Raw,
                note: format!("test pattern {w}x{h}@{fps}"),
            })
        }
        SourceKind::V4l2 => {
            let device_caps = camera_caps(&c.device)?;
            let mut formats = c.formats.clone();
            if c.h264_passthrough {
                formats.retain(|f| *f != CameraFormat::H264);
                formats.insert(0, CameraFormat::H264);
            } else {
                formats.retain(|f| *f != CameraFormat::H264);
            }
            let (format, filter) = choose_camera_caps(&device_caps, &formats, w, h, fps)
                .ok_or_else(|| {
                    anyhow!(
                        "camera {} offers none of the formats {:?}; it offers: {}",
                        c.device,
                        formats,
                        device_caps
                    )
                })?;
            let src = format!("v4l2src device={} ! {filter}", launch_value(&c.device));
            let (description, output) = match format {
                CameraFormat::H264 => (
                    format!(
                        "{src} ! h264parse config-interval=-1 ! {}",
                        capsfilter(ENCODED_CAPS)
                    ),
                    SourceOutput::H264,
                ),
                CameraFormat::Mjpeg => {
                    let dec = first_usable(&profiles.board.jpeg_decoders)
                        .ok_or_else(|| anyhow!("no usable JPEG decoder"))?;
                    (
                        format!(
                            "{src} ! jpegparse ! {dec} ! videoconvert ! videoscale ! {}",
                            capsfilter(&raw_caps)
                        ),
                        SourceOutput::Raw,
                    )
                }
                CameraFormat::Yuyv | CameraFormat::Nv12 => (
                    format!(
                        "{src} ! videoconvert ! videoscale ! {}",
                        capsfilter(&raw_caps)
                    ),
                    SourceOutput::Raw,
                ),
            };
            Ok(SourcePlan {
                description,
                output,
                note: format!("camera {} as {filter}", c.device),
            })
        }
    }
}

/// The display branch (from the raw tee), or None when there is to be no display.
pub fn plan_display(cfg: &Config, profiles: &Profiles) -> Option<String> {
    let screen = crate::drm::connected_screen();
    let sink = match cfg.display.sink {
        DisplaySink::None => return None,
        DisplaySink::Auto if screen.is_none() => return None,
        DisplaySink::Auto | DisplaySink::Kms => "kmssink",
        DisplaySink::Window => "autovideosink",
    };
    let mut props: Vec<(String, String)> = profiles
        .board
        .display_properties
        .get(sink)
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut fit = String::new();
    if sink == "kmssink" {
        if cfg.display.connector.get() >= 0 {
            props.push(("connector-id".into(), cfg.display.connector.to_string()));
        }
        // The card that has the screen, by its driver's name: kmssink otherwise tries only
        // the drivers it knows of.
        if let Some(driver) = screen.as_ref().and_then(|s| s.driver.clone()) {
            if !props.iter().any(|(k, _)| k == "driver-name") {
                props.push(("driver-name".into(), driver));
            }
        }
        if profiles.board.display_fit == DisplayFit::Mode {
            if let Some((w, h)) = screen.as_ref().and_then(|s| s.mode) {
                // Aspect kept: videoscale adds black borders to fill the mode.
                fit = format!(
                    " ! videoscale add-borders=true ! video/x-raw,width={w},height={h},pixel-aspect-ratio=1/1"
                );
            }
        }
    }
    // Frames are shown as they come (lowest latency), and adding the sink to the running
    // pipeline must not make it preroll again.
    props.push(("sync".into(), "false".into()));
    props.push(("async".into(), "false".into()));
    // A display that cannot keep up drops frames instead of holding up the raw tee.
    Some(format!(
        "queue max-size-buffers=2 max-size-bytes=0 max-size-time=0 leaky=downstream{fit} ! videoconvert ! {}",
        element_with(sink, &props)
    ))
}

/// The branch feeding one RTSP media from the encoded tee.
pub fn rtsp_branch_description(queue_buffers: u32) -> String {
    format!(
        "queue max-size-buffers={queue_buffers} max-size-bytes=0 max-size-time=0 leaky=downstream \
         ! appsink name=sink sync=false async=false max-buffers={queue_buffers} drop=true"
    )
}

/// The whole graph in gst-launch syntax, for `camstream graph`.
pub fn describe_graph(cfg: &Config, profiles: &Profiles) -> Result<String> {
    let enc = plan_encoder(cfg, profiles);
    let raw_format = enc
        .as_ref()
        .map(|e| profiles.encoder_input_format(&e.element).to_string())
        .unwrap_or_else(|_| "I420".into());
    let mut out = format!(
        "# board profile: {} ({})\n",
        profiles.board.name, profiles.board.description
    );
    let src = plan_source(cfg, profiles, &raw_format);
    let display = plan_display(cfg, profiles);
    match (&src, &enc) {
        (Ok(s), Ok(e)) => {
            out.push_str(&format!(
                "# source: {}\n# encoder: {}\n",
                s.note,
                e.summary()
            ));
            for k in &e.skipped {
                out.push_str(&format!("# encoder property skipped: {k}\n"));
            }
            match s.output {
                SourceOutput::Raw => {
                    out.push_str(&format!(
                        "{} ! tee name=raw allow-not-linked=true\n",
                        s.description
                    ));
                    out.push_str(&format!(
                        "raw. ! {} ! tee name=enc allow-not-linked=true\n",
                        e.description
                    ));
                }
                SourceOutput::H264 => {
                    out.push_str(&format!(
                        "{} ! tee name=enc allow-not-linked=true\n",
                        s.description
                    ));
                    if display.is_some() {
                        let dec = first_usable(&profiles.board.h264_decoders)
                            .unwrap_or_else(|| "avdec_h264".into());
                        out.push_str(&format!("enc. ! queue max-size-buffers=5 leaky=downstream ! {dec} ! tee name=raw allow-not-linked=true\n"));
                    }
                }
            }
        }
        (Err(e), _) => bail!("source: {e:#}"),
        (_, Err(e)) => bail!("encoder: {e:#}"),
    }
    match &display {
        Some(d) => out.push_str(&format!("raw. ! {d}\n")),
        None => out.push_str("# display: none\n"),
    }
    if cfg.recording.enabled {
        out.push_str(&format!(
            "# recording to {}, {} s files\nenc. ! {}\n",
            cfg.recording.dir,
            cfg.recording.segment_seconds,
            crate::recording::description(&cfg.recording)
        ));
    }
    if cfg.rtsp.enabled {
        out.push_str(&format!(
            "# RTSP rtsp://{}:{}{} : one branch per shared media, attached while clients watch\nenc. ! {}\n",
            cfg.rtsp.bind,
            cfg.rtsp.port,
            cfg.rtsp.mount.as_str(),
            rtsp_branch_description(cfg.rtsp.queue_buffers.u32())
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_camera_mode_nearest_to_the_request_is_chosen() {
        gst::init().unwrap();
        // vivid's webcam: rates fall as sizes grow.
        let caps: gst::Caps = "video/x-raw,format=YUY2,width=320,height=180,framerate={ (fraction)60/1, (fraction)30/1 }; \
             video/x-raw,format=YUY2,width=640,height=360,framerate={ (fraction)40/1, (fraction)30/1 }; \
             video/x-raw,format=YUY2,width=640,height=480,framerate={ (fraction)25/1, (fraction)15/1 }; \
             video/x-raw,format=YUY2,width=1280,height=720,framerate={ (fraction)25/2, (fraction)5/1 }; \
             video/x-raw,format=YUY2,width=1920,height=1080,framerate=5/1; \
             image/jpeg,width=1280,height=720,framerate=30/1"
            .parse()
            .unwrap();
        let yuyv = [CameraFormat::Yuyv];
        let pick = |w, h, fps| choose_camera_caps(&caps, &yuyv, w, h, fps).unwrap().1;
        assert_eq!(
            pick(640, 360, 30),
            "video/x-raw,format=YUY2,width=640,height=360,framerate=30/1"
        );
        // Not offered at 30: the same size at the nearest rate above, else below.
        assert_eq!(
            pick(640, 360, 35),
            "video/x-raw,format=YUY2,width=640,height=360,framerate=40/1"
        );
        assert_eq!(
            pick(1280, 720, 30),
            "video/x-raw,format=YUY2,width=1280,height=720,framerate=25/2"
        );
        // A size it lacks: the smallest that covers it, not the largest.
        assert_eq!(
            pick(800, 450, 25),
            "video/x-raw,format=YUY2,width=1280,height=720,framerate=25/2"
        );
        assert_eq!(
            pick(600, 400, 25),
            "video/x-raw,format=YUY2,width=640,height=480,framerate=25/1"
        );
        // An MJPEG camera that offers only 30/1, asked for 25: taken at 30/1 (what it offers).
        let mjpeg = [CameraFormat::Mjpeg];
        assert_eq!(
            choose_camera_caps(&caps, &mjpeg, 1280, 720, 25).unwrap().1,
            "image/jpeg,width=1280,height=720,framerate=30/1"
        );
    }

    #[test]
    fn launch_values_are_quoted_when_needed() {
        assert_eq!(launch_value("ultrafast"), "ultrafast");
        assert_eq!(launch_value("controls,a=1"), "\"controls,a=1\"");
        assert_eq!(launch_value("%H %M"), "\"%H %M\"");
    }
}
