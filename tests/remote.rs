//! Remote viewing end to end with real peers: the real Node socket.io-client following the
//! seed's viewer steps, a plain Node socket.io relay, the device, and the media stand-in
//! (gst-rtsp-server in RECORD mode) as the remote media server; ffprobe reads what was pushed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// A child process whose stdout lines are collected.
struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Peer {
    fn spawn(mut cmd: Command) -> Peer {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn peer");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[peer] {line}");
                l.lock().unwrap().push((Instant::now(), line));
            }
        });
        Peer { child, lines }
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(needle))
            {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// camstream-signal, the project's own relay (built from signal/ by scripts/test).
fn camstream_signal(port: u16) -> Peer {
    let bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("signal/target/debug/camstream-signal");
    assert!(
        bin.exists(),
        "build it first: cargo build --manifest-path signal/Cargo.toml"
    );
    let mut c = Command::new(bin);
    c.arg("--listen").arg(format!("127.0.0.1:{port}"));
    let p = Peer::spawn(c);
    assert!(p
        .wait_for("camstream-signal listening", Duration::from_secs(10))
        .is_some());
    p
}

fn relay(port: u16) -> Peer {
    let mut c = Command::new("node");
    c.arg(node_dir().join("relay.js")).arg(port.to_string());
    let p = Peer::spawn(c);
    assert!(
        p.wait_for("relay listening", Duration::from_secs(10))
            .is_some(),
        "relay did not start"
    );
    p
}

/// The seed's viewer; heartbeats every `hb_ms`, none after `stop_ms`.
fn viewer(relay_port: u16, device: &str, hb_ms: u64, stop_ms: Option<u64>) -> Peer {
    let mut c = Command::new("node");
    c.arg(node_dir().join("viewer.js"))
        .arg(format!("http://127.0.0.1:{relay_port}"))
        .arg(device)
        .arg(hb_ms.to_string());
    if let Some(s) = stop_ms {
        c.arg("--no-heartbeat-after").arg(s.to_string());
    }
    Peer::spawn(c)
}

struct Media {
    peer: Peer,
    push: u16,
    read: u16,
    dir: PathBuf,
}

fn media_standin(push: u16) -> Media {
    let read = free_port();
    let http = free_port();
    let dir = temp_dir("media");
    let bin = PathBuf::from(BIN)
        .parent()
        .unwrap()
        .join("examples/media_standin");
    let mut c = Command::new(bin);
    c.args([
        "--push-port",
        &push.to_string(),
        "--read-port",
        &read.to_string(),
    ])
    .args(["--http-port", &http.to_string()])
    .arg("--dir")
    .arg(&dir);
    let peer = Peer::spawn(c);
    assert!(peer
        .wait_for("media-standin: push", Duration::from_secs(10))
        .is_some());
    Media {
        peer,
        push,
        read,
        dir,
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn device_config(rtsp_port: u16, relay_port: u16, media_push: u16, extra: &str) -> String {
    let cfg = dev_config(rtsp_port, "");
    format!(
        "{cfg}\n[signal]\nenabled = true\nurl = \"http://127.0.0.1:{relay_port}\"\nlease_seconds = 3\nreconnect_max_seconds = 2\n\
         [uplink]\nurl = \"rtsp://127.0.0.1:{media_push}/channel/{{path}}\"\nretry_max_seconds = 1\n{extra}"
    )
}

fn bridge_path(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["arg"].as_str().unwrap().to_string()
}

#[test]
fn viewer_gets_bridge_and_the_pushed_stream_is_readable_at_once() {
    bridge_then_readable(relay);
}

#[test]
fn bridge_through_camstream_signal() {
    bridge_then_readable(camstream_signal);
}

fn bridge_then_readable(start_relay: fn(u16) -> Peer) {
    let relay_port = free_port();
    let _relay = start_relay(relay_port);
    let media = media_standin(free_port());
    let dev = Device::start(
        "remote-bridge",
        &device_config(free_port(), relay_port, media.push, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));

    let v = viewer(relay_port, "test01", 1000, None);
    let (t_join, _) = v
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("join");
    let (t_bridge, line) = v
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge");
    let path = bridge_path(&line);
    assert_eq!(path.len(), 32, "128-bit path id: {path}");
    let url = format!("rtsp://127.0.0.1:{}/channel/{path}", media.read);
    let t0 = Instant::now();
    let s = gst_client(
        &url,
        "tcp",
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    let first = s.first_frame.expect("pushed stream readable");
    eprintln!(
        "auth -> bridge {} ms; bridge -> first decoded frame at a reader of the media server {} ms",
        (t_bridge - t_join).as_millis(),
        (t0 - t_bridge + first).as_millis()
    );
    assert!(
        t0 - t_bridge + first < Duration::from_secs(1),
        "not readable within 1 s of bridge"
    );
    let (codec, _, _, _) = ffprobe(&url, "tcp", 1).expect("ffprobe reads the pushed stream");
    assert_eq!(codec, "h264");
    assert!(media.peer.count("push started") >= 1);
}

#[test]
fn uplink_stops_when_heartbeats_stop_and_two_viewers_share_it() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let dev = Device::start(
        "remote-lease",
        &device_config(free_port(), relay_port, media.push, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let a = viewer(relay_port, "test01", 1000, Some(2000));
    let (_, la) = a
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge a");
    let b = viewer(relay_port, "test01", 1000, Some(2000));
    let (_, lb) = b
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge b");
    assert_eq!(
        bridge_path(&la),
        bridge_path(&lb),
        "one uplink for both viewers"
    );
    assert_eq!(dev.log_text().matches("uplink: pushing to").count(), 1);
    // Heartbeats stop after 2 s; lease 3 s: gone within lease + 2 s of the last heartbeat.
    let t_last = Instant::now();
    dev.wait_log(
        "uplink: no viewer heartbeat within the lease",
        Duration::from_secs(3 + 2 + 2),
    );
    eprintln!(
        "uplink stopped {} ms after the test's last-heartbeat mark",
        t_last.elapsed().as_millis()
    );
}

#[test]
fn device_refinds_after_relay_restart_and_uplink_returns_after_media_restart() {
    let relay_port = free_port();
    let relay1 = relay(relay_port);
    let media_push = free_port();
    let media = media_standin(media_push);
    let dev = Device::start(
        "remote-restart",
        &device_config(free_port(), relay_port, media_push, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    drop(relay1);
    std::thread::sleep(Duration::from_millis(500));
    let _relay2 = relay(relay_port);
    // The device reconnects, finds its room again, and a new viewer works.
    let t0 = Instant::now();
    while dev
        .log_text()
        .matches("signal: connected, joining room")
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no reconnect:\n{}",
            dev.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = viewer(relay_port, "test01", 500, None);
    let (_, line) = v
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge after relay restart");
    let path = bridge_path(&line);
    // Media server killed and restarted: the uplink comes back by itself while the viewer watches.
    drop(media);
    dev.wait_log("uplink:", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1));
    let media2 = media_standin(media_push);
    assert!(
        media2
            .peer
            .wait_for("push started", Duration::from_secs(15))
            .is_some(),
        "{}",
        dev.log_text()
    );
    let url = format!("rtsp://127.0.0.1:{}/channel/{path}", media2.read);
    let s = gst_client(
        &url,
        "tcp",
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    assert!(
        s.frames > 0,
        "uplink did not come back:\n{}",
        dev.log_text()
    );
}

#[test]
fn attach_detach_cycles_lose_no_recorded_frame() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("remote-rec");
    let cfg = device_config(free_port(), relay_port, media.push, "")
        .replace(
            "[recording]\nenabled = false",
            &format!(
                "[recording]\ndir = \"{}\"\nsegment_seconds = 5",
                rec.display()
            ),
        )
        .replace("lease_seconds = 3", "lease_seconds = 1");
    let mut dev = Device::start("remote-cycles", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    for i in 0..20 {
        let v = viewer(relay_port, "test01", 60_000, None);
        v.wait_for("\"bridge\"", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("cycle {i}: no bridge"));
        drop(v);
        let want = i + 1;
        let t0 = Instant::now();
        while dev
            .log_text()
            .matches("no viewer heartbeat within the lease")
            .count()
            < want
        {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "cycle {i}: uplink not detached"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let log = dev.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("frames written in"))
        .unwrap();
    eprintln!("{line}");
    assert!(line.contains(", 0 dropped before the muxer"), "{line}");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let written = nums[nums.len() - 3];
    let mut in_files = 0;
    let mut files = Vec::new();
    fn walk(d: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)
            } else if p.extension().is_some_and(|x| x == "mp4") {
                out.push(p)
            }
        }
    }
    walk(&rec, &mut files);
    for f in &files {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames",
                "-of",
                "csv=p=0",
            ])
            .arg(f)
            .output()
            .unwrap();
        in_files += String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_end_matches(',')
            .parse::<u64>()
            .unwrap_or(0);
    }
    assert_eq!(
        in_files, written,
        "frames in files vs frames written over 20 uplink cycles"
    );
    std::fs::remove_dir_all(rec).ok();
}

#[test]
fn malformed_socketio_events_are_dropped_and_the_device_keeps_serving() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let dev = Device::start(
        "remote-flood",
        &device_config(free_port(), relay_port, media.push, "")
            .replace("[signal]", "[signal]\ntoken = \"s3cret\""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let script = r#"
const { io } = require("socket.io-client");
const s = io(process.argv[1], { transports: ["websocket"] });
s.on("connect", () => { s.emit("find", "test01"); });
s.on("join", () => {
  const big = "x".repeat(100000);
  for (let i = 0; i < 300; i++) {
    s.emit("auth", big); s.emit("auth", 42); s.emit("auth", { token: ["x"] }); s.emit("auth", Buffer.from([1, 2, 3]));
    s.emit("heartbeatping", { nested: { deep: [1, 2, 3] } }); s.emit("bridge", null); s.emit("auth");
    s.emit("auth", "wrong-token"); s.emit("heartbeatping", Buffer.alloc(1000));
  }
  setTimeout(() => process.stdout.write("flood done\n", () => process.exit(0)), 1500);
});
"#;
    let mut c = Command::new("node");
    c.current_dir(node_dir())
        .arg("-e")
        .arg(script)
        .arg(format!("http://127.0.0.1:{relay_port}"));
    let flood = Peer::spawn(c);
    assert!(flood
        .wait_for("flood done", Duration::from_secs(20))
        .is_some());
    // No session from bad or missing tokens.
    assert!(
        !dev.log_text().contains("uplink: pushing to"),
        "{}",
        dev.log_text()
    );
    // Still serving RTSP, still answering the protocol.
    let (codec, _, _, frames) = ffprobe(&dev.url(), "tcp", 1).expect("RTSP after the flood");
    assert_eq!(codec, "h264");
    assert!(frames > 0);
    let script = r#"
const { io } = require("socket.io-client");
const s = io(process.argv[1], { transports: ["websocket"] });
s.on("connect", () => s.emit("find", "test01"));
s.on("join", () => { s.emit("auth", { token: "s3cret" }); s.emit("heartbeatping"); });
s.on("bridge", (p) => process.stdout.write("bridge " + p + "\n", () => process.exit(0)));
"#;
    let mut c = Command::new("node");
    c.current_dir(node_dir())
        .arg("-e")
        .arg(script)
        .arg(format!("http://127.0.0.1:{relay_port}"));
    let good = Peer::spawn(c);
    assert!(
        good.wait_for("bridge ", Duration::from_secs(10)).is_some(),
        "{}",
        dev.log_text()
    );
}
