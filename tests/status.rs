//! The device's status and metrics, and the relay's list of devices, against real peers: the
//! device, camstream-signal (closed) and the plain Node relay, Node socket.io-client viewers
//! asking `status`, the media stand-in, and plain TCP clients for the HTTP endpoints.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::peers::*;
use common::recordings::mp4_files;
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// `config` with recording on, into `dir`, in one-second segments.
fn recording_into(config: &str, dir: &Path) -> String {
    let out = config.replace(
        "[recording]\nenabled = false",
        &format!(
            "[recording]\ndir = \"{}\"\nsegment_seconds = 1",
            dir.display()
        ),
    );
    assert_ne!(out, config);
    out
}

/// The status answers a viewer printed (`{"status": {...}}` lines), in order.
fn statuses(p: &Peer) -> Vec<Value> {
    p.lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, l)| {
            serde_json::from_str::<Value>(l)
                .ok()?
                .get("status")
                .cloned()
        })
        .collect()
}

/// The first status answer after the `skip` first that satisfies `pred`.
fn wait_status(p: &Peer, skip: usize, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(s) = statuses(p).into_iter().skip(skip).find(|s| pred(s)) {
            return s;
        }
        assert!(
            t0.elapsed() < timeout,
            "no such status within {timeout:?}; got:\n{:#?}",
            statuses(p)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn frames(s: &Value, branch: &str) -> u64 {
    s["branches"][branch]["frames"]
        .as_u64()
        .unwrap_or_else(|| panic!("no frames for branch {branch}: {s:#}"))
}

/// The interface of this machine's default route with the lowest metric, read here.
fn default_route() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let up = u32::from_str_radix(f[3], 16).ok()? & 1 == 1;
            (up && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u64>().unwrap(), f[0].to_string()))
        })
        .min()
        .map(|(_, i)| i)
}

/// "2026-12-03T16:45:12Z" from a recording's name `<device>_20261203T164512Z_<boot>-<seg>.mp4`.
fn start_of(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let t = name.split('_').nth(1)?;
    if t.len() != 16 || !t.ends_with('Z') {
        return None;
    }
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13],
        &t[13..15]
    ))
}

/// What the rest of the status must say whatever the relay: the facts the device and this
/// machine show from the outside.
fn check_common(s: &Value, dev: &Device) {
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s:#}");
    assert_eq!(s["device"], "test01");
    let profile = s["profile"].as_str().unwrap();
    assert!(
        dev.log_text()
            .contains(&format!("board profile {profile} (")),
        "profile {profile:?} is not the one the device logged"
    );
    assert_eq!(s["encoder"], "x264enc");
    assert_eq!(s["bitrate_kbps"], 500);
    let cam = &s["camera"];
    assert_eq!(cam["source"], "test");
    assert_eq!(cam["running"], true);
    assert_eq!(cam["width"], 320);
    assert_eq!(cam["height"], 240);
    assert_eq!(cam["fps"], 30.0);
    assert!(cam["device"].is_null());
    assert_eq!(s["rtsp"]["enabled"], true);
    assert_eq!(s["rtsp"]["sessions"], 0);
    assert!(s["uptime_s"].as_u64().is_some());
    assert!(s["time"].as_str().unwrap().ends_with('Z'));
    // The machine's own facts, read here.
    let synced = s["clock_synced"].as_bool().expect("clock_synced");
    if Path::new("/run/systemd/timesync/synchronized").exists() {
        assert!(synced);
    }
    match default_route() {
        Some(iface) => assert_eq!(s["network"]["interface"], iface.as_str(), "{s:#}"),
        None => assert!(s["network"].is_null(), "{s:#}"),
    }
    let zones = std::fs::read_dir("/sys/class/thermal")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("temp").exists())
                .count()
        })
        .unwrap_or(0);
    if zones == 0 {
        assert!(s["temperature_c"].is_null());
    }
    for p in s["last_errors"].as_array().expect("last_errors") {
        assert!(p["time"].as_str().unwrap().ends_with('Z'), "{p}");
        assert!(p["level"] == "warning" || p["level"] == "error", "{p}");
    }
    assert!(s["last_errors"].as_array().unwrap().len() <= 10);
}

