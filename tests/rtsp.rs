//! The in-process RTSP server, read by real clients: ffprobe and GStreamer's rtspsrc.

mod common;

use std::time::{Duration, Instant};

use gst::prelude::*;

use common::*;

#[test]
fn ffprobe_decodes_h264_over_tcp_and_udp() {
    let dev = Device::start("ffprobe", &dev_config(free_port(), ""), &[]);
    for transport in ["tcp", "udp"] {
        let (codec, w, h, frames) =
            ffprobe(&dev.url(), transport, 2).expect("ffprobe reads the stream");
        eprintln!("ffprobe {transport}: {codec} {w}x{h}, {frames} frames in 2 s");
        assert_eq!(codec, "h264");
        assert_eq!((w, h), (320, 240));
        assert!(
            frames >= 30,
            "only {frames} frames decoded over {transport}"
        );
    }
}

#[test]
fn two_gstreamer_clients_at_once_tcp_and_udp_get_the_source_rate() {
    let dev = Device::start("two-clients", &dev_config(free_port(), ""), &[]);
    let url = dev.url();
    let u2 = url.clone();
    let udp = std::thread::spawn(move || {
        gst_client(&u2, "udp", Duration::from_secs(3), Duration::from_secs(15))
    });
    let tcp = gst_client(&url, "tcp", Duration::from_secs(3), Duration::from_secs(15));
    let udp = udp.join().unwrap();
    for (name, s) in [("tcp", &tcp), ("udp", &udp)] {
        eprintln!("{name}: {s:?}");
        assert_eq!((s.width, s.height), (320, 240), "{name}");
        assert!(s.frames >= 60, "{name}: only {} frames in 3 s", s.frames);
        // Source is 30 fps; a broad band so a loaded CI machine does not fail it.
        assert!((20.0..=40.0).contains(&s.fps), "{name}: {:.1} fps", s.fps);
    }
}

#[test]
fn late_joiner_gets_a_keyframe_without_waiting_for_the_gop() {
    // A 4 s GOP: without a forced keyframe the late joiner would wait seconds. Clients get at
    // most one forced keyframe per interval between them, so the late joiner comes more than an
    // interval after the first client got its own.
    let cfg = dev_config(free_port(), "").replace(
        "bitrate_kbps = 500",
        "bitrate_kbps = 500\nkeyframe_interval_ms = 4000",
    );
    let dev = Device::start("late-joiner", &cfg, &[]);
    let url = dev.url();
    let (first, sink) = decoding_client(&url, "tcp");
    sink.set_property("drop", true);
    sink.set_property("max-buffers", 1u32);
    first.set_state(gst::State::Playing).unwrap();
    assert!(
        sink.try_pull_sample(gst::ClockTime::from_seconds(15))
            .is_some(),
        "the first client got no picture"
    );
    // The periodic keyframe comes 4 s after the first client's; the late joiner asks 0.8 s
    // after that, so without its own keyframe it would wait about 3 s.
    std::thread::sleep(Duration::from_millis(4800));
    let late = gst_client(
        &url,
        "tcp",
        Duration::from_millis(500),
        Duration::from_secs(15),
    );
    let _ = first.set_state(gst::State::Null);
    eprintln!("late joiner: {late:?}");
    let t = late.first_frame.expect("late joiner got a picture");
    eprintln!(
        "late joiner: first decoded frame after {} ms (connect + describe + setup + play)",
        t.as_millis()
    );
    // The next periodic keyframe is about 3 s away; well under it proves the forced keyframe.
    assert!(t < Duration::from_millis(1500), "late joiner waited {t:?}");
}

