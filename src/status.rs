//! The device's status: one JSON object that answers a viewer's `status` (through the relay)
//! and feeds the Prometheus metrics (`metrics.rs`).
//!
//! It comes in two halves. What only the main loop knows (the graph: the encoder in use, the
//! camera's negotiated caps, frames per branch, whether recording and the uplink are attached,
//! the viewers) is read on the main loop when asked: microseconds, and nothing there blocks.
//! What comes from the system and may block (statvfs on a dying card, the walk of the
//! recordings, ModemManager, sensors behind slow buses) is gathered by a thread of its own every
//! few seconds, and only its last result is read: the main loop never waits for the card or a
//! modem. `system_checked_s_ago` says how old that half is (a card that hangs shows here).
//!
//! Nothing in it is a secret, since on a plain relay every member of the room reads it: no
//! token, no uplink URL or path, and logged problems pass through `redact`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use serde::Serialize;

use crate::config::{Config, SourceKind};
use crate::drops::Drops;
use crate::recording::{naming, retention};

/// How often the system half is refreshed.
const REFRESH: Duration = Duration::from_secs(2);
/// How often the recordings on the card are walked again once some were found (a walk reads
/// every directory of the recording tree; retention changes the oldest file only at a segment).
const WALK_EVERY: Duration = Duration::from_secs(30);
/// How often ModemManager is asked, and how long it may take.
const MODEM_EVERY: Duration = Duration::from_secs(30);
const MODEM_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest logged message kept in a status.
const MAX_MESSAGE: usize = 240;

