//! Prometheus metrics on a local HTTP port (`[metrics]`: off by default, loopback by default).
//!
//! A tiny HTTP/1.x server on threads of its own. `GET /metrics` answers in the text exposition
//! format (version 0.0.4) what the main loop last published (`status::Reporter::publish`, every
//! second); this side never touches the graph, so a scraper can neither slow nor stall it.
//! Everything else is refused: another path 404, another method 405, a request that is not
//! HTTP/1.x 400. A request's head is bounded (4 KiB, else 431) and so is the time to send it
//! (5 s, 2 s between reads, else 408); at most 8 connections are served at once, each on its
//! own thread, one request per connection.
//!
//! Names follow MediaMTX's style with a `camstream_` prefix: `camstream_frames_total{branch=…}`,
//! `camstream_frames_dropped_total{branch=…}`, `camstream_uptime_seconds`, … (README, Metrics).

use std::fmt::{Display, Write as _};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::status::Status;

/// Longest request head read.
const MAX_HEAD: usize = 4096;
/// Longest wait for the next bytes of a request, and for the whole head.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 8;
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The status the main loop last published.
pub type Snapshot = Arc<Mutex<Option<Status>>>;

/// Serves `snapshot` on `bind` from a thread of its own; while the address cannot be had (a
/// previous instance still holds it), binding is retried every 10 s.
pub fn spawn(bind: SocketAddr, snapshot: Snapshot) -> std::io::Result<()> {
    if !bind.ip().is_loopback() {
        log::warn!(
            "metrics: listening on {bind}, not loopback: whoever reaches it reads the device's metrics (no authentication)"
        );
    }
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let listener = loop {
                match TcpListener::bind(bind) {
                    Ok(l) => break l,
                    Err(e) => {
                        log::error!("metrics: cannot listen on {bind}: {e}; retrying in 10 s");
                        std::thread::sleep(Duration::from_secs(10));
                    }
                }
            };
            log::info!("metrics: serving http://{bind}/metrics");
            let busy = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors or the like: do not spin.
                        log::debug!("metrics: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (b, snap) = (busy.clone(), snapshot.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        handle(conn, &snap);
                        b.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(())
}

/// Why a request's head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// Closed or silent before sending anything: nothing to answer.
    Nothing,
    TooLarge,
    Timeout,
    /// Closed in the middle of its head.
    Cut,
}

/// Reads up to the blank line that ends a request's head.
fn read_head(conn: &mut TcpStream) -> Result<Vec<u8>, Unread> {
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let left = HEAD_DEADLINE.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(Unread::Timeout);
        }
        let _ = conn.set_read_timeout(Some(left.min(READ_TIMEOUT)));
        match conn.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(Unread::Nothing),
            Ok(0) => return Err(Unread::Cut),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) if buf.is_empty() => return Err(Unread::Nothing),
            Err(_) => return Err(Unread::Timeout),
        }
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(Unread::TooLarge);
        }
    }
}

/// Where the head ends (after "\r\n\r\n", or a bare "\n\n"), if it does within `MAX_HEAD`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_HEAD + 4);
    (0..limit).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// What a request asks for: Ok(true) for GET /metrics, Ok(false) for HEAD /metrics, else the
/// error status.
fn route(head: &[u8]) -> Result<bool, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Err(400);
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Err(405),
    };
    if target.split('?').next() != Some("/metrics") {
        return Err(404);
    }
    Ok(body)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