/// Clients that connect, play until their first packet and leave, `threads` at a time, until
/// `until`: returns how many got a packet.
fn play_flood(url: &str, threads: usize, until: Instant) -> usize {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let mut played = 0;
                while Instant::now() < until {
                    // No decoder: the flood is about PLAYs, not this machine's CPU.
                    let (p, sink) = rtsp_client(&url, "tcp", "");
                    p.set_state(gst::State::Playing).unwrap();
                    if sink
                        .try_pull_sample(gst::ClockTime::from_seconds(5))
                        .is_some()
                    {
                        played += 1;
                    }
                    let _ = p.set_state(gst::State::Null);
                }
                played
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

#[test]
fn a_keyframe_flood_from_rtsp_clients_does_not_raise_the_recordings_keyframe_rate() {
    gst::init().unwrap();
    let dir = temp_dir("kf-flood");
    let interval = 2.0;
    let cfg = dev_config(free_port(), "")
        .replace(
            "bitrate_kbps = 500",
            "bitrate_kbps = 500\nkeyframe_interval_ms = 2000",
        )
        .replace(
            "[recording]\nenabled = false",
            &format!(
                "[recording]\ndir = \"{}\"\nsegment_seconds = 60",
                dir.display()
            ),
        );
    let mut dev = Device::start("kf-flood", &cfg, &[]);
    dev.wait_log("recording: first frame at", Duration::from_secs(10));
    // Six clients at a time, each playing until its first packet and leaving, for 12 s: every
    // one of them asks for a keyframe (its PLAY, and a new media when the last one had left).
    let played = play_flood(&dev.url(), 6, Instant::now() + Duration::from_secs(12));
    std::thread::sleep(Duration::from_secs(1));
    let (code, _) = dev.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let files = recordings::mp4_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let frames = recordings::frame_times(&files[0]);
    let keys = recordings::keyframe_times(&files[0]);
    let span = frames[frames.len() - 1] - frames[0];
    let widest = keys.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let closest = keys
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::MAX, f64::min);
    eprintln!(
        "{played} client PLAYs in 12 s; recording {span:.1} s: {} keyframes (periodic alone: {:.1}), gaps {closest:.3} .. {widest:.3} s",
        keys.len(),
        span / interval + 1.0
    );
    assert!(played >= 30, "only {played} clients played: no flood");
    // The periodic keyframes (one per interval, plus the first), and at most two more for
    // clients over the whole recording.
    assert!(
        keys.len() as f64 <= span / interval + 1.0 + 2.0,
        "{} keyframes in {span:.1} s at a {interval} s interval, the first at {:?}",
        keys.len(),
        &keys[..keys.len().min(20)]
    );
    // The interval still holds: no gap wider than it (and a frame).
    assert!(
        widest <= interval + 0.05,
        "keyframes {widest:.3} s apart: {keys:?}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn digest_credentials_are_required_when_configured() {
    let port = free_port();
    let cfg = dev_config(port, "user = \"viewer\"\npassword = \"s3cret\"");
    let dev = Device::start("auth", &cfg, &[]);
    let denied = ffprobe(&dev.url(), "tcp", 1);
    assert!(
        denied.is_err(),
        "no credentials must be refused: {denied:?}"
    );
    let url = format!("rtsp://viewer:s3cret@127.0.0.1:{port}/live");
    let (codec, _, _, frames) = ffprobe(&url, "tcp", 1).expect("credentials accepted");
    assert_eq!(codec, "h264");
    assert!(frames > 0);
}

#[test]
fn every_address_without_credentials_is_a_loud_warning() {
    // Bound to every address with no credentials: warned at start and by `probe`.
    let port = free_port();
    let open = dev_config(port, "").replace("bind = \"127.0.0.1\"", "bind = \"0.0.0.0\"");
    let dev = Device::start("open-warning", &open, &[]);
    dev.wait_log("RTSP OPEN TO EVERYONE", Duration::from_secs(5));
    let line = dev
        .log_text()
        .lines()
        .find(|l| l.contains("RTSP OPEN TO EVERYONE"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("WARN") && line.contains(&format!("0.0.0.0:{port}")),
        "{line}"
    );
    drop(dev);
    let probe = |text: &str| {
        let dir = temp_dir("open-probe");
        let f = dir.join("c.toml");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["probe", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = probe(&open);
    assert!(p.contains("WARNING: RTSP OPEN TO EVERYONE"), "{p}");

    // With credentials, or on loopback only: no warning.
    let closed = open.replace(
        &format!("port = {port}"),
        &format!("port = {port}\nuser = \"viewer\"\npassword = \"s3cret\""),
    );
    let dev = Device::start("closed-no-warning", &closed, &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!dev.log_text().contains("OPEN TO EVERYONE"));
    drop(dev);
    let p = probe(&closed);
    assert!(
        p.contains("digest credentials required") && !p.contains("WARNING"),
        "{p}"
    );
    let p = probe(&dev_config(port, ""));
    assert!(
        p.contains("RTSP: 127.0.0.1") && !p.contains("WARNING"),
        "{p}"
    );
}
