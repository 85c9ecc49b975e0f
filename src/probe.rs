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

/// One line per format: "image/jpeg 1280x720 @ 30/1, 15/1".
fn summarise(caps: &gst::Caps) -> Vec<String> {
    caps.iter()
        .map(|s| {
            let mut line = s.name().to_string();
            if let Ok(f) = s.get::<String>("format") {
                line.push_str(&format!(" {f}"));
            }
            if let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) {
                line.push_str(&format!(" {w}x{h}"));
            }
            if let Ok(v) = s.value("framerate").map(|v| v.to_value()) {
                if let Ok(serialised) = v.serialize() {
                    line.push_str(&format!(" @ {serialised}"));
                }
            }
            line
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
    Ok(())
}