#[test]
fn status_through_camstream_signal_only_for_viewers_let_in() {
    let dir = temp_dir("status-closed");
    let rec = dir.join("rec");
    let relay_port = free_port();
    let (_relay, key) = closed_relay(relay_port, &dir, "test01");
    let media = media_standin(free_port());
    let signal = format!("token = \"s3cret\"\ndevice_key = \"{key}\"");
    let cfg = recording_into(
        &device_config_signal(free_port(), relay_port, media.push, &signal, ""),
        &rec,
    );
    let dev = Device::start("status-closed", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));

    // A viewer without the token asks too, twice a second, from before the owner is there.
    let stranger = viewer_with(relay_port, "test01", 300, &["--status", "500"]);
    stranger
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("the stranger joins");
    let owner = viewer_with(
        relay_port,
        "test01",
        500,
        &["--token", "s3cret", "--status", "1000"],
    );
    let (_, line) = owner
        .wait_for("\"bridge\"", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no bridge:\n{}", dev.log_text()));
    let path = bridge_path(&line);
    dev.wait_log("recording: segment", Duration::from_secs(10));

    // Live, and the card walked since the first file.
    let s1 = wait_status(&owner, 0, Duration::from_secs(15), |s| {
        s["uplink"]["live"] == true && !s["recording"]["oldest_start"].is_null()
    });
    let n1 = statuses(&owner).len();
    let s2 = wait_status(&owner, n1, Duration::from_secs(5), |_| true);
    eprintln!("{s2:#}");
    check_common(&s1, &dev);
    check_common(&s2, &dev);

    for branch in ["camera", "encode", "recording", "uplink"] {
        assert!(
            frames(&s2, branch) > frames(&s1, branch),
            "{branch}: frames did not grow between two requests a second apart"
        );
    }
    assert_eq!(s1["uplink"]["enabled"], true);
    assert_eq!(s1["uplink"]["attached"], true);
    assert_eq!(s1["uplink"]["viewers"], 1);

    let r = &s2["recording"];
    assert_eq!(r["enabled"], true);
    assert_eq!(r["attached"], true);
    assert_eq!(r["dir"], rec.to_str().unwrap());
    assert!(r["files"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
    // The oldest start is the earliest of the files on the card.
    let oldest = mp4_files(&rec)
        .iter()
        .filter_map(|f| start_of(f))
        .min()
        .expect("a recording with a start time");
    assert_eq!(r["oldest_start"], oldest.as_str(), "{r}");

    // The disk is the one holding the recordings.
    let disk = &s2["disk"];
    let vfs = nix::sys::statvfs::statvfs(&rec).unwrap();
    let size = vfs.blocks() as u64 * vfs.fragment_size() as u64;
    assert_eq!(disk["size_bytes"], size, "{disk}");
    let (used, free) = (
        disk["used_bytes"].as_u64().unwrap(),
        disk["free_bytes"].as_u64().unwrap(),
    );
    assert!(free > 0 && used > 0 && used + free <= size, "{disk}");

    // The stranger's refused request is among the last problems, in words a viewer may read.
    assert!(
        s2["last_errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["message"].as_str().unwrap().contains("viewer refused")),
        "{s2:#}"
    );
    for s in statuses(&owner) {
        let text = s.to_string();
        for secret in ["s3cret", key.as_str(), path.as_str()] {
            assert!(
                !text.contains(secret),
                "the status tells {secret:?}: {text}"
            );
        }
    }

    // Nothing ever reached the viewer that was not let in, although it kept asking.
    assert!(statuses(&owner).len() >= 2);
    let leaked = stranger
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l.contains("status"))
        .count();
    assert_eq!(leaked, 0, "the stranger got {leaked} status answers");
    assert!(dev.log_text().contains("viewer refused"));
}

#[test]
fn status_through_the_plain_relay_on_an_open_device() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    // Nothing listens there: the uplink fails and is retried, with warnings.
    let dead = free_port();
    let cfg = device_config(free_port(), relay_port, dead, "")
        .replace("rtsp://127.0.0.1:", "rtsp://camuser:campass@127.0.0.1:");
    assert!(cfg.contains("campass@"));
    let dev = Device::start("status-plain", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let v = viewer_with(relay_port, "test01", 500, &["--status", "1000"]);
    dev.wait_log("recording and local RTSP go on", Duration::from_secs(15));
    let s1 = wait_status(&v, 0, Duration::from_secs(10), |s| {
        s["last_errors"].as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["message"].as_str().unwrap().starts_with("uplink:"))
        })
    });
    let n1 = statuses(&v).len();
    let s2 = wait_status(&v, n1, Duration::from_secs(5), |_| true);
    eprintln!("{s2:#}");
    check_common(&s1, &dev);
    check_common(&s2, &dev);
    for branch in ["camera", "encode"] {
        assert!(frames(&s2, branch) > frames(&s1, branch), "{branch}");
    }
    assert_eq!(s2["uplink"]["enabled"], true);
    assert_eq!(s2["uplink"]["live"], false);
    assert_eq!(s2["uplink"]["viewers"], 1);
    let r = &s2["recording"];
    assert_eq!(r["enabled"], false);
    assert_eq!(r["attached"], false);
    assert!(r["dir"].is_null() && r["files"].is_null() && r["oldest_start"].is_null());
    assert!(s2["disk"]["size_bytes"].as_u64().unwrap() > 0);

    // The warnings name the uplink but neither its credentials nor the session's path.
    let log = dev.log_text();
    let path = log
        .lines()
        .find_map(|l| l.split("uplink: pushing to ").nth(1))
        .and_then(|url| url.rsplit('/').next())
        .expect("the device logged where it pushes")
        .trim()
        .to_string();
    assert_eq!(path.len(), 32, "{path}");
    for s in statuses(&v) {
        let text = s.to_string();
        assert!(!text.contains("campass"), "{text}");
        assert!(!text.contains(&path), "{text}");
    }
}

