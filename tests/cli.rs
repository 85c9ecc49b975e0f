//! The command line: config checking, probe, graph, lifecycle and recovery of the device.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

fn check_config(text: &str, args: &[&str]) -> (bool, String) {
    let dir = temp_dir("check");
    let f = dir.join("c.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&f)
        .args(args)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let text = String::from_utf8_lossy(&out.stderr).replace(f.to_str().unwrap(), "FILE");
    (out.status.success(), text)
}

#[test]
fn shipped_configs_are_valid() {
    for f in ["config/camstream.toml", "config/dev.toml"] {
        let out = Command::new(BIN)
            .args(["check-config", "--config", f])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bad_configs_name_the_key_and_the_line() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "[camera]\nsourc = \"test\"\n",
            &[],
            "FILE:2: key `camera.sourc`: unknown field `sourc`",
        ),
        (
            "[rtsp]\n\nport = 0\n",
            &[],
            "FILE:3: key `rtsp.port`: must be between 1 and 65535, got 0",
        ),
        (
            "[camera]\nsource = \"usb\"\n",
            &[],
            "FILE:2: key `camera.source`: unknown variant `usb`",
        ),
        (
            "[rtsp]\nmount = \"live\"\n",
            &[],
            "FILE:2: key `rtsp.mount`: must look like \"/live\"",
        ),
        (
            "[device]\nid = \"a b\"\n",
            &[],
            "FILE:2: key `device.id`: may only hold",
        ),
        (
            "[encoder]\nbitrate_kbps = \"fast\"\n",
            &[],
            "FILE:2: key `encoder.bitrate_kbps`: invalid type",
        ),
        ("[rtsp\n", &[], "FILE:1"),
        (
            "[rtsp]\nuser = \"a\"\n",
            &[],
            "keys `rtsp.user` and `rtsp.password`: set both or neither",
        ),
        (
            "",
            &["--set", "rtsp.port=70000"],
            "--set \"rtsp.port=70000\": key `rtsp.port`: must be between 1 and 65535",
        ),
        (
            "",
            &["--set", "rtsp.nope=1"],
            "key `rtsp.nope`: unknown field",
        ),
        ("", &["--set", "novalue"], "expected KEY=VALUE"),
    ];
    for (text, args, want) in cases {
        let (ok, err) = check_config(text, args);
        assert!(!ok, "{text:?} {args:?} was accepted");
        assert!(
            err.contains(want),
            "{text:?} {args:?}:\n  got: {err}\n  want: {want}"
        );
    }
    let (ok, err) = check_config(
        "[camera]\nsource = \"test\"\n",
        &["--set", "rtsp.port=9554", "--set", "device.id=cam-2"],
    );
    assert!(ok, "{err}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/camstream.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config file /nonexistent/camstream.toml"));
}

#[test]
fn probe_lists_encoders_and_display() {
    let out = Command::new(BIN).arg("probe").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("x264enc: usable"), "{text}");
    assert!(
        text.contains("cameras:") && text.contains("display:"),
        "{text}"
    );
}

