//! Helpers shared by the integration tests: a real `camstream` process with a real config, and
//! real RTSP clients (ffprobe, a GStreamer rtspsrc pipeline).
#![allow(dead_code)]

pub mod link;
pub mod netns;
pub mod peers;
pub mod recordings;
pub mod vboard;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
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
        Self::start_cmd(tag, config, args, env, Command::new(BIN))
    }

    /// As `start_env`, run by `cmd` (the daemon's binary, or a wrapper that runs it, such as
    /// `ip netns exec <ns> <binary>`); the RTSP server is not waited for (it may listen in
    /// another network namespace): wait for a log line instead.
    pub fn start_in(tag: &str, config: &str, cmd: Command) -> Device {
        Self::spawn(tag, config, &[], &[], cmd)
    }

    fn start_cmd(
        tag: &str,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cmd: Command,
    ) -> Device {
        let d = Self::spawn(tag, config, args, env, cmd);
        d.wait_log("RTSP server ready", Duration::from_secs(20));
        d
    }

    fn spawn(
        tag: &str,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        mut cmd: Command,
    ) -> Device {
        let dir = temp_dir(tag);
        let cfg = dir.join("camstream.toml");
        std::fs::write(&cfg, config).unwrap();
        let port = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("port = "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(8554);
        let mut child = cmd
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
        Device {
            child,
            log,
            dir,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/live", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// How many UDP sockets process `pid` holds: its `socket:[inode]` descriptors whose inode is in
/// its network namespace's UDP tables.
pub fn udp_sockets(pid: u32) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(inode.to_string());
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

/// The resident set size of process `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A bare RTSP client receiving RTP over UDP: OPTIONS, DESCRIBE, SETUP
/// (`client_port=A-B` on loopback) and PLAY over its own connection, then nothing unless asked:
/// no RTCP, no keep-alive. Dropping the connection is a client killed; keeping it open and
/// silent is a client whose network went away.
pub struct UdpRtspClient {
    pub tcp: TcpStream,
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub session: String,
    /// The `timeout=` the server announced with the session, if any.
    pub timeout: Option<u32>,
    /// Where the server takes RTCP for the stream.
    pub server_rtcp: SocketAddr,
    cseq: u32,
}

impl UdpRtspClient {
    /// Connects to `url` (rtsp://127.0.0.1:PORT/PATH) and plays its first stream over UDP.
    pub fn play(url: &str) -> Result<Self, String> {
        let host_port = url
            .strip_prefix("rtsp://")
            .and_then(|r| r.split('/').next())
            .ok_or_else(|| format!("not an rtsp:// URL: {url}"))?;
        let tcp = TcpStream::connect(host_port).map_err(|e| format!("connect {host_port}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (rtp, rtcp) = udp_port_pair();
        let (a, b) = (
            rtp.local_addr().unwrap().port(),
            rtcp.local_addr().unwrap().port(),
        );
        let mut c = UdpRtspClient {
            tcp,
            rtp,
            rtcp,
            session: String::new(),
            timeout: None,
            server_rtcp: "127.0.0.1:0".parse().unwrap(),
            cseq: 0,
        };
        c.request("OPTIONS", url, "")?;
        let (head, sdp) = c.request("DESCRIBE", url, "Accept: application/sdp\r\n")?;
        let base = header(&head, "Content-Base").unwrap_or_else(|| format!("{url}/"));
        let control = sdp
            .split("m=video")
            .nth(1)
            .and_then(|m| m.lines().find_map(|l| l.trim().strip_prefix("a=control:")))
            .ok_or_else(|| format!("no video control in the SDP:\n{sdp}"))?
            .to_string();
        let setup_url = if control.starts_with("rtsp://") {
            control
        } else {
            format!("{}/{control}", base.trim_end_matches('/'))
        };
        let (head, _) = c.request(
            "SETUP",
            &setup_url,
            &format!("Transport: RTP/AVP;unicast;client_port={a}-{b}\r\n"),
        )?;
        let session = header(&head, "Session").ok_or("SETUP answered without a session")?;
        let mut parts = session.split(';');
        c.session = parts.next().unwrap().trim().to_string();
        c.timeout = parts
            .filter_map(|p| p.trim().strip_prefix("timeout="))
            .find_map(|t| t.parse().ok());
        let transport = header(&head, "Transport").ok_or("SETUP answered without a transport")?;
        let server_port = transport
            .split(';')
            .find_map(|p| p.strip_prefix("server_port="))
            .ok_or_else(|| format!("no server_port in {transport:?}"))?;
        let rtcp_port = server_port.rsplit('-').next().unwrap();
        c.server_rtcp = format!("127.0.0.1:{rtcp_port}").parse().unwrap();
        let session = c.session.clone();
        c.request(
            "PLAY",
            url,
            &format!("Session: {session}\r\nRange: npt=0-\r\n"),
        )?;
        Ok(c)
    }

    /// Sends a request and reads its answer: (status line and headers, body). Fails on a
    /// status other than 200.
    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &str,
    ) -> Result<(String, String), String> {
        self.cseq += 1;
        let req = format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: camstream-test\r\n{headers}\r\n",
            self.cseq
        );
        self.tcp
            .write_all(req.as_bytes())
            .map_err(|e| format!("{method}: {e}"))?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match self.tcp.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                Ok(_) => return Err(format!("{method}: connection closed")),
                Err(e) => return Err(format!("{method}: {e}")),
            }
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let len: usize = header(&head, "Content-Length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.tcp
            .read_exact(&mut body)
            .map_err(|e| format!("{method} body: {e}"))?;
        if !head.starts_with("RTSP/1.0 200") {
            return Err(format!("{method}: {}", head.lines().next().unwrap_or("")));
        }
        Ok((head, String::from_utf8_lossy(&body).into_owned()))
    }

    /// How many RTP packets arrive within `window`.
    pub fn rtp_packets(&self, window: Duration) -> usize {
        udp_packets(&self.rtp, window)
    }

    /// An RTCP receiver report (no report blocks) from the client's RTCP port to the server's,
    /// as a receiving client sends every few seconds.
    pub fn send_receiver_report(&self) {
        let mut rr = vec![0x80, 201, 0, 1];
        rr.extend_from_slice(&0x7e57_c11e_u32.to_be_bytes());
        self.rtcp.send_to(&rr, self.server_rtcp).unwrap();
    }

    /// The client's network goes away: its UDP ports close; its connection, still open as far
    /// as the server knows, is returned and says nothing more.
    pub fn unplug(self) -> TcpStream {
        self.tcp
    }
}

/// Two UDP sockets on loopback with consecutive ports, the first even (an RTP/RTCP pair).
pub fn udp_port_pair() -> (UdpSocket, UdpSocket) {
    for _ in 0..200 {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rtp.local_addr().unwrap().port();
        if port & 1 == 1 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
            return (rtp, rtcp);
        }
    }
    panic!("no free pair of UDP ports on loopback");
}

/// How many datagrams wait on `socket` (read without blocking).
pub fn udp_drain(socket: &UdpSocket) -> usize {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    socket.set_nonblocking(false).unwrap();
    n
}

/// Whether the peer has closed `conn` (a read returns end of stream within `timeout`).
pub fn closed_by_peer(conn: &mut TcpStream, timeout: Duration) -> bool {
    conn.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Polls `f` every 100 ms until it holds (returns how long that took) or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if f() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many datagrams `socket` receives within `window`.
pub fn udp_packets(socket: &UdpSocket, window: Duration) -> usize {
    let t0 = Instant::now();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    loop {
        let left = window.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return n;
        }
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if socket.recv(&mut buf).is_ok() {
            n += 1;
        }
    }
}

/// The value of header `name` in an RTSP answer's head, if present.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}