/// An HTTP exchange over a plain TCP connection: (status line and headers, body).
fn http(port: u16, request: &[u8]) -> (String, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(!out.is_empty(), "no answer: {e}");
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

fn get(port: u16, path: &str) -> (String, String) {
    http(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
    )
}

/// The value of the sample `series` (name and labels exactly) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_on_loopback_grow_and_bad_requests_are_refused() {
    let dir = temp_dir("metrics");
    let port = free_port();
    let cfg = recording_into(&dev_config(free_port(), ""), &dir.join("rec"))
        + &format!("[metrics]\nenabled = true\nbind = \"127.0.0.1:{port}\"\n");
    let dev = Device::start("metrics", &cfg, &[]);
    dev.wait_log("metrics: serving", Duration::from_secs(10));
    dev.wait_log("recording: segment", Duration::from_secs(10));
    // The snapshot served is at most a second old.
    std::thread::sleep(Duration::from_millis(1200));

    let (head, m1) = get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    eprintln!("{m1}");
    for name in [
        "# TYPE camstream_frames_total counter",
        "# TYPE camstream_frames_dropped_total counter",
        "camstream_frames_dropped_total{branch=\"encode\"} ",
        "camstream_uptime_seconds ",
        "camstream_disk_free_bytes ",
        "camstream_uplink_live 0",
        "camstream_viewers 0",
        "camstream_rtsp_sessions 0",
        "camstream_recording_attached 1",
        "camstream_info{version=\"",
    ] {
        assert!(m1.contains(name), "no {name:?} in:\n{m1}");
    }
    let cam1 = sample(&m1, "camstream_frames_total{branch=\"camera\"}").expect("camera frames");
    let rec1 =
        sample(&m1, "camstream_frames_total{branch=\"recording\"}").expect("recording frames");
    // The card is walked in the background: recording bytes come within a few seconds.
    let mut bytes = None;
    wait_for(Duration::from_secs(10), || {
        bytes = sample(&get(port, "/metrics").1, "camstream_recording_bytes");
        bytes.is_some_and(|b| b > 0.0)
    })
    .unwrap_or_else(|| panic!("no camstream_recording_bytes: {bytes:?}"));

    // Malformed, oversized, unknown, a wrong method, and a client that says nothing.
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t0 = Instant::now();
    let (head, _) = get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a silent client held up the next one for {:?}",
        t0.elapsed()
    );
    let (head, _) = http(port, b"HELLO\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let (head, _) = http(port, &big);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    let (head, _) = get(port, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    drop(silent);

    // Still serving, and the counters moved on.
    std::thread::sleep(Duration::from_millis(1500));
    let (head, m2) = get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let cam2 = sample(&m2, "camstream_frames_total{branch=\"camera\"}").unwrap();
    let rec2 = sample(&m2, "camstream_frames_total{branch=\"recording\"}").unwrap();
    assert!(cam2 > cam1, "camera frames {cam1} -> {cam2}");
    assert!(rec2 > rec1, "recording frames {rec1} -> {rec2}");
    assert!(
        sample(&m2, "camstream_uptime_seconds").unwrap()
            > sample(&m1, "camstream_uptime_seconds").unwrap()
    );
    // The graph was never disturbed: the RTSP stream plays.
    let s = gst_client(
        &dev.url(),
        "tcp",
        Duration::from_millis(300),
        Duration::from_secs(10),
    );
    assert!(s.frames > 0, "RTSP does not play after the bad requests");
    let _ = std::fs::remove_dir_all(dir);
}