#[test]
fn graph_prints_a_launch_line_with_one_encoder() {
    let out = Command::new(BIN)
        .args(["graph", "--config", "config/dev.toml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("x264enc ").count(), 1, "{text}");
    assert!(
        text.contains("tee name=raw") && text.contains("tee name=enc"),
        "{text}"
    );
    assert!(text.contains("format=I420"), "{text}");
    // Every branch is shown, the recording one too.
    let out = Command::new(BIN)
        .args(["graph", "--config", "config/dev.toml"])
        .args(["--set", "recording.enabled=true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("enc. ! queue name=recqueue") && text.contains("splitmuxsink"),
        "{text}"
    );
}

#[test]
fn sigterm_and_sigint_exit_zero_promptly() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut dev = Device::start("signal", &dev_config(free_port(), ""), &[]);
        // With a client attached, so EOS has sinks to reach.
        let url = dev.url();
        let client = std::thread::spawn(move || {
            gst_client(
                &url,
                "tcp",
                Duration::from_secs(10),
                Duration::from_secs(10),
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        let (code, took) = dev.stop(sig, Duration::from_secs(15));
        eprintln!("{sig:?}: exit {code:?} after {} ms", took.as_millis());
        assert_eq!(code, Some(0), "{sig:?}\n{}", dev.log_text());
        client.join().unwrap();
    }
}

#[test]
fn port_in_use_fails_with_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = run_once("port", &dev_config(port, ""));
    let err = String::from_utf8_lossy(&out.stderr);
    // A busy port may free itself: exit 1, which the service manager restarts with back-off.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen for RTSP on 127.0.0.1:{port}")),
        "{err}"
    );
}

/// `camstream run` with `config` until it exits by itself.
fn run_once(tag: &str, config: &str) -> std::process::Output {
    let dir = temp_dir(tag);
    let f = dir.join("c.toml");
    std::fs::write(&f, config).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    std::fs::remove_dir_all(dir).ok();
    out
}

/// A board profile directory holding one profile, `bench`, with these encoders.
fn profile_dir(tag: &str, encoders: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    std::fs::write(
        dir.join("bench.toml"),
        format!(
            "description = \"test bench\"\nmatch = []\nencoders = [{encoders}]\n\
             jpeg_decoders = [\"jpegdec\"]\nh264_decoders = [\"avdec_h264\"]\n"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn a_missing_hardware_encoder_falls_back_and_says_why() {
    // The first choice does not exist (an image without its plugin); the second one runs.
    let profiles = profile_dir("fallback", "\"v4l2nosuchh264enc\", \"x264enc\"");
    let extra = format!(
        "[pipeline]\nprofile = \"bench\"\nprofiles_dir = \"{}\"\n",
        profiles.display()
    );
    let cfg = dev_config(free_port(), "").replace("name = \"x264enc\"", "name = \"auto\"") + &extra;
    let mut dev = Device::start("fallback", &cfg, &[]);
    let (codec, _, _, frames) = ffprobe(&dev.url(), "tcp", 1).expect("stream through the fallback");
    assert!(codec == "h264" && frames > 0, "{codec} {frames}");
    let want =
        "encoder: x264enc (fallback: v4l2nosuchh264enc not installed (no plugin provides it))";
    let log = dev.log_text();
    assert_eq!(log.matches(want).count(), 1, "said once: {log}");
    dev.stop(Signal::SIGTERM, Duration::from_secs(10));

    let out = Command::new(BIN)
        .args(["probe", "--config"])
        .arg(dev.dir.join("camstream.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("v4l2nosuchh264enc: not installed (no plugin provides it)"),
        "{text}"
    );
    assert!(
        text.contains("encoder used: x264enc (fallback: v4l2nosuchh264enc not installed"),
        "{text}"
    );
    std::fs::remove_dir_all(profiles).ok();
}

#[test]
fn a_graph_the_image_cannot_run_exits_2_with_the_reason() {
    let profiles = profile_dir("noenc", "\"v4l2nosuchh264enc\"");
    let cfg = dev_config(free_port(), "").replace("name = \"x264enc\"", "name = \"auto\"")
        + &format!(
            "[pipeline]\nprofile = \"bench\"\nprofiles_dir = \"{}\"\n",
            profiles.display()
        );
    let out = run_once("noenc-cfg", &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    // 2 is what the unit's RestartPreventExitStatus names: no restart loop.
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no usable H.264 encoder for board profile bench")
            && err.contains("v4l2nosuchh264enc: not installed"),
        "{err}"
    );
    let unit = std::fs::read_to_string("overlay/etc/systemd/system/camstream.service").unwrap();
    assert!(unit.contains("RestartPreventExitStatus=2"), "{unit}");
    std::fs::remove_dir_all(profiles).ok();
}

#[test]
fn missing_camera_is_retried_while_the_rtsp_server_stays_up() {
    let cfg = dev_config(free_port(), "").replace(
        "source = \"test\"",
        "source = \"v4l2\"\ndevice = \"/dev/video-absent\"\nrestart_max_seconds = 1",
    );
    let mut dev = Device::start("nocam", &cfg, &[]);
    dev.wait_log(
        "camera /dev/video-absent cannot be opened; retrying in 1 s",
        Duration::from_secs(10),
    );
    // Still retrying a while later, and still answering RTSP (OPTIONS over a raw socket).
    std::thread::sleep(Duration::from_secs(2));
    let retries = dev.log_text().matches("cannot be opened").count();
    assert!(retries >= 2, "{}", dev.log_text());
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", dev.port)).unwrap();
    s.write_all(format!("OPTIONS {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", dev.url()).as_bytes())
        .unwrap();
    let mut buf = [0u8; 256];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("RTSP/1.0 200 OK"));
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn failing_display_is_retried_and_never_stops_the_stream() {
    // No DRM device here: kmssink fails; RTSP must not notice.
    if std::path::Path::new("/dev/dri/card0").exists() {
        eprintln!("SKIPPED: this machine has a DRM device, kmssink would not fail");
        return;
    }
    let cfg = dev_config(free_port(), "")
        .replace("sink = \"none\"", "sink = \"kms\"\nretry_max_seconds = 2");
    let dev = Device::start("display", &cfg, &[]);
    dev.wait_log("display:", Duration::from_secs(10));
    let s = gst_client(
        &dev.url(),
        "tcp",
        Duration::from_secs(3),
        Duration::from_secs(15),
    );
    assert!(s.frames >= 60, "{s:?}");
    let text = dev.log_text();
    assert!(text.contains("other branches go on, retrying"), "{text}");
    // The sink's own reason, not just that it failed.
    assert!(
        text.contains("display sink does not open: kmssink") && text.contains("DRM"),
        "{text}"
    );
}

#[test]
fn malformed_rtsp_requests_are_answered_and_the_stream_goes_on() {
    let dev = Device::start("badreq", &dev_config(free_port(), ""), &[]);
    use std::io::{Read, Write};
    for junk in [
        &b"GARBAGE\r\n\r\n"[..],
        b"DESCRIBE rtsp://127.0.0.1/other RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        b"SETUP rtsp://127.0.0.1/live/stream=9 RTSP/1.0\r\nCSeq: x\r\nTransport: nonsense\r\n\r\n",
        &[0xffu8; 4096][..],
    ] {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", dev.port)) {
            let _ = s.write_all(junk);
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
        }
    }
    let (codec, _, _, frames) = ffprobe(&dev.url(), "tcp", 1).expect("still serving");
    assert_eq!(codec, "h264");
    assert!(frames > 0);
}

#[test]
fn tells_systemd_when_ready_and_keeps_its_watchdog_fed() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let p = path.to_str().unwrap();
    let mut dev = Device::start_env(
        "notify",
        &dev_config(free_port(), ""),
        &[],
        &[("NOTIFY_SOCKET", p), ("WATCHDOG_USEC", "400000")],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !(got.iter().any(|m: &String| m == "READY=1")
        && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = sock.recv(&mut buf).expect("notification from the daemon");
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let n = sock.recv(&mut buf).unwrap();
    let mut rest = vec![String::from_utf8_lossy(&buf[..n]).to_string()];
    while let Ok(n) = {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        sock.recv(&mut buf)
    } {
        rest.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn config_files_layer_and_errors_name_the_file() {
    let dir = temp_dir("layers");
    let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
    std::fs::write(&a, "[rtsp]\nport = 8554\nuser = \"v\"\n").unwrap();
    std::fs::write(&b, "[rtsp]\npassword = \"p\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&a)
        .arg("--config")
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&b, "[rtsp]\n\nprot = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&a)
        .arg("--config")
        .arg(&b)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}:3: key `rtsp.prot`", b.display())),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_optional_config_layer_may_be_missing_but_not_broken() {
    let dir = temp_dir("optional");
    let (a, b) = (dir.join("a.toml"), dir.join("site.toml"));
    std::fs::write(&a, "[rtsp]\nport = 8554\n").unwrap();
    let run = |b: &std::path::Path| {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&a)
            .arg("--optional-config")
            .arg(b)
            .output()
            .unwrap()
    };
    // The data partition did not mount: its settings are skipped, the device still runs.
    let out = run(&b);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found: skipped"));
    std::fs::write(&b, "[rtsp]\nport = \"x\"\n").unwrap();
    let out = run(&b);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("{}:2: key `rtsp.port`", b.display())),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bound_to_every_address_the_log_names_addresses_clients_can_use() {
    let cfg = dev_config(free_port(), "").replace("bind = \"127.0.0.1\"", "bind = \"0.0.0.0\"");
    let mut dev = Device::start("bind-any", &cfg, &[]);
    let log = dev.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("RTSP server ready at"))
        .unwrap()
        .to_string();
    assert!(!line.contains("0.0.0.0"), "{line}");
    assert!(
        line.contains(&format!("rtsp://127.0.0.1:{}/live", dev.port)),
        "{line}"
    );
    // The loopback one really serves (the others are this machine's own interfaces: not used).
    let (codec, _, _, _) = ffprobe(&dev.url(), "tcp", 1).expect("stream on loopback");
    assert_eq!(codec, "h264");
    dev.stop(Signal::SIGTERM, Duration::from_secs(10));
}