fn handle(mut conn: TcpStream, snapshot: &Snapshot) {
    let _ = conn.set_write_timeout(Some(READ_TIMEOUT));
    let routed = match read_head(&mut conn) {
        Ok(head) => route(&head),
        Err(Unread::Nothing) => return,
        Err(Unread::TooLarge) => Err(431),
        Err(Unread::Timeout) => Err(408),
        Err(Unread::Cut) => Err(400),
    };
    let (code, body, send_body) = match routed {
        Ok(send_body) => match snapshot.lock().ok().and_then(|s| s.as_ref().map(render)) {
            Some(text) => (200, text, send_body),
            None => (503, "not ready\n".to_string(), send_body),
        },
        Err(code) => (code, format!("{}\n", reason(code)), true),
    };
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reason(code),
        if code == 200 { CONTENT_TYPE } else { "text/plain; charset=utf-8" },
        body.len()
    );
    if code == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if send_body {
        out.extend_from_slice(body.as_bytes());
    }
    if conn.write_all(&out).is_err() {
        return;
    }
    let _ = conn.shutdown(Shutdown::Write);
    if code != 200 {
        // What the client still sends (the rest of an oversized request) is read and thrown
        // away for a while, so that closing does not reset the connection before the client
        // has read the answer.
        let t0 = Instant::now();
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
        while t0.elapsed() < READ_TIMEOUT && drained < 1 << 20 {
            match conn.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

/// The exposition text.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

/// The metrics of a status, in the text exposition format.
pub fn render(s: &Status) -> String {
    let mut m = Exposition(String::new());
    m.family(
        "camstream_info",
        "gauge",
        "The daemon's version, device id, board profile and encoder.",
    );
    m.sample(
        "camstream_info",
        &[
            ("version", s.version.as_str()),
            ("device", s.device.as_str()),
            ("profile", s.profile.as_str()),
            ("encoder", s.encoder.as_deref().unwrap_or("")),
        ],
        1,
    );
    m.one(
        "camstream_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        s.uptime_s,
    );
    m.family(
        "camstream_frames_total",
        "counter",
        "Frames that entered each branch.",
    );
    for (branch, f) in &s.branches {
        m.sample(
            "camstream_frames_total",
            &[("branch", branch.as_str())],
            f.frames,
        );
    }
    m.family(
        "camstream_frames_dropped_total",
        "counter",
        "Frames each branch's leaky queue dropped (the camera's: frames it lost).",
    );
    for (branch, f) in &s.branches {
        m.sample(
            "camstream_frames_dropped_total",
            &[("branch", branch.as_str())],
            f.dropped,
        );
    }
    m.one(
        "camstream_encoder_bitrate_bits_per_second",
        "gauge",
        "The encoder's configured target bitrate.",
        s.bitrate_kbps * 1000,
    );
    m.one(
        "camstream_camera_running",
        "gauge",
        "1 while the camera streams.",
        flag(s.camera.running),
    );
    if let Some(fps) = s.camera.fps {
        m.one(
            "camstream_camera_fps",
            "gauge",
            "The camera's negotiated frame rate.",
            fps,
        );
    }
    m.one(
        "camstream_recording_enabled",
        "gauge",
        "1 when recording is enabled.",
        flag(s.recording.enabled),
    );
    m.one(
        "camstream_recording_attached",
        "gauge",
        "1 while recording writes to the card.",
        flag(s.recording.attached),
    );
    if let Some(n) = s.recording.files {
        m.one(
            "camstream_recording_files",
            "gauge",
            "Recordings on the card.",
            n,
        );
    }
    if let Some(b) = s.recording.bytes {
        m.one(
            "camstream_recording_bytes",
            "gauge",
            "Bytes of recordings on the card.",
            b,
        );
    }
    if let Some(t) = s.recording.oldest_start_s {
        m.one(
            "camstream_recording_oldest_timestamp_seconds",
            "gauge",
            "Start of the oldest recording (Unix time): the retention horizon.",
            t,
        );
    }
    if let Some(d) = &s.disk {
        m.one(
            "camstream_disk_size_bytes",
            "gauge",
            "Size of the recording filesystem.",
            d.size_bytes,
        );
        m.one(
            "camstream_disk_used_bytes",
            "gauge",
            "Bytes used on the recording filesystem.",
            d.used_bytes,
        );
        m.one(
            "camstream_disk_free_bytes",
            "gauge",
            "Bytes free for the daemon on the recording filesystem.",
            d.free_bytes,
        );
    }
    m.one(
        "camstream_clock_synced",
        "gauge",
        "1 when the clock is synchronised.",
        flag(s.clock_synced),
    );
    if let Some(t) = s.temperature_c {
        m.one(
            "camstream_temperature_celsius",
            "gauge",
            "The warmest thermal zone.",
            t,
        );
    }
    if let Some(n) = &s.network {
        m.family(
            "camstream_network_info",
            "gauge",
            "The interface of the default route and its type.",
        );
        m.sample(
            "camstream_network_info",
            &[
                ("interface", n.interface.as_str()),
                ("type", n.kind.as_str()),
            ],
            1,
        );
        if let Some(dbm) = n.wifi.as_ref().and_then(|w| w.signal_dbm) {
            m.one(
                "camstream_wifi_signal_dbm",
                "gauge",
                "Wi-Fi signal level.",
                dbm,
            );
        }
        if let Some(p) = n.modem.as_ref().and_then(|m| m.signal_percent) {
            m.one(
                "camstream_modem_signal_percent",
                "gauge",
                "Cellular signal quality (ModemManager).",
                p,
            );
        }
    }
    m.one(
        "camstream_uplink_attached",
        "gauge",
        "1 while the uplink branch is attached.",
        flag(s.uplink.attached),
    );
    m.one(
        "camstream_uplink_live",
        "gauge",
        "1 while the media server takes the stream and viewers have been told where to play.",
        flag(s.uplink.live),
    );
    if let Some(l) = &s.uplink.link {
        m.one(
            "camstream_uplink_bitrate_kbps",
            "gauge",
            "Bitrate the uplink asks of the encoder now (it follows the link).",
            l.bitrate_kbps,
        );
        m.one(
            "camstream_uplink_carried_kbps",
            "gauge",
            "What the uplink's link carried over the last 2 s.",
            l.carried_kbps,
        );
        m.one(
            "camstream_uplink_backlog_ms",
            "gauge",
            "Video waiting to be sent on the uplink.",
            l.backlog_ms,
        );
        m.one(
            "camstream_uplink_rtt_ms",
            "gauge",
            "Round-trip time of the uplink's TCP connection.",
            l.rtt_ms,
        );
    }
    m.one(
        "camstream_viewers",
        "gauge",
        "Remote viewers whose lease runs.",
        s.uplink.viewers,
    );
    if let Some(n) = s.rtsp.sessions {
        m.one(
            "camstream_rtsp_sessions",
            "gauge",
            "RTSP sessions of the local server.",
            n,
        );
    }
    if let Some(n) = s.rtsp.clients {
        m.one(
            "camstream_rtsp_clients",
            "gauge",
            "Connections to the local RTSP server.",
            n,
        );
    }
    m.family(
        "camstream_log_messages_total",
        "counter",
        "Warnings and errors logged.",
    );
    m.sample(
        "camstream_log_messages_total",
        &[("level", "warning")],
        s.logged.warnings,
    );
    m.sample(
        "camstream_log_messages_total",
        &[("level", "error")],
        s.logged.errors,
    );
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::BranchFrames;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(true));
        assert_eq!(route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"), Ok(false));
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Err(404));
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Err(400));
        assert_eq!(route(b"GET  /metrics HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Err(400));
        assert_eq!(route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn exposition_names_labels_and_escapes() {
        let mut s = Status {
            version: "0.1.0".into(),
            device: "cam\"1".into(),
            ..Status::default()
        };
        s.branches.insert(
            "recording".into(),
            BranchFrames {
                frames: 42,
                dropped: 3,
            },
        );
        let text = render(&s);
        assert!(
            text.contains("# TYPE camstream_frames_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("camstream_frames_total{branch=\"recording\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("camstream_frames_dropped_total{branch=\"recording\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("device=\"cam\\\"1\""), "{text}");
        assert!(text.contains("camstream_uptime_seconds 0\n"), "{text}");
        // Every sample line is `name{labels} value` after its family's TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