/// The status code of an answer's head ("HTTP/1.0 200 OK": 200).
fn code(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn devices(port: u16) -> Vec<Value> {
    let (head, body) = get(port, "/devices");
    assert_eq!(code(&head), 200, "{head}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["devices"].as_array().expect("devices").clone()
}

fn device_entry(port: u16, id: &str) -> Option<Value> {
    devices(port).into_iter().find(|d| d["id"] == id)
}

#[test]
fn relay_lists_devices_online_then_offline() {
    let dir: PathBuf = temp_dir("devices");
    let relay_port = free_port();
    let (_relay, key) = closed_relay(relay_port, &dir, "test01");
    assert!(device_entry(relay_port, "test01").is_none());

    let signal = format!("token = \"s3cret\"\ndevice_key = \"{key}\"");
    let mut dev = Device::start(
        "devices",
        &device_config_signal(free_port(), relay_port, free_port(), &signal, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    // A socket claiming another id with a wrong key, and a viewer: neither is a device.
    let false_dev = viewer_with(relay_port, "test02", 300, &["--find-key", &"0".repeat(64)]);
    false_dev
        .wait_for("\"refused\"", Duration::from_secs(10))
        .expect("refused");
    let _viewer = viewer_with(relay_port, "test03", 300, &[]);
    std::thread::sleep(Duration::from_millis(500));

    let on = device_entry(relay_port, "test01").expect("the device is listed");
    assert_eq!(on["online"], true, "{on}");
    let since = on["connected_since"].as_str().expect("connected_since");
    assert!(since.ends_with('Z') && since.len() == 20, "{since}");
    assert!(on["last_seen"].as_str().unwrap() >= since, "{on}");
    assert_eq!(devices(relay_port).len(), 1, "{:?}", devices(relay_port));
    let (head, page) = get(relay_port, "/devices.html");
    assert_eq!(code(&head), 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(page.contains("<td>test01</td><td>online</td>"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="));

    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let mut last = Value::Null;
    wait_for(Duration::from_secs(10), || {
        last = device_entry(relay_port, "test01").unwrap();
        last["online"] == false
    })
    .unwrap_or_else(|| panic!("still online after the device stopped: {last}"));
    assert!(last["connected_since"].is_null(), "{last}");
    let seen = last["last_seen"].as_str().unwrap();
    assert!(seen.ends_with('Z') && seen >= since, "{last}");
    let (_, page) = get(relay_port, "/devices.html");
    assert!(page.contains("<td>test01</td><td>offline</td>"), "{page}");
    let _ = std::fs::remove_dir_all(dir);
}

/// camstream-signal, closed, with these extra arguments, and the device key of `device`.
fn closed_relay_with(port: u16, dir: &Path, device: &str, extra: &[&str]) -> (Peer, String) {
    let (f, key) = device_secret(dir, device);
    let mut args = vec!["--device-secret-file", f.as_str()];
    args.extend_from_slice(extra);
    (camstream_signal_with(port, &args), key)
}

/// The device's status as `/devices` shows it; null before the relay has one.
fn relay_status(port: u16, id: &str) -> Value {
    device_entry(port, id).map_or(Value::Null, |d| d["status"].clone())
}

/// Waits for `/devices` to show a status of `id` satisfying `pred`.
fn wait_relay_status(
    port: u16,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    wait_for(timeout, || {
        last = relay_status(port, id);
        !last.is_null() && pred(&last)
    })
    .unwrap_or_else(|| {
        panic!("no such status of {id} at /devices within {timeout:?}; last: {last:#}")
    });
    last
}

/// The `status` events a Node client printed.
fn status_events(p: &Peer) -> Vec<String> {
    p.lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["event"] == "status" || v.get("status").is_some())
        })
        .map(|(_, l)| l.clone())
        .collect()
}

/// A stand-in device (tests/node/fake_device.js) answering the relay's requests with `answers`.
fn fake_device(relay_port: u16, device: &str, key: &str, answers: &Value, extra: &[&str]) -> Peer {
    let mut c = std::process::Command::new("node");
    c.arg(node_dir().join("fake_device.js"))
        .arg(format!("http://127.0.0.1:{relay_port}"))
        .arg(device)
        .arg(key)
        .arg(answers.to_string())
        .args(extra);
    Peer::spawn(c)
}

#[test]
fn relay_asks_each_device_for_its_status_and_tells_no_viewer() {
    let dir = temp_dir("relay-status");
    let rec = dir.join("rec");
    let relay_port = free_port();
    let (_relay, key) = closed_relay_with(relay_port, &dir, "test01", &["--status-interval", "2"]);
    // An open device (anyone in the room may watch, and ask): the relay's request is let in.
    // Its uplink goes nowhere, so it logs warnings while someone watches.
    let signal = format!("open = true\ndevice_key = \"{key}\"");
    let cfg = recording_into(
        &device_config_signal(free_port(), relay_port, free_port(), &signal, ""),
        &rec,
    );
    let mut dev = Device::start("relay-status", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let t_join = Instant::now();
    // A viewer watching all along, asking nothing.
    let bystander = viewer_with(relay_port, "test01", 500, &[]);
    bystander
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("the viewer joins");

    // Asked shortly after it joined, well before the first interval would have it.
    let first = wait_relay_status(relay_port, "test01", Duration::from_secs(10), |_| true);
    eprintln!("first status after {:?}: {first:#}", t_join.elapsed());
    // Then every 2 s: the card's oldest file and the uplink's warnings show up.
    let s = wait_relay_status(relay_port, "test01", Duration::from_secs(30), |s| {
        !s["oldest_recording"].is_null() && s["recent_errors"].as_u64().unwrap_or(0) > 0
    });
    eprintln!("{s:#}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s:#}");
    let profile = s["profile"].as_str().unwrap();
    assert!(
        dev.log_text()
            .contains(&format!("board profile {profile} (")),
        "profile {profile:?} is not the one the device logged"
    );
    assert_eq!(s["recording"], "recording", "{s:#}");
    let oldest = mp4_files(&rec)
        .iter()
        .filter_map(|f| start_of(f))
        .min()
        .expect("a recording with a start time");
    assert_eq!(s["oldest_recording"], oldest.as_str(), "{s:#}");
    let vfs = nix::sys::statvfs::statvfs(&rec).unwrap();
    let size = vfs.blocks() as u64 * vfs.fragment_size() as u64;
    let free = s["disk_free_bytes"].as_u64().expect("disk free");
    assert!(free > 0 && free <= size, "{s:#}");
    let synced = s["clock_synced"].as_bool().expect("clock_synced");
    if Path::new("/run/systemd/timesync/synchronized").exists() {
        assert!(synced);
    }
    match default_route() {
        Some(iface) => assert_eq!(s["link"]["interface"], iface.as_str(), "{s:#}"),
        None => assert!(s["link"].is_null(), "{s:#}"),
    }
    assert!(s["recent_errors"].as_u64().unwrap() <= 10, "{s:#}");
    let taken = s["taken"].as_str().unwrap().to_string();
    assert!(taken.ends_with('Z') && taken.len() == 20, "{taken}");

    // Taken again at the next interval: later, with a longer uptime.
    let again = wait_relay_status(relay_port, "test01", Duration::from_secs(8), |n| {
        n["taken"].as_str().unwrap() > taken.as_str()
    });
    assert!(
        again["uptime_s"].as_u64().unwrap() >= first["uptime_s"].as_u64().unwrap() + 2,
        "{first:#}\n{again:#}"
    );

    // The page shows it.
    let (head, page) = get(relay_port, "/devices.html");
    assert_eq!(code(&head), 200, "{head}");
    assert!(page.contains("<td>test01</td><td>online</td>"), "{page}");
    assert!(
        page.contains(&format!("<td>{}</td>", env!("CARGO_PKG_VERSION"))),
        "{page}"
    );
    assert!(page.contains("<td>recording</td>"), "{page}");
    assert!(page.contains(&format!("<td>{oldest}</td>")), "{page}");

    // Several answers went to the relay; none reached the viewer in the room.
    assert!(bystander.count("\"bridge\"") + bystander.count("\"heartbeatpong\"") > 0);
    let leaked = status_events(&bystander);
    assert!(
        leaked.is_empty(),
        "the viewer got the relay's answers: {leaked:#?}"
    );

    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    wait_for(Duration::from_secs(10), || {
        device_entry(relay_port, "test01").is_some_and(|d| d["online"] == false)
    })
    .expect("offline after the device stopped");
    // The last status stays, with the time it was taken.
    assert_eq!(
        relay_status(relay_port, "test01")["version"],
        env!("CARGO_PKG_VERSION")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn relay_drops_bad_status_answers_and_escapes_the_page() {
    let dir = temp_dir("relay-status-bad");
    let relay_port = free_port();
    let (_relay, key) = closed_relay_with(relay_port, &dir, "test01", &["--status-interval", "1"]);
    let evil = "<script>alert(1)</script>";
    let answers = serde_json::json!([
        "hello",
        {"no": "version"},
        {"version": "x".repeat(20_000)},
        [{"version": "two"}, {"version": "arguments"}],
        {"version": 7},
        {"version": evil, "profile": "<img src=x onerror=alert(2)>", "uptime_s": "long",
         "recording": {"enabled": false}, "network": {"interface": "\"><b>eth0", "type": "wifi"},
         "last_errors": "none", "clock_synced": true}
    ]);
    let dev = fake_device(
        relay_port,
        "test01",
        &key,
        &answers,
        &["--unsolicited", "relay:status", "--only", "relay:status"],
    );
    dev.wait_for("\"create\"", Duration::from_secs(10))
        .expect("the stand-in device is let in");
    // A viewer of the room sends what looks like answers; a viewer's `status` is a request.
    let viewer = viewer_with(
        relay_port,
        "test01",
        300,
        &[
            "--request",
            "status",
            r#"{"version": "forged", "to": "relay:status"}"#,
            "--repeat",
            "3",
        ],
    );
    viewer
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("the viewer joins");

    // Every version /devices ever showed, polled until the last answer is taken.
    let mut seen = std::collections::BTreeSet::new();
    wait_for(Duration::from_secs(20), || {
        let s = relay_status(relay_port, "test01");
        if let Some(v) = s["version"].as_str() {
            seen.insert(v.to_string());
        }
        s["version"] == evil
    })
    .unwrap_or_else(|| panic!("the last answer was not taken; seen {seen:?}"));
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![evil.to_string()]);

    // What the device got from the relay: the request, addressed to the relay itself.
    let requests: Vec<Value> = dev
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "status")
        .map(|v| v["args"].clone())
        .collect();
    assert!(
        requests.contains(&serde_json::json!([null, {"viewer": "relay:status"}])),
        "{requests:#?}"
    );
    assert_eq!(
        dev.count("\"disconnect\""),
        0,
        "the device was disconnected"
    );

    let s = relay_status(relay_port, "test01");
    assert_eq!(s["profile"], "<img src=x onerror=alert(2)>");
    assert!(
        s["uptime_s"].is_null() && s["recent_errors"].is_null(),
        "{s:#}"
    );
    assert_eq!(s["recording"], "off");
    let (head, page) = get(relay_port, "/devices.html");
    assert_eq!(code(&head), 200, "{head}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        page.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{page}"
    );
    assert!(page.contains("&quot;&gt;&lt;b&gt;eth0 (wifi)"), "{page}");
    assert!(
        !page.contains("<script") && !page.contains("<img") && !page.contains("<b>"),
        "{page}"
    );
    // Nothing of it reached the viewer.
    let leaked = status_events(&viewer);
    assert!(leaked.is_empty(), "{leaked:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn relay_nodes_share_devices_and_their_status_through_redis() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: redis-server is not installed");
        return;
    }
    let dir = temp_dir("relay-status-redis");
    let redis_port = free_port();
    let _redis = start_redis(redis_port);
    let url = format!("redis://127.0.0.1:{redis_port}");
    let (f, key) = device_secret(&dir, "test01");
    let (_, key2) = device_secret(&dir, "test02");
    let (a, b) = (free_port(), free_port());
    let ttl = 3;
    let args = [
        "--redis",
        &url,
        "--device-secret-file",
        &f,
        "--status-interval",
        "2",
        "--presence-ttl",
        "3",
    ];
    let mut node_a = camstream_signal_with(a, &args);
    let _node_b = camstream_signal_with(b, &args);

    // A real device on node A, closed by a token (only the relay's own request is let in
    // without one): node B lists it, with the status node A asked for.
    let signal = format!("token = \"s3cret\"\ndevice_key = \"{key}\"");
    let mut dev = Device::start(
        "relay-status-redis",
        &device_config_signal(free_port(), a, free_port(), &signal, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let s = wait_relay_status(b, "test01", Duration::from_secs(10), |_| true);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s:#}");
    assert_eq!(s["recording"], "off", "{s:#}");
    for port in [a, b] {
        let d = device_entry(port, "test01").expect("listed");
        assert_eq!(d["online"], true, "{d}");
        assert!(
            d["connected_since"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{d}"
        );
        assert_eq!(d["status"], s, "{d}");
    }
    let (_, page) = get(b, "/devices.html");
    assert!(page.contains("<td>test01</td><td>online</td>"), "{page}");
    // The status is renewed: node B shows a later one.
    let taken = s["taken"].as_str().unwrap().to_string();
    wait_relay_status(b, "test01", Duration::from_secs(8), |n| {
        n["taken"].as_str().unwrap() > taken.as_str()
    });

    // It disconnects: offline on both nodes within the expiry, with its last status.
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let t_stop = Instant::now();
    for port in [a, b] {
        let mut last = Value::Null;
        wait_for(Duration::from_secs(ttl + 1), || {
            last = device_entry(port, "test01").unwrap();
            last["online"] == false
        })
        .unwrap_or_else(|| {
            panic!(
                "node {port}: still online {:?} after the device stopped: {last}",
                t_stop.elapsed()
            )
        });
        assert!(last["connected_since"].is_null(), "{last}");
        assert_eq!(
            last["status"]["version"],
            env!("CARGO_PKG_VERSION"),
            "{last}"
        );
    }
    eprintln!(
        "offline on both nodes {:?} after the device stopped",
        t_stop.elapsed()
    );

    // A device on node A, and node A dies: node B lists it offline once its presence expires.
    let fake = fake_device(
        a,
        "test02",
        &key2,
        &serde_json::json!([{"version": "9.9.9"}]),
        &[],
    );
    fake.wait_for("\"create\"", Duration::from_secs(10))
        .expect("test02 let in");
    wait_relay_status(b, "test02", Duration::from_secs(10), |s| {
        s["version"] == "9.9.9"
    });
    assert_eq!(device_entry(b, "test02").unwrap()["online"], true);
    node_a.child.kill().unwrap();
    let _ = node_a.child.wait();
    let t_kill = Instant::now();
    let mut last = Value::Null;
    let took = wait_for(Duration::from_secs(ttl + 2), || {
        last = device_entry(b, "test02").unwrap();
        last["online"] == false
    })
    .unwrap_or_else(|| {
        panic!(
            "still online {:?} after its node died: {last}",
            t_kill.elapsed()
        )
    });
    eprintln!("offline on node B {took:?} after node A died (presence expiry {ttl} s)");
    assert_eq!(last["status"]["version"], "9.9.9", "{last}");
    assert!(last["connected_since"].is_null(), "{last}");
    let _ = std::fs::remove_dir_all(dir);
}
