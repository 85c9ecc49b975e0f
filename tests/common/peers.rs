//! Real peers for the remote-viewing tests: Node socket.io relay and viewer, camstream-signal,
//! the media stand-in.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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

pub fn camstream_signal_with(port: u16, args: &[&str]) -> Peer {
    let bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("signal/target/debug/camstream-signal");
    assert!(
        bin.exists(),
        "build it first: cargo build --manifest-path signal/Cargo.toml"
    );
    let mut c = Command::new(bin);
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
pub fn viewer(relay_port: u16, device: &str, hb_ms: u64, stop_ms: Option<u64>) -> Peer {
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

pub struct Media {
    pub peer: Peer,
    pub push: u16,
    pub read: u16,
    pub http: u16,
    pub dir: PathBuf,
}

pub fn media_standin(push: u16) -> Media {
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
        http,
        dir,
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn device_config(rtsp_port: u16, relay_port: u16, media_push: u16, extra: &str) -> String {
    let cfg = dev_config(rtsp_port, "");
    format!(
        "{cfg}\n[signal]\nenabled = true\nurl = \"http://127.0.0.1:{relay_port}\"\nlease_seconds = 3\nreconnect_max_seconds = 2\n\
         [uplink]\nurl = \"rtsp://127.0.0.1:{media_push}/channel/{{path}}\"\nretry_max_seconds = 1\n{extra}"
    )
}

pub fn bridge_path(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["arg"].as_str().unwrap().to_string()
}
