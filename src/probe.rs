//! `camstream probe`: what this machine offers the graph: cameras and their formats, the H.264
//! encoders usable here in priority order, and whether a screen is connected.

use anyhow::Result;
use gst::prelude::*;

use crate::config::Config;
use crate::plan;
use crate::profile::Profiles;

fn camera_devices() -> Vec<String> {
    let mut devs: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .filter(|p| p.starts_with("/dev/video"))
                .collect()
        })
        .unwrap_or_default();
    devs.sort();
    devs
}

/// A size ("1280x720") and the rates offered at it, in the camera's order.
type SizeRates = (String, Vec<String>);

/// One line per format, its sizes in the order the camera lists them, each with its rates:
/// "image/jpeg: 1280x720 @ 30/1 15/1, 640x480 @ 30/1". Cameras repeat a size once per
/// colorimetry or interlace mode; those repeats are merged.
fn summarise(caps: &gst::Caps) -> Vec<String> {
    let mut formats: Vec<(String, Vec<SizeRates>)> = Vec::new();
    for s in caps.iter() {
        let mut name = s.name().to_string();
        if let Ok(f) = s.get::<String>("format") {
            name.push_str(&format!(" {f}"));
        }
        let size = match (s.value("width"), s.value("height")) {
            (Ok(w), Ok(h)) => format!(
                "{}x{}",
                w.serialize().map(|v| v.to_string()).unwrap_or_default(),
                h.serialize().map(|v| v.to_string()).unwrap_or_default()
            ),
            _ => "any size".into(),
        };
        let rates: Vec<String> = s
            .value("framerate")
            .ok()
            .and_then(|v| v.serialize().ok())
            .map(|v| {
                v.trim_matches(|c| c == '{' || c == '}' || c == ' ')
                    .split(',')
                    .map(|r| r.trim().trim_start_matches("(fraction)").to_string())
                    .filter(|r| !r.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let i = match formats.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                formats.push((name, Vec::new()));
                formats.len() - 1
            }
        };
        let sizes = &mut formats[i].1;
        let j = match sizes.iter().position(|(sz, _)| *sz == size) {
            Some(j) => j,
            None => {
                sizes.push((size, Vec::new()));
                sizes.len() - 1
            }
        };
        for r in rates {
            if !sizes[j].1.contains(&r) {
                sizes[j].1.push(r);
            }
        }
    }
    formats
        .into_iter()
        .map(|(name, sizes)| {
            let sizes: Vec<String> = sizes
                .into_iter()
                .map(|(size, rates)| {
                    if rates.is_empty() {
                        size
                    } else {
                        format!("{size} @ {}", rates.join(" "))
                    }
                })
                .collect();
            format!("{name}: {}", sizes.join(", "))
        })
        .collect()
}

pub fn run(cfg: &Config, profiles: &Profiles) -> Result<()> {
    println!(
        "board: {} ({})",
        profiles.board.name, profiles.board.description
    );
    if let Some(model) = crate::profile::board_model() {
        println!("  device-tree model: {model}");
    }
    println!("cameras:");
    let mut any = false;
    for dev in camera_devices() {
        match plan::camera_caps(&dev) {
            Ok(caps) => {
                any = true;
                println!("  {dev}");
                for l in summarise(&caps) {
                    println!("    {l}");
                }
            }
            // M2M codec nodes and metadata nodes are /dev/video* too; they are not cameras.
            Err(e) => log::debug!("{dev}: {e:#}"),
        }
    }
    if !any {
        println!("  none found");
    }
    println!("H.264 encoders (priority order of this board):");
    for name in &profiles.board.encoders {
        let state = plan::unusable_reason(name).unwrap_or_else(|| "usable".into());
        println!("  {name}: {state}");
    }
    match plan::plan_encoder(cfg, profiles) {
        Ok(enc) => println!("encoder used: {}", enc.summary()),
        Err(e) => println!("encoder used: none: {e:#}"),
    }
    match crate::drm::connected_screen() {
        Some(s) => println!(
            "display: {} connected (DRM driver {}, preferred mode {}): kmssink",
            s.connector,
            s.driver.as_deref().unwrap_or("unknown"),
            s.mode
                .map(|(w, h)| format!("{w}x{h}"))
                .unwrap_or_else(|| "unknown".into())
        ),
        None => println!("display: no connected DRM connector"),
    }
    let rtsp = &cfg.rtsp;
    if !rtsp.enabled {
        println!("RTSP: off");
    } else if let Some(w) = crate::rtsp::open_to_everyone(rtsp) {
        println!("WARNING: {w}");
    } else if rtsp.user.is_empty() {
        println!("RTSP: {}:{}, no credentials", rtsp.bind, rtsp.port);
    } else {
        println!(
            "RTSP: {}:{}, digest credentials required (user {:?})",
            rtsp.bind, rtsp.port, rtsp.user
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_grouped_and_repeats_merged() {
        gst::init().unwrap();
        let caps: gst::Caps = "video/x-raw,format=YUY2,width=640,height=480,framerate={ (fraction)25/1, (fraction)15/1 }; \
             video/x-raw,format=YUY2,width=640,height=480,framerate=25/1,colorimetry=bt601; \
             video/x-raw,format=YUY2,width=320,height=240,framerate=30/1; \
             image/jpeg,width=1280,height=720,framerate=30/1"
            .parse()
            .unwrap();
        assert_eq!(
            summarise(&caps),
            vec![
                "video/x-raw YUY2: 640x480 @ 25/1 15/1, 320x240 @ 30/1".to_string(),
                "image/jpeg: 1280x720 @ 30/1".to_string(),
            ]
        );
    }
}
