//! The in-process RTSP server, read by real clients: ffprobe and GStreamer's rtspsrc.

mod common;

use std::time::Duration;

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
    // A 10 s GOP: without a forced keyframe the late joiner would wait seconds.
    let cfg = dev_config(free_port(), "").replace(
        "bitrate_kbps = 500",
        "bitrate_kbps = 500\nkeyframe_interval_ms = 10000",
    );
    let dev = Device::start("late-joiner", &cfg, &[]);
    let url = dev.url();
    let u1 = url.clone();
    let first = std::thread::spawn(move || {
        gst_client(&u1, "tcp", Duration::from_secs(6), Duration::from_secs(15))
    });
    std::thread::sleep(Duration::from_millis(2500));
    let late = gst_client(
        &url,
        "tcp",
        Duration::from_millis(500),
        Duration::from_secs(15),
    );
    let first = first.join().unwrap();
    eprintln!("first client: {first:?}\nlate joiner: {late:?}");
    assert!(first.frames > 0);
    let t = late.first_frame.expect("late joiner got a picture");
    eprintln!(
        "late joiner: first decoded frame after {} ms (connect + describe + setup + play)",
        t.as_millis()
    );
    // The GOP is 10 s; anything well under it proves the forced keyframe.
    assert!(t < Duration::from_secs(5), "late joiner waited {t:?}");
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
