//! Real peers for the remote-viewing tests: Node socket.io relay and viewer, camstream-signal,
//! the media stand-in.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

pub fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// A child process whose stdout lines are collected.
pub struct Peer {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Peer {
    pub fn spawn(mut cmd: Command) -> Peer {
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

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
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

    pub fn count(&self, needle: &str) -> usize {
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
pub fn camstream_signal(port: u16) -> Peer {
    camstream_signal_with(port, &[])
}

/// The relay's binary (built from signal/ by scripts/test).
pub fn camstream_signal_bin() -> PathBuf {
    let bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("signal/target/debug/camstream-signal");
    assert!(
        bin.exists(),
        "build it first: cargo build --manifest-path signal/Cargo.toml"
    );
    bin
}

pub fn camstream_signal_with(port: u16, args: &[&str]) -> Peer {
    let mut c = Command::new(camstream_signal_bin());
    c.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args);
    let p = Peer::spawn(c);
    assert!(p
        .wait_for("camstream-signal listening", Duration::from_secs(10))
        .is_some());
    p
}

pub fn relay(port: u16) -> Peer {
    relay_with(port, &[])
}

pub fn relay_with(port: u16, args: &[&str]) -> Peer {
    let mut c = Command::new("node");
    c.arg(node_dir().join("relay.js"))
        .arg(port.to_string())
        .args(args);
    let p = Peer::spawn(c);
    assert!(
        p.wait_for("relay listening", Duration::from_secs(10))
            .is_some(),
        "relay did not start"
    );
    p
}

/// The seed's viewer; heartbeats every `hb_ms`, none after `stop_ms`.
pub fn viewer(relay_port: u16, device: &str, hb_ms: u64, stop_ms: Option<u64>) -> Peer {
    viewer_at(
        &format!("http://127.0.0.1:{relay_port}"),
        device,
        hb_ms,
        stop_ms,
        None,
    )
}

/// The seed's viewer with options of viewer.js (`--token T`, `--find-key K`, ...).
pub fn viewer_with(relay_port: u16, device: &str, hb_ms: u64, args: &[&str]) -> Peer {
    let mut c = Command::new("node");
    c.arg(node_dir().join("viewer.js"))
        .arg(format!("http://127.0.0.1:{relay_port}"))
        .arg(device)
        .arg(hb_ms.to_string())
        .args(args);
    Peer::spawn(c)
}

/// The seed's viewer against any relay URL; `ca` (PEM) is trusted besides the system's CAs.
pub fn viewer_at(
    url: &str,
    device: &str,
    hb_ms: u64,
    stop_ms: Option<u64>,
    ca: Option<&Path>,
) -> Peer {
    let mut c = Command::new("node");
    if let Some(ca) = ca {
        c.env("NODE_EXTRA_CA_CERTS", ca);
    }
    c.arg(node_dir().join("viewer.js"))
        .arg(url)
        .arg(device)
        .arg(hb_ms.to_string());
    if let Some(s) = stop_ms {
        c.arg("--no-heartbeat-after").arg(s.to_string());
    }
    Peer::spawn(c)
}

pub struct Media {
    pub peer: Peer,
    pub push: u16,
    pub read: u16,
    pub http: u16,
    pub dir: PathBuf,
}

pub fn media_standin(push: u16) -> Media {
    media_standin_with(push, &[])
}

pub fn media_standin_with(push: u16, args: &[&str]) -> Media {
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
    .arg(&dir)
    .args(args);
    let peer = Peer::spawn(c);
    assert!(peer
        .wait_for("media-standin: push", Duration::from_secs(10))
        .is_some());
    Media {
        peer,
        push,
        read,
        http,
        dir,
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A device that any member of the room may watch (`signal.open`), as the seed's devices.
pub fn device_config(rtsp_port: u16, relay_port: u16, media_push: u16, extra: &str) -> String {
    device_config_signal(rtsp_port, relay_port, media_push, "open = true", extra)
}

/// A device with these `[signal]` keys (who may watch, its device key).
pub fn device_config_signal(
    rtsp_port: u16,
    relay_port: u16,
    media_push: u16,
    signal: &str,
    extra: &str,
) -> String {
    let cfg = dev_config(rtsp_port, "");
    format!(
        "{cfg}\n[signal]\nenabled = true\nurl = \"http://127.0.0.1:{relay_port}\"\nlease_seconds = 3\nreconnect_max_seconds = 2\n{signal}\n\
         [uplink]\nurl = \"rtsp://127.0.0.1:{media_push}/channel/{{path}}\"\nretry_max_seconds = 1\n{extra}"
    )
}

pub fn bridge_path(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["arg"].as_str().unwrap().to_string()
}

/// A certificate for 127.0.0.1, self-signed (it is its own CA): (cert.pem, key.pem) in `dir`.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl could not make a certificate");
    (cert, key)
}

/// A throwaway redis-server on 127.0.0.1 (no persistence).
pub fn start_redis(port: u16) -> Peer {
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let redis = Peer::spawn(c);
    assert!(
        redis
            .wait_for("Ready to accept connections", Duration::from_secs(10))
            .is_some(),
        "redis-server did not start"
    );
    redis
}

/// The device secret the closed relays of the tests are started with.
pub const RELAY_SECRET: &str = "relay-secret-0123456789";

/// The relay's device secret in a file under `dir`, and the device key of `device` under it.
pub fn device_secret(dir: &Path, device: &str) -> (String, String) {
    let file = dir.join("device-secret");
    std::fs::write(&file, format!("{RELAY_SECRET}\n")).unwrap();
    let f = file.to_str().unwrap().to_string();
    let out = Command::new(camstream_signal_bin())
        .args(["--device-secret-file", &f, "device-key", device])
        .output()
        .expect("camstream-signal device-key");
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key.len(), 64, "device key {key:?}");
    (f, key)
}

/// camstream-signal, closed, and the device key of `device` under it.
pub fn closed_relay(port: u16, dir: &Path, device: &str) -> (Peer, String) {
    let (f, key) = device_secret(dir, device);
    (
        camstream_signal_with(port, &["--device-secret-file", &f]),
        key,
    )
}
