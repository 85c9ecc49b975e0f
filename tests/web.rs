//! The web viewer in headless Chromium against the whole system on 127.0.0.1: camstream-signal
//! serving the page, the device, the media stand-in serving HLS; and WebRTC (WHEP) in a network
//! namespace of its own.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::netns;
use common::peers::*;
use common::*;
use nix::sys::signal::Signal;

/// camstream-signal serving the built page, and the media stand-in: (repository root, relay
/// port, relay, media server).
fn serving_the_page() -> (PathBuf, u16, Peer, Media) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("web/dist");
    assert!(
        web.join("index.html").exists(),
        "build the viewer first: npm --prefix web run build"
    );
    let relay_port = free_port();
    let relay = camstream_signal_with(relay_port, &["--static-dir", web.to_str().unwrap()]);
    (root, relay_port, relay, media_standin(free_port()))
}

#[test]
fn viewer_plays_goes_offline_and_resumes_without_reload() {
    let (root, relay_port, _relay, media) = serving_the_page();
    let cfg = device_config(free_port(), relay_port, media.push, "")
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

/// A request to the media stand-in's HTTP port from inside the namespace: the status code.
fn http_status(port: u16, method: &str, path: &str, ctype: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((netns::ADDR, port)).expect("media stand-in");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        netns::ADDR,
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The page's WebRTC mode for real: the media stand-in answers WHEP (webrtcbin) and the page
/// plays through a connected peer connection, not through the HLS fallback. Everything, the
/// relay, the stand-in, the device and Chromium, runs in a network namespace the test makes:
/// Chromium gathers no ICE candidate on loopback alone.
#[test]
fn viewer_plays_webrtc_through_whep_in_a_network_namespace() {
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        eprintln!("SKIPPED: no /usr/bin/chromium");
        return;
    }
    if let Some(why) = netns::Netns::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    gst::init().unwrap();
    let nice = gst::ElementFactory::find("nicesrc").is_some();
    if !nice {
        eprintln!("SKIPPED: GStreamer's libnice elements are not installed (gstreamer1.0-nice), webrtcbin needs them");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("web/dist");
    assert!(
        web.join("index.html").exists(),
        "build the viewer first: npm --prefix web run build"
    );
    let ns = netns::Netns::new("webrtc").expect("network namespace");
    let relay_port = free_port();
    let (_relay, media, dev) = ns.run(move || {
        let relay = camstream_signal_with(relay_port, &["--static-dir", web.to_str().unwrap()]);
        let media = media_standin_with(free_port(), &["--bind", netns::ADDR, "--whep"]);
        let cfg = device_config(free_port(), relay_port, media.push, "")
            .replace("lease_seconds = 3", "lease_seconds = 10")
            .replace(
                &format!("rtsp://127.0.0.1:{}/", media.push),
                &format!("rtsp://{}:{}/", netns::ADDR, media.push),
            );
        let dev = Device::start("web-webrtc", &cfg, &[]);
        (relay, media, dev)
    });
    dev.wait_log("signal: create room", Duration::from_secs(10));

    let http = media.http;
    // No push on that path: 404, as MediaMTX answers.
    let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\na=recvonly\r\n";
    let unknown = ns.run(move || {
        http_status(
            http,
            "POST",
            "/channel/nobody/whep",
            "application/sdp",
            offer,
        )
    });
    assert_eq!(unknown, 404, "WHEP on a path nobody pushes");

    let shot = root.join("target/viewer-webrtc.png");
    let url = format!(
        "http://127.0.0.1:{relay_port}/index.html?device=test01&media=http://{}:{http}&heartbeat=2000&mode=webrtc",
        netns::ADDR
    );
    let browser = ns.run(move || {
        let mut c = Command::new("node");
        c.arg(node_dir().join("web_webrtc.js")).arg(&url).arg(&shot);
        Peer::spawn(c)
    });
    let step = |name: &str, secs: u64| -> String {
        browser
            .wait_for(&format!("STEP {name} "), Duration::from_secs(secs))
            .or_else(|| browser.wait_for("FAILED", Duration::from_millis(10)))
            .unwrap_or_else(|| {
                panic!(
                    "no step {name}: {:?}\n{:?}\n{}",
                    browser.lines.lock().unwrap(),
                    media.peer.lines.lock().unwrap(),
                    dev.log_text()
                )
            })
            .1
    };
    let codecs = step("codecs", 30);
    eprintln!("Chromium's H.264 receive codecs: {codecs}");
    let line = step("webrtc", 60);
    assert!(
        line.starts_with("STEP webrtc "),
        "{line}\n{:?}\n{}",
        media.peer.lines.lock().unwrap(),
        dev.log_text()
    );
    eprintln!("{line}");
    let v: serde_json::Value = serde_json::from_str(&line["STEP webrtc ".len()..]).unwrap();
    assert_eq!(v["whep"]["status"], 201, "{line}");
    let location = v["whep"]["location"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        location.starts_with("/channel/") && location.contains("/whep/"),
        "{line}"
    );
    assert_eq!(v["rtp"]["state"], "connected", "{line}");
    assert_eq!(v["rtp"]["codec"], "video/H264", "{line}");
    assert!(
        v["rtp"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(netns::ADDR)),
        "the media came from elsewhere: {line}"
    );
    assert!(
        v["rtp"]["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "{line}"
    );
    // 30 frames a second from the device: at least half of them shown over 2 s.
    assert!(v["shown"]["quality"].as_u64().unwrap_or(0) >= 30, "{line}");
    assert!(
        v["shown"]["callbacks"].as_u64().unwrap_or(0) >= 30,
        "{line}"
    );
    assert!(
        v["variance"].as_f64().unwrap_or(0.0) > 50.0,
        "blank picture: {line}"
    );
    assert!(
        !v["details"].as_str().unwrap_or("").contains("HLS"),
        "{line}"
    );

    // The page switched to HLS and deleted its session: the stand-in forgot it and gave its
    // port back.
    let deleted = step("deleted", 30);
    eprintln!("{deleted}");
    let d: serde_json::Value = serde_json::from_str(&deleted["STEP deleted ".len()..]).unwrap();
    assert_eq!(d["patch"], 404, "{deleted}");
    assert_eq!(d["portBusyBefore"], true, "{deleted}");
    assert_eq!(d["portFree"], true, "{deleted}");

    // Bad requests on the live path: an offer that is no SDP, one without H.264; a session
    // that does not exist.
    let live = location.split('/').nth(2).unwrap().to_string();
    let statuses = ns.run(move || {
        let post = |body: &str| {
            http_status(
                http,
                "POST",
                &format!("/channel/{live}/whep"),
                "application/sdp",
                body,
            )
        };
        let vp8 = offer.replace("H264/90000", "VP8/90000");
        [
            post("hello"),
            post(&vp8),
            http_status(
                http,
                "PATCH",
                &format!("/channel/{live}/whep/none"),
                "application/trickle-ice-sdpfrag",
                "a=candidate:1 1 UDP 1 198.18.0.9 9 typ host\r\n",
            ),
            http_status(
                http,
                "DELETE",
                &format!("/channel/{live}/whep/none"),
                "",
                "",
            ),
        ]
    });
    assert_eq!(statuses, [400, 400, 404, 404]);
    assert!(browser
        .wait_for("FAILED", Duration::from_millis(10))
        .is_none());
}

#[test]
fn timeline_shows_recordings_plays_one_and_goes_back_to_live() {
    // camstream-signal with device keys: it tells viewers apart, so the device can end the
    // live lease of the one viewer that went to a recording (an open device: anyone may watch).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("web/dist");
    assert!(
        web.join("index.html").exists(),
        "build the viewer first: npm --prefix web run build"
    );
    let rec = temp_dir("web-rec");
    let relay_port = free_port();
    let (secret, key) = device_secret(&rec, "test01");
    let _relay = camstream_signal_with(
        relay_port,
        &[
            "--device-secret-file",
            &secret,
            "--static-dir",
            web.to_str().unwrap(),
        ],
    );
    let media = media_standin(free_port());
    let rec = rec.join("card");
    let signal = format!("open = true\ndevice_key = \"{key}\"");
    let cfg = device_config_signal(free_port(), relay_port, media.push, &signal, "")
        .replace("lease_seconds = 3", "lease_seconds = 10")
        .replace(
            "[recording]\nenabled = false",
            &format!(
                "[recording]\ndir = \"{}\"\nsegment_seconds = 2",
                rec.display()
            ),
        );
    let dev = Device::start("web-rec", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    // A few segments on the card before the page opens.
    std::thread::sleep(Duration::from_secs(8));

    let shot = root.join("target/viewer-recording.png");
    let url = format!(
        "http://127.0.0.1:{relay_port}/index.html?device=test01&media=http://127.0.0.1:{}&heartbeat=2000",
        media.http
    );
    let mut c = Command::new("node");
    c.arg(node_dir().join("web_recordings.js"))
        .arg(&url)
        .arg(&shot);
    let browser = Peer::spawn(c);
    let step = |name: &str| {
        browser
            .wait_for(&format!("STEP {name}"), Duration::from_secs(90))
            .or_else(|| browser.wait_for("FAILED", Duration::from_millis(10)))
            .unwrap_or_else(|| {
                panic!(
                    "no step {name}: {:?}\n{}",
                    browser.lines.lock().unwrap(),
                    dev.log_text()
                )
            })
            .1
    };
    let live = step("live");
    assert!(live.starts_with("STEP live"), "{live}\n{}", dev.log_text());
    let spans = step("spans");
    eprintln!("{spans}");
    let n: usize = spans
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{spans}"));
    assert!(n >= 1, "{spans}");
    let status = step("status");
    eprintln!("{status}");
    assert!(
        status.contains("\"Recording\":\"on\"") && status.contains("\"Version\""),
        "status panel: {status}"
    );
    let playing = step("recording");
    eprintln!("{playing}");
    assert!(
        playing.contains("Recording from") && playing.contains("Picture from"),
        "{playing}\n{}",
        dev.log_text()
    );
    // The media server took a second push: the recording; and the live push ended, as the
    // page watches the recording only (a metered uplink does not run for nothing).
    assert!(
        media.peer.count("push started") >= 2,
        "no playback push: {}",
        dev.log_text()
    );
    let live_path = media
        .peer
        .wait_for("push started on /channel/", Duration::from_secs(1))
        .map(|(_, l)| l.rsplit('/').next().unwrap_or_default().to_string())
        .expect("live push");
    assert!(
        media
            .peer
            .wait_for(
                &format!("push ended on /channel/{live_path}"),
                Duration::from_secs(15)
            )
            .is_some(),
        "the live push kept running during playback: {:?}\n{}",
        media.peer.lines.lock().unwrap(),
        dev.log_text()
    );
    let back = step("back-live");
    assert!(back.starts_with("STEP back-live"), "{back}");
    assert!(
        media.peer.count("push started") >= 3,
        "back to live without a new live push: {:?}",
        media.peer.lines.lock().unwrap()
    );
    let pinch = step("pinch");
    eprintln!("{pinch}");
    assert!(
        pinch.contains("10 min -> 5 min"),
        "a pinch spreading the fingers from 20 % to 40 % of the track should halve the window: {pinch}"
    );
    std::fs::remove_dir_all(rec).ok();
}

/// Runs `f` in the namespace if there is one, else here.
fn maybe_in<T: Send + 'static>(
    ns: Option<&netns::Netns>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    match ns {
        Some(ns) => ns.run(f),
        None => f(),
    }
}

/// Glass-to-glass delay as the page itself measures it (&measure=1), for each playback mode the
/// page offers: the device draws each frame's capture time as a QR code, the page reads it on
/// every shown frame (at most 10 a second) and subtracts it from the frame's display time. Both
/// ends share this machine's clock. Everything (relay, media stand-in with WHEP, device,
/// Chromium) runs in a network namespace of the test's own, as WebRTC needs: the webrtc leg
/// plays through a connected peer connection, not the HLS fallback. Without a namespace or
/// libnice, hls and llhls are measured on 127.0.0.1 and the webrtc leg is skipped.
#[test]
fn glass_to_glass_delay_in_the_page_for_each_playback_mode() {
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        eprintln!("SKIPPED: no /usr/bin/chromium");
        return;
    }
    let qroverlay = Command::new("gst-inspect-1.0")
        .args(["--exists", "qroverlay"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !qroverlay {
        eprintln!("SKIPPED: GStreamer's qroverlay is not installed (gst-plugins-bad)");
        return;
    }
    gst::init().unwrap();
    let why_no_webrtc = netns::Netns::unavailable().or_else(|| {
        gst::ElementFactory::find("nicesrc").is_none().then(|| {
            "GStreamer's libnice elements are not installed (gstreamer1.0-nice), webrtcbin needs them"
                .to_string()
        })
    });
    let ns = match &why_no_webrtc {
        None => Some(netns::Netns::new("glass").expect("network namespace")),
        Some(why) => {
            eprintln!("SKIPPED (webrtc leg; hls and llhls on 127.0.0.1): {why}");
            None
        }
    };
    let host = if ns.is_some() {
        netns::ADDR
    } else {
        "127.0.0.1"
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("web/dist");
    assert!(
        web.join("glass.js").exists() && web.join("index.html").exists(),
        "build the viewer first: npm --prefix web run build"
    );
    let relay_port = free_port();
    let (_relay, media, dev) = maybe_in(ns.as_ref(), move || {
        let relay = camstream_signal_with(relay_port, &["--static-dir", web.to_str().unwrap()]);
        let media = if host == netns::ADDR {
            media_standin_with(free_port(), &["--bind", netns::ADDR, "--whep"])
        } else {
            media_standin(free_port())
        };
        let cfg = device_config(free_port(), relay_port, media.push, "")
            .replace("lease_seconds = 3", "lease_seconds = 10")
            .replace(
                "source = \"test\"",
                "source = \"test\"\ntest_overlay = \"timestamp-qr\"",
            )
            .replace("bitrate_kbps = 500", "bitrate_kbps = 1200")
            .replace(
                &format!("rtsp://127.0.0.1:{}/", media.push),
                &format!("rtsp://{host}:{}/", media.push),
            );
        let dev = Device::start("web-glass", &cfg, &[]);
        (relay, media, dev)
    });
    dev.wait_log("signal: create room", Duration::from_secs(10));

    let url = format!(
        "http://127.0.0.1:{relay_port}/index.html?device=test01&media=http://{host}:{}&heartbeat=2000",
        media.http
    );
    let modes: &[&str] = if ns.is_some() {
        &["hls", "llhls", "webrtc"]
    } else {
        &["hls", "llhls"]
    };
    let browser = maybe_in(ns.as_ref(), move || {
        let mut c = Command::new("node");
        c.arg(node_dir().join("web_glass.js"))
            .arg(&url)
            .arg("10")
            .args(modes);
        Peer::spawn(c)
    });
    let mut report = String::new();
    for &mode in modes {
        let (_, line) = browser
            .wait_for(&format!("STEP glass {mode} "), Duration::from_secs(120))
            .or_else(|| browser.wait_for("FAILED", Duration::from_millis(10)))
            .unwrap_or_else(|| {
                panic!(
                    "no figures for {mode}: {:?}\n{:?}\n{}",
                    browser.lines.lock().unwrap(),
                    media.peer.lines.lock().unwrap(),
                    dev.log_text()
                )
            });
        assert!(
            line.starts_with("STEP glass "),
            "{line}\n{:?}\n{}",
            media.peer.lines.lock().unwrap(),
            dev.log_text()
        );
        let f: Vec<&str> = line.split_whitespace().collect();
        let transport = f[3];
        let num = |i: usize| -> f64 { f[i].parse().unwrap_or(f64::NAN) };
        let (samples, median, p95, min, max) = (num(4), num(5), num(6), num(7), num(8));
        let rtc = f[11];
        report.push_str(&format!(
            "{mode:>6} (played {transport}): median {median} ms, p95 {p95} ms, min {min} ms, max {max} ms, {samples} frames read, {} ms per decode{}\n",
            f[9],
            if rtc == "-" { String::new() } else { format!(", peer connection {rtc}") }
        ));
        assert_eq!(transport, mode, "{mode} played {transport}: {line}");
        assert!(samples >= 20.0, "{mode}: too few frames read: {line}");
        assert!(
            min > 0.0,
            "{mode}: a frame shown before it was captured: {line}"
        );
        let bound = if mode == "webrtc" { 2_000.0 } else { 15_000.0 };
        assert!(max < bound, "{mode}: delay beyond {bound} ms: {line}");
        if mode == "webrtc" {
            // Played by the peer connection with the media stand-in, not by the fallback.
            assert!(
                rtc.starts_with(&format!("{}:", netns::ADDR)),
                "no connected peer connection with the media stand-in: {line}"
            );
            assert!(!line.contains("playing HLS"), "{line}");
        } else {
            assert_eq!(rtc, "-", "{line}");
        }
    }
    eprintln!(
        "glass-to-glass delay in Chromium, 320x240@30 test source, stand-in media server on {host}:\n{report}"
    );
    assert!(browser
        .wait_for("FAILED", Duration::from_millis(10))
        .is_none());
}
