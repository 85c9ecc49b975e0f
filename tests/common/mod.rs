//! Helpers shared by the integration tests: a real `camstream` process with a real config, and
//! real RTSP clients (ffprobe, a GStreamer rtspsrc pipeline).
#![allow(dead_code)]

pub mod peers;
pub mod recordings;
pub mod vboard;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_camstream");

/// A free TCP port on loopback (the kernel picks it; a race with other processes is unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let d = std::env::temp_dir().join(format!("camstream-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small, fast config: 320x240 test pattern, x264, loopback RTSP on `port`.
pub fn dev_config(port: u16, extra: &str) -> String {
    format!(
        r#"
[device]
id = "test01"
[camera]
source = "test"
width = 320
height = 240
fps = 30
[encoder]
name = "x264enc"
bitrate_kbps = 500
[display]
sink = "none"
[rtsp]
bind = "127.0.0.1"
port = {port}
{extra}
[recording]
enabled = false
"#
    )
}

pub struct Device {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
    pub port: u16,
}

impl Device {
    /// Starts `camstream run` with `config` and waits until the RTSP server listens.
    pub fn start(tag: &str, config: &str, args: &[&str]) -> Device {
        Self::start_env(tag, config, args, &[])
    }

    pub fn start_env(tag: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Device {
        let dir = temp_dir(tag);
        let cfg = dir.join("camstream.toml");
        std::fs::write(&cfg, config).unwrap();
        let port = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("port = "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(8554);
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn camstream");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[camstream] {line}");
                l.lock().unwrap().push(line);
            }
        });
        let d = Device {
            child,
            log,
            dir,
            port,
        };
        d.wait_log("RTSP server ready", Duration::from_secs(20));
        d
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/live", self.port)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`; panics with the log on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no log line with {needle:?} within {timeout:?}:\n{}",
            self.log_text()
        );
    }

    /// Sends `sig` and waits for the exit; returns the exit code and how long it took.
    pub fn stop(
        &mut self,
        sig: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> (Option<i32>, Duration) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let t0 = Instant::now();
        nix::sys::signal::kill(pid, sig).unwrap();
        while t0.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (None, t0.elapsed())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What an RTSP client saw.
#[derive(Debug, Clone, Default)]
pub struct ClientStats {
    pub frames: u64,
    pub first_frame: Option<Duration>,
    pub width: i32,
    pub height: i32,
    /// Decoded frames per second between the first and the last frame.
    pub fps: f64,
}

/// A decoding RTSP client, not started: rtspsrc → depay → avdec_h264 → the appsink returned.
pub fn decoding_client(url: &str, protocols: &str) -> (gst::Pipeline, gst_app::AppSink) {
    rtsp_client(url, protocols, "h264parse ! avdec_h264 ! ")
}

/// An RTSP client, not started: rtspsrc → depay → `tail` (elements, each followed by "! ") →
/// the appsink returned.
pub fn rtsp_client(url: &str, protocols: &str, tail: &str) -> (gst::Pipeline, gst_app::AppSink) {
    gst::init().unwrap();
    let p = gst::parse::launch(&format!(
        "rtspsrc location={url} protocols={protocols} latency=0 ! rtph264depay ! {tail}appsink name=out sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    (p, sink)
}

/// A GStreamer RTSP client: rtspsrc → depay → avdec_h264, counting decoded frames for `run_for`
/// after the first one (or until `timeout` without any).
pub fn gst_client(url: &str, protocols: &str, run_for: Duration, timeout: Duration) -> ClientStats {
    let (p, sink) = decoding_client(url, protocols);
    let t0 = Instant::now();
    p.set_state(gst::State::Playing).unwrap();
    let mut stats = ClientStats::default();
    let mut last = None;
    loop {
        let limit = match stats.first_frame {
            Some(first) => (first + run_for).saturating_sub(t0.elapsed()),
            None => timeout.saturating_sub(t0.elapsed()),
        };
        if limit.is_zero() {
            break;
        }
        let Some(sample) =
            sink.try_pull_sample(gst::ClockTime::from_nseconds(limit.as_nanos() as u64))
        else {
            break;
        };
        let now = t0.elapsed();
        if stats.first_frame.is_none() {
            stats.first_frame = Some(now);
            if let Some(s) = sample
                .caps()
                .and_then(|c| c.structure(0).map(|s| s.to_owned()))
            {
                stats.width = s.get("width").unwrap_or(0);
                stats.height = s.get("height").unwrap_or(0);
            }
        }
        stats.frames += 1;
        last = Some(now);
    }
    if let (Some(first), Some(last)) = (stats.first_frame, last) {
        let span = (last - first).as_secs_f64();
        if span > 0.0 {
            stats.fps = (stats.frames - 1) as f64 / span;
        }
    }
    let _ = p.set_state(gst::State::Null);
    stats
}

/// ffprobe's view: (codec, width, height, decoded frames) reading `seconds` of the stream.
pub fn ffprobe(
    url: &str,
    transport: &str,
    seconds: u32,
) -> Result<(String, i64, i64, i64), String> {
    let out = Command::new("timeout")
        .args([
            "30",
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-count_frames",
        ])
        .args(["-read_intervals", &format!("%+{seconds}")])
        .args([
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
        ])
        .args(["-of", "json", url])
        .output()
        .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    stream_summary(&out.stdout)
}

/// (codec, width, height, decoded frames) of the first stream in ffprobe's JSON
/// (`-show_entries stream=codec_name,width,height,nb_read_frames -of json`).
pub fn stream_summary(json: &[u8]) -> Result<(String, i64, i64, i64), String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let s = &v["streams"][0];
    Ok((
        s["codec_name"].as_str().unwrap_or("").to_string(),
        s["width"].as_i64().unwrap_or(0),
        s["height"].as_i64().unwrap_or(0),
        s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    ))
}
