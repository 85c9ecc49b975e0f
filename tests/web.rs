//! The web viewer in headless Chromium against the whole system on 127.0.0.1: camstream-signal
//! serving the page, the device, the media stand-in serving HLS.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::peers::*;
use common::*;
use nix::sys::signal::Signal;

#[test]
fn viewer_plays_goes_offline_and_resumes_without_reload() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("web/dist");
    assert!(
        web.join("index.html").exists(),
        "build the viewer first: npm --prefix web run build"
    );
    let relay_port = free_port();
    let _relay = camstream_signal_with(relay_port, &["--static-dir", web.to_str().unwrap()]);
    let media = media_standin(free_port());
    let rtsp_port = free_port();
    let cfg = device_config(rtsp_port, relay_port, media.push, "")
        .replace("lease_seconds = 3", "lease_seconds = 10");
    let mut dev = Device::start("web", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));

    let shot = root.join("target/viewer.png");
    let url = format!(
        "http://127.0.0.1:{relay_port}/index.html?device=test01&media=http://127.0.0.1:{}&heartbeat=2000",
        media.http
    );
    let mut c = Command::new("node");
    c.arg(node_dir().join("web_viewer.js")).arg(&url).arg(&shot);
    let browser = Peer::spawn(c);

    let (_, live) = browser
        .wait_for("STEP live", Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "viewer never live: {:?}\n{}",
                browser.lines.lock().unwrap(),
                dev.log_text()
            )
        });
    let parts: Vec<&str> = live.split_whitespace().collect();
    let first_ms: f64 = parts[2].parse().unwrap_or(f64::NAN);
    let variance: f64 = parts[3].parse().unwrap();
    eprintln!("request -> first picture in the browser: {first_ms} ms; pixel variance {variance}");
    assert!(variance > 50.0, "blank picture (variance {variance})");
    let (_, page) = browser
        .wait_for("STEP page", Duration::from_secs(10))
        .expect("page size");
    let parts: Vec<&str> = page.split_whitespace().collect();
    let (files, bytes): (usize, usize) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
    eprintln!("page load: {files} files, {bytes} bytes transferred");
    assert!(
        files <= 3 && bytes < 200_000,
        "page too heavy: {files} files, {bytes} bytes"
    );
    // The second viewer picked WebRTC; the stand-in offers only HLS, and the page still plays.
    let (_, line) = browser
        .wait_for("STEP second-live", Duration::from_secs(60))
        .expect("second context live");
    assert!(
        line.contains("WebRTC unavailable, playing HLS"),
        "webrtc mode without WHEP: {line}"
    );
    assert_eq!(
        dev.log_text().matches("uplink: pushing to").count(),
        1,
        "two viewers, one uplink"
    );

    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let (_, off) = browser
        .wait_for("STEP offline", Duration::from_secs(30))
        .expect("page says offline");
    eprintln!("{off} (lease 10 s)");
    let dev2 = Device::start("web2", &cfg, &[]);
    browser
        .wait_for("STEP resumed", Duration::from_secs(90))
        .unwrap_or_else(|| {
            panic!(
                "not resumed: {:?}\n{}",
                browser.lines.lock().unwrap(),
                dev2.log_text()
            )
        });
    assert!(browser
        .wait_for("FAILED", Duration::from_millis(10))
        .is_none());
}