/// What the daemon reports about itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub version: String,
    pub device: String,
    /// The board profile in use.
    pub profile: String,
    pub uptime_s: u64,
    /// The device's clock (RFC 3339, UTC): how far off it is tells as much as `clock_synced`.
    pub time: String,
    /// The H.264 encoder element in use; null when the camera's own H.264 is passed through.
    pub encoder: Option<String>,
    pub bitrate_kbps: i64,
    pub camera: Camera,
    /// Per branch (`camera`, `encode`, `recording`, `uplink`, `rtsp`, ...): frames that entered
    /// it and frames its leaky queue dropped, since start.
    pub branches: BTreeMap<String, BranchFrames>,
    pub recording: Recording,
    /// The filesystem of the recording directory (of `/` without recording).
    pub disk: Option<Disk>,
    pub clock_synced: bool,
    /// Who says the clock is synchronised: "timesyncd" (`/run/systemd/timesync/synchronized`
    /// exists) or "kernel" (adjtimex does not report TIME_ERROR, as chrony, ntpd and timesyncd
    /// leave it); null when nobody does.
    pub clock_sync_source: Option<String>,
    /// The link of the default route; null without one.
    pub network: Option<Network>,
    /// The warmest thermal zone (`/sys/class/thermal/thermal_zone*/temp`); null without any.
    pub temperature_c: Option<f64>,
    /// The last warnings and errors the daemon logged, oldest first.
    pub last_errors: Vec<Problem>,
    /// How many warnings and errors were logged since start.
    pub logged: Logged,
    pub uplink: UplinkState,
    pub rtsp: RtspState,
    /// Age of the system half (disk, clock, network, temperature, recordings); null before its
    /// first round.
    pub system_checked_s_ago: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Camera {
    /// "v4l2" or "test".
    pub source: String,
    /// The V4L2 node streaming (it may differ from the configured one after a replug).
    pub device: Option<String>,
    pub running: bool,
    /// As negotiated with the camera: "image/jpeg", "video/x-raw YUY2", "video/x-h264", ...
    pub format: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub fps: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BranchFrames {
    pub frames: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Recording {
    pub enabled: bool,
    pub attached: bool,
    pub dir: Option<String>,
    /// From the last walk of the card; null before the first.
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    /// Start of the oldest recording with a known start (RFC 3339, UTC): the retention horizon.
    pub oldest_start: Option<String>,
    /// The same, in seconds since the epoch (for the metrics).
    #[serde(skip)]
    pub oldest_start_s: Option<u64>,
    /// Files written while the clock was unset (no start time).
    pub unsynced_files: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Disk {
    pub path: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// Free for unprivileged writers (what recording can use).
    pub free_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Network {
    pub interface: String,
    /// "ethernet", "wifi", "modem" or "other".
    #[serde(rename = "type")]
    pub kind: String,
    pub wifi: Option<Wifi>,
    pub modem: Option<Modem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Wifi {
    /// From /proc/net/wireless.
    pub signal_dbm: Option<f64>,
    pub link_quality: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Modem {
    /// From ModemManager (`mmcli -J -m any`).
    pub signal_percent: Option<u32>,
    pub operator: Option<String>,
    pub access_technologies: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub time: String,
    /// "warning" or "error".
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Logged {
    pub warnings: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UplinkState {
    /// Remote viewing is enabled (`signal.enabled`).
    pub enabled: bool,
    pub attached: bool,
    /// The media server takes the stream and viewers have been told where to play.
    pub live: bool,
    /// Viewers whose lease runs.
    pub viewers: usize,
    /// While attached, the link as the uplink last measured it (`uplink::adapt`).
    pub link: Option<LinkState>,
}

/// The uplink's link, measured every 100 ms on its TCP connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkState {
    /// The bitrate asked of the encoder now.
    pub bitrate_kbps: u64,
    /// What the link carried over the last 2 s.
    pub carried_kbps: u64,
    /// Video waiting to be sent (the uplink's queue and the socket's unsent bytes).
    pub backlog_ms: u64,
    pub rtt_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RtspState {
    pub enabled: bool,
    pub sessions: Option<u32>,
    pub clients: Option<usize>,
}

/// What the main loop knows, lent for one status.
pub struct Parts<'a> {
    pub cfg: &'a Config,
    pub profile: &'a str,
    pub pipeline: &'a gst::Pipeline,
    pub source: Option<&'a gst::Bin>,
    pub drops: &'a Drops,
    pub recording_attached: bool,
    pub uplink_attached: bool,
    pub uplink_live: bool,
    /// `Uplink::link`: bitrate, carried, backlog, round trip.
    pub uplink_link: Option<[u64; 4]>,
    pub viewers: usize,
    /// (sessions, connected clients) of the RTSP server, when it runs.
    pub rtsp: Option<(u32, usize)>,
}

/// The system half, as last gathered.
#[derive(Debug, Clone, Default)]
struct System {
    checked: Option<Instant>,
    disk: Option<Disk>,
    clock_sync_source: Option<&'static str>,
    network: Option<Network>,
    temperature_c: Option<f64>,
    recordings: Option<Recordings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Recordings {
    files: u64,
    bytes: u64,
    /// Seconds since the epoch.
    oldest_start: Option<u64>,
    unsynced: u64,
}

/// Builds statuses; owns the thread that gathers the system half.
pub struct Reporter {
    started: Instant,
    system: Arc<Mutex<System>>,
    published: Arc<Mutex<Option<Status>>>,
}

impl Reporter {
    /// Starts the gathering thread (it ends with the reporter).
    pub fn start(cfg: &Config) -> Self {
        let system = Arc::new(Mutex::new(System::default()));
        let gather = Gatherer {
            recordings: cfg.recording.enabled.then(|| {
                (
                    PathBuf::from(&cfg.recording.dir),
                    cfg.device.id.as_str().into(),
                )
            }),
            disk: if cfg.recording.enabled {
                PathBuf::from(&cfg.recording.dir)
            } else {
                PathBuf::from("/")
            },
            last_walk: None,
            last_modem: None,
            modem: None,
        };
        let weak = Arc::downgrade(&system);
        if let Err(e) = std::thread::Builder::new()
            .name("status".into())
            .spawn(move || gather.run(weak))
        {
            log::warn!(
                "status: cannot start its thread ({e}): disk, network and recordings unknown"
            );
        }
        Self {
            started: Instant::now(),
            system,
            published: Arc::default(),
        }
    }

    /// The status now. Main-loop thread: reads the graph, and the system half as last gathered.
    pub fn status(&self, p: &Parts) -> Status {
        let cfg = p.cfg;
        let system = self.system.lock().map(|s| s.clone()).unwrap_or_default();
        let recordings = system.recordings;
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            device: cfg.device.id.as_str().into(),
            profile: p.profile.into(),
            uptime_s: self.started.elapsed().as_secs(),
            time: rfc3339_ms(SystemTime::now()),
            encoder: encoder_in_use(p.pipeline),
            bitrate_kbps: cfg.encoder.bitrate_kbps.get(),
            camera: camera(cfg, p.source),
            branches: p
                .drops
                .totals()
                .into_iter()
                .map(|(name, frames, dropped)| (name, BranchFrames { frames, dropped }))
                .collect(),
            recording: Recording {
                enabled: cfg.recording.enabled,
                attached: p.recording_attached,
                dir: cfg.recording.enabled.then(|| cfg.recording.dir.clone()),
                files: recordings.map(|r| r.files),
                bytes: recordings.map(|r| r.bytes),
                oldest_start: recordings.and_then(|r| r.oldest_start).map(naming::rfc3339),
                oldest_start_s: recordings.and_then(|r| r.oldest_start),
                unsynced_files: recordings.map(|r| r.unsynced),
            },
            disk: system.disk,
            clock_synced: system.clock_sync_source.is_some(),
            clock_sync_source: system.clock_sync_source.map(String::from),
            network: system.network,
            temperature_c: system.temperature_c,
            last_errors: crate::logging::recent_problems()
                .into_iter()
                .map(|(t, level, message)| Problem {
                    time: rfc3339_ms(t),
                    level: if level == log::Level::Error {
                        "error"
                    } else {
                        "warning"
                    }
                    .into(),
                    message: redact(&message),
                })
                .collect(),
            logged: {
                let (warnings, errors) = crate::logging::problem_counts();
                Logged { warnings, errors }
            },
            uplink: UplinkState {
                enabled: cfg.signal.enabled,
                attached: p.uplink_attached,
                live: p.uplink_live,
                viewers: p.viewers,
                link: p.uplink_link.map(|[b, c, q, r]| LinkState {
                    bitrate_kbps: b,
                    carried_kbps: c,
                    backlog_ms: q,
                    rtt_ms: r,
                }),
            },
            rtsp: RtspState {
                enabled: cfg.rtsp.enabled,
                sessions: p.rtsp.map(|r| r.0),
                clients: p.rtsp.map(|r| r.1),
            },
            system_checked_s_ago: system.checked.map(|t| t.elapsed().as_secs()),
        }
    }

    /// Makes `status` what the metrics endpoint serves. Main-loop thread.
    pub fn publish(&self, status: Status) {
        if let Ok(mut p) = self.published.lock() {
            *p = Some(status);
        }
    }

    /// The last published status, shared with the metrics thread.
    pub fn published(&self) -> Arc<Mutex<Option<Status>>> {
        self.published.clone()
    }
}

/// The factory of the element named "encoder" in the "encode" bin.
fn encoder_in_use(pipeline: &gst::Pipeline) -> Option<String> {
    let bin = pipeline.by_name("encode")?.downcast::<gst::Bin>().ok()?;
    Some(bin.by_name("encoder")?.factory()?.name().to_string())
}

fn camera(cfg: &Config, source: Option<&gst::Bin>) -> Camera {
    let mut c = Camera {
        source: match cfg.camera.source {
            SourceKind::V4l2 => "v4l2",
            SourceKind::Test => "test",
        }
        .into(),
        running: source.is_some(),
        ..Camera::default()
    };
    // The source bin's first element: the one without a sink pad.
    let Some(element) = source.and_then(|bin| {
        bin.iterate_recurse()
            .into_iter()
            .flatten()
            .find(|e| e.sink_pads().is_empty() && !e.src_pads().is_empty())
    }) else {
        return c;
    };
    if element.factory().is_some_and(|f| f.name() == "v4l2src") {
        c.device = element.property_value("device").get::<String>().ok();
    }
    let caps = element.static_pad("src").and_then(|p| p.current_caps());
    if let Some(s) = caps.as_ref().and_then(|c| c.structure(0)) {
        c.format = Some(match s.get::<&str>("format") {
            Ok(f) => format!("{} {f}", s.name()),
            Err(_) => s.name().to_string(),
        });
        c.width = s.get::<i32>("width").ok();
        c.height = s.get::<i32>("height").ok();
        c.fps = s
            .get::<gst::Fraction>("framerate")
            .ok()
            .filter(|f| f.denom() > 0 && f.numer() > 0)
            .map(|f| (f.numer() as f64 / f.denom() as f64 * 100.0).round() / 100.0);
    }
    c
}

/// RFC 3339 UTC with milliseconds.
fn rfc3339_ms(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = naming::rfc3339(d.as_secs());
    format!("{}.{:03}Z", s.trim_end_matches('Z'), d.subsec_millis())
}

/// What a logged line may tell a viewer: URLs keep their scheme and host only (no credentials;
/// no path, which for the uplink is the session's key), long runs of hex digits (path ids,
/// keys, signatures) are cut out, and the line is cut at `MAX_MESSAGE` characters.
pub fn redact(msg: &str) -> String {
    let chars: Vec<char> = msg.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let stop =
        |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '(' | '<' | '>' | ',' | ';');
    while i < chars.len() {
        // A URL: "scheme://": keep scheme and host.
        if chars[i..].starts_with(&[':', '/', '/']) {
            let mut start = out.len();
            // The scheme is already in `out`: letters, digits, '+', '-', '.'.
            for (pos, c) in out.char_indices().rev() {
                if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.') {
                    start = pos;
                } else {
                    break;
                }
            }
            if start < out.len() {
                let mut j = i + 3;
                let mut authority = String::new();
                while j < chars.len() && !stop(chars[j]) && chars[j] != '/' && chars[j] != '?' {
                    authority.push(chars[j]);
                    j += 1;
                }
                let host = authority.rsplit('@').next().unwrap_or("");
                out.push_str("://");
                out.push_str(host);
                let rest_start = j;
                while j < chars.len() && !stop(chars[j]) {
                    j += 1;
                }
                if j > rest_start {
                    out.push_str("/…");
                }
                i = j;
                continue;
            }
        }
        // A run of 24 or more hex digits.
        if chars[i].is_ascii_hexdigit() {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_hexdigit() {
                j += 1;
            }
            if j - i >= 24 {
                out.push('…');
            } else {
                out.extend(&chars[i..j]);
            }
            i = j;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    if out.chars().count() > MAX_MESSAGE {
        out = out.chars().take(MAX_MESSAGE - 1).collect();
        out.push('…');
    }
    out
}

/// The gathering thread's state.
struct Gatherer {
    /// (recording directory, device id) when recording is enabled.
    recordings: Option<(PathBuf, String)>,
    /// Where the disk is measured.
    disk: PathBuf,
    last_walk: Option<Instant>,
    last_modem: Option<Instant>,
    modem: Option<Modem>,
}

impl Gatherer {
    fn run(mut self, system: Weak<Mutex<System>>) {
        loop {
            let Some(shared) = system.upgrade() else {
                return;
            };
            let previous = shared.lock().map(|s| s.clone()).unwrap_or_default();
            // Not held while gathering: the reporter may go meanwhile.
            drop(shared);
            let next = self.gather(previous);
            let Some(shared) = system.upgrade() else {
                return;
            };
            if let Ok(mut s) = shared.lock() {
                *s = next;
            }
            drop(shared);
            std::thread::sleep(REFRESH);
        }
    }

    /// One round. Blocks as long as the card or the modem make it.
    fn gather(&mut self, previous: System) -> System {
        let recordings = match &self.recordings {
            Some((dir, device)) => {
                // Walk while nothing was found yet (cheap: the tree is empty), then now and then.
                let due = previous.recordings.is_none_or(|r| r.files == 0)
                    || self.last_walk.is_none_or(|t| t.elapsed() >= WALK_EVERY);
                if due {
                    self.last_walk = Some(Instant::now());
                    Some(walk(dir, device))
                } else {
                    previous.recordings
                }
            }
            None => None,
        };
        let mut network = default_route(&read("/proc/net/route")).map(|iface| {
            let wireless = read("/proc/net/wireless");
            let kind = link_kind(&iface, &wireless);
            Network {
                wifi: (kind == "wifi").then(|| wifi_signal(&iface, &wireless)),
                interface: iface,
                kind: kind.into(),
                modem: None,
            }
        });
        if let Some(n) = network.as_mut().filter(|n| n.kind == "modem") {
            if self.last_modem.is_none_or(|t| t.elapsed() >= MODEM_EVERY) {
                self.last_modem = Some(Instant::now());
                self.modem = modem();
            }
            n.modem = self.modem.clone();
        }
        System {
            checked: Some(Instant::now()),
            disk: disk(&self.disk),
            clock_sync_source: clock_sync_source(),
            network,
            temperature_c: temperature(Path::new("/sys/class/thermal")),
            recordings,
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn walk(dir: &Path, device: &str) -> Recordings {
    let all = retention::scan(dir, device);
    Recordings {
        files: all.len() as u64,
        bytes: all.iter().map(|r| r.size).sum(),
        oldest_start: all.iter().filter_map(|r| r.name.start).min(),
        unsynced: all.iter().filter(|r| r.name.start.is_none()).count() as u64,
    }
}

/// statvfs of `path`, or of its nearest existing ancestor (the recording directory is made
/// only when recording starts).
fn disk(path: &Path) -> Option<Disk> {
    path.ancestors().find_map(|dir| {
        let (size, free, avail) = statvfs_bytes(dir)?;
        Some(Disk {
            path: dir.display().to_string(),
            size_bytes: size,
            used_bytes: size.saturating_sub(free),
            free_bytes: avail,
        })
    })
}

/// (size, free, free for unprivileged writers) in bytes of the filesystem holding `dir`.
fn statvfs_bytes(dir: &Path) -> Option<(u64, u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    // The widths of these fields differ between targets.
    let frag = s.fragment_size() as u64;
    Some((
        s.blocks() as u64 * frag,
        s.blocks_free() as u64 * frag,
        s.blocks_available() as u64 * frag,
    ))
}

/// Who says the clock is synchronised, if anyone: systemd-timesyncd's flag file, else the
/// kernel's NTP state (adjtimex reports TIME_ERROR while unsynchronised).
fn clock_sync_source() -> Option<&'static str> {
    if Path::new("/run/systemd/timesync/synchronized").exists() {
        return Some("timesyncd");
    }
    // SAFETY: adjtimex with modes 0 only reads the kernel's state into the zeroed struct.
    let state = unsafe {
        let mut tx: nix::libc::timex = std::mem::zeroed();
        nix::libc::adjtimex(&mut tx)
    };
    (state >= 0 && state != nix::libc::TIME_ERROR).then_some("kernel")
}

/// The interface of the default route with the lowest metric, from /proc/net/route.
fn default_route(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...; flag 1: up.
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            if flags & 1 == 0 || *f.get(1)? != "00000000" || *f.get(7)? != "00000000" {
                return None;
            }
            Some((f.get(6)?.parse::<u64>().ok()?, f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// "wifi" (listed in /proc/net/wireless or with a wireless directory in sysfs), "modem"
/// (wwan*, ppp*, usb*: cellular modems and their USB network functions), "ethernet" (eth*,
/// en*), else "other".
fn link_kind(iface: &str, wireless: &str) -> &'static str {
    let listed = wireless
        .lines()
        .skip(2)
        .any(|l| l.trim_start().split(':').next() == Some(iface));
    if listed || Path::new(&format!("/sys/class/net/{iface}/wireless")).exists() {
        "wifi"
    } else if ["wwan", "ppp", "usb"].iter().any(|p| iface.starts_with(p)) {
        "modem"
    } else if iface.starts_with("eth") || iface.starts_with("en") {
        "ethernet"
    } else {
        "other"
    }
}

/// Link quality and signal level of `iface` from /proc/net/wireless
/// (` wlan0: 0000   70.  -40.  -256 ...`).
fn wifi_signal(iface: &str, wireless: &str) -> Wifi {
    let Some(fields) = wireless.lines().skip(2).find_map(|l| {
        let (name, rest) = l.trim_start().split_once(':')?;
        (name == iface).then(|| rest.split_whitespace().collect::<Vec<_>>())
    }) else {
        return Wifi::default();
    };
    let num = |i: usize| -> Option<f64> { fields.get(i)?.trim_end_matches('.').parse().ok() };
    Wifi {
        link_quality: num(1),
        signal_dbm: num(2).filter(|l| *l < 0.0),
    }
}

/// The first modem as ModemManager sees it, when `mmcli` is installed and answers in time.
fn modem() -> Option<Modem> {
    let mmcli = std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("mmcli"))
        .find(|p| p.is_file())?;
    let mut child = std::process::Command::new(mmcli)
        .args(["-J", "-m", "any"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() < MODEM_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                log::debug!("status: mmcli did not answer within {MODEM_TIMEOUT:?}");
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    parse_mmcli(&out)
}

/// Signal, operator and access technologies from `mmcli -J -m any`.
fn parse_mmcli(json: &str) -> Option<Modem> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let m = v.get("modem")?;
    let text = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && *s != "--")
            .map(str::to_string)
    };
    Some(Modem {
        signal_percent: text(m.pointer("/generic/signal-quality/value"))
            .and_then(|s| s.parse().ok()),
        operator: text(m.pointer("/3gpp/operator-name")),
        access_technologies: m
            .pointer("/generic/access-technologies")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The warmest of the thermal zones under `dir`, in °C.
fn temperature(dir: &Path) -> Option<f64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            let t: i64 = std::fs::read_to_string(e.path().join("temp"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let c = t as f64 / 1000.0;
            // A zone without a sensor reads 0 or nonsense.
            (-60.0..200.0).contains(&c).then_some(c)
        })
        .max_by(f64::total_cmp)
        .map(|c| (c * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_keeps_hosts_and_drops_credentials_paths_and_ids() {
        let r = redact(
            "uplink: rtspclientsink0 failed: Could not open rtsp://cam:pa55@media.example.com:8554/channel/0123456789abcdef0123456789abcdef (x)",
        );
        assert_eq!(
            r,
            "uplink: rtspclientsink0 failed: Could not open rtsp://media.example.com:8554/… (x)"
        );
        assert_eq!(
            redact("token cs1.1795896916.alice.0123456789abcdef0123456789abcdef0123456789abcdef"),
            "token cs1.1795896916.alice.…"
        );
        assert_eq!(redact("https://h/"), "https://h/…");
        assert_eq!(
            redact("no url: here, 1795896916"),
            "no url: here, 1795896916"
        );
        assert_eq!(redact(&"x".repeat(500)).chars().count(), MAX_MESSAGE);
    }

    #[test]
    fn default_route_lowest_metric_up_only() {
        let table =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth1\t00000000\t0100A8C0\t0002\t0\t0\t10\t00000000\t0\t0\t0\n\
            eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route(table).as_deref(), Some("eth0"));
        assert_eq!(default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn link_kinds_and_wifi_signal() {
        let wireless =
            "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n \
            face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n \
            wlan0: 0000   70.  -40.  -256        0      0      0      0      0        0\n";
        assert_eq!(link_kind("wlan0", wireless), "wifi");
        assert_eq!(link_kind("wwan0", ""), "modem");
        assert_eq!(link_kind("ppp0", ""), "modem");
        assert_eq!(link_kind("eth0", ""), "ethernet");
        assert_eq!(link_kind("end0", ""), "ethernet");
        assert_eq!(link_kind("tun0", ""), "other");
        assert_eq!(
            wifi_signal("wlan0", wireless),
            Wifi {
                signal_dbm: Some(-40.0),
                link_quality: Some(70.0)
            }
        );
        assert_eq!(wifi_signal("wlan1", wireless), Wifi::default());
    }

    #[test]
    fn mmcli_signal_and_operator() {
        let json = r#"{"modem":{"3gpp":{"operator-name":"Example Mobile","registration-state":"home"},
            "generic":{"access-technologies":["lte"],"signal-quality":{"recent":"yes","value":"67"}}}}"#;
        assert_eq!(
            parse_mmcli(json),
            Some(Modem {
                signal_percent: Some(67),
                operator: Some("Example Mobile".into()),
                access_technologies: vec!["lte".into()],
            })
        );
        assert_eq!(
            parse_mmcli(r#"{"modem":{"3gpp":{"operator-name":"--"}}}"#),
            Some(Modem::default())
        );
        assert_eq!(parse_mmcli("not json"), None);
    }

    #[test]
    fn warmest_thermal_zone() {
        let dir = std::env::temp_dir().join(format!("camstream-thermal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (zone, temp) in [
            ("thermal_zone0", "45123\n"),
            ("thermal_zone1", "51234\n"),
            ("cooling_device0", "99000\n"),
        ] {
            std::fs::create_dir_all(dir.join(zone)).unwrap();
            std::fs::write(dir.join(zone).join("temp"), temp).unwrap();
        }
        assert_eq!(temperature(&dir), Some(51.2));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(temperature(&dir), None);
    }

    #[test]
    fn milliseconds_in_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_896_916_042);
        assert_eq!(rfc3339_ms(t), "2026-11-28T20:15:16.042Z");
    }
}
