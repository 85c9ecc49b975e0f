//! The daemon's configuration: one TOML file, every key optional with a documented default
//! (`config/camstream.toml`), plus `--set key=value` overrides from the command line.
//!
//! Errors name the key and, for the file, the line: a typo in a camera appliance's config must not
//! turn into a silently ignored setting.

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Marks an error as a configuration the device cannot run (a bad key, an unknown profile, an
/// element the board's image lacks): retrying cannot help, so the daemon exits 2 and the service
/// manager does not restart it.
#[derive(Debug)]
pub struct ConfigError;

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the device cannot run this configuration")
    }
}

impl std::error::Error for ConfigError {}

/// An integer that must lie in `MIN..=MAX`; checked while deserialising so that the TOML error
/// carries the line of the offending value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Ranged<const MIN: i64, const MAX: i64>(i64);

impl<const MIN: i64, const MAX: i64> Ranged<MIN, MAX> {
    pub const fn new_const(v: i64) -> Self {
        assert!(v >= MIN && v <= MAX);
        Self(v)
    }
    pub fn get(self) -> i64 {
        self.0
    }
    pub fn u32(self) -> u32 {
        self.0 as u32
    }
}

impl<const MIN: i64, const MAX: i64> TryFrom<i64> for Ranged<MIN, MAX> {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("must be between {MIN} and {MAX}, got {v}"))
        }
    }
}

impl<const MIN: i64, const MAX: i64> From<Ranged<MIN, MAX>> for i64 {
    fn from(v: Ranged<MIN, MAX>) -> i64 {
        v.0
    }
}

impl<const MIN: i64, const MAX: i64> fmt::Display for Ranged<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A string restricted to characters that are safe in ids, file names and URL paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ident(String);

impl Ident {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Ident {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!("must be 1 to 64 characters, got {}", s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "may only hold letters, digits, '-' and '_', found {c:?}"
            ));
        }
        Ok(Self(s))
    }
}

impl From<Ident> for String {
    fn from(v: Ident) -> String {
        v.0
    }
}

/// An RTSP mount path such as `/live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MountPath(String);

impl MountPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MountPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.starts_with('/')
            && s.len() > 1
            && s.len() <= 128
            && !s.ends_with('/')
            && !s.contains("//")
            && s[1..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '/' || c == '.');
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "must look like \"/live\" (a '/' then letters, digits, '-', '_', '.', '/'), got {s:?}"
            ))
        }
    }
}

impl From<MountPath> for String {
    fn from(v: MountPath) -> String {
        v.0
    }
}

/// A TOML value that may be written as a number or as a string with a unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumberOrText {
    Number(i64),
    Text(String),
}

/// Parses "512", "64K", "200M", "8G", "1T" (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?} (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 500M or 8G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A number of bytes: an integer or a string such as "8G". 0 means no limit where allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NumberOrText", into = "NumberOrText")]
pub struct ByteSize(pub u64);

impl TryFrom<NumberOrText> for ByteSize {
    type Error = String;
    fn try_from(v: NumberOrText) -> Result<Self, String> {
        match v {
            NumberOrText::Number(n) if n >= 0 => Ok(Self(n as u64)),
            NumberOrText::Number(n) => Err(format!("must not be negative, got {n}")),
            NumberOrText::Text(s) => parse_bytes(&s).map(Self),
        }
    }
}

impl From<ByteSize> for NumberOrText {
    fn from(v: ByteSize) -> Self {
        NumberOrText::Number(v.0 as i64)
    }
}

/// Free space to keep: bytes ("2G", 2147483648) or a share of the filesystem ("10%").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NumberOrText", into = "NumberOrText")]
pub enum FreeSpace {
    Bytes(u64),
    Percent(f64),
}

impl FreeSpace {
    /// Bytes to keep free on a filesystem of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl TryFrom<NumberOrText> for FreeSpace {
    type Error = String;
    fn try_from(v: NumberOrText) -> Result<Self, String> {
        match v {
            NumberOrText::Text(s) if s.trim().ends_with('%') => {
                let p: f64 = s
                    .trim()
                    .trim_end_matches('%')
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?} is not a percentage such as \"10%\""))?;
                if (0.0..=90.0).contains(&p) {
                    Ok(Self::Percent(p))
                } else {
                    Err(format!("must be between 0% and 90%, got {s:?}"))
                }
            }
            other => ByteSize::try_from(other).map(|b| Self::Bytes(b.0)),
        }
    }
}

impl From<FreeSpace> for NumberOrText {
    fn from(v: FreeSpace) -> Self {
        match v {
            FreeSpace::Bytes(b) => NumberOrText::Number(b as i64),
            FreeSpace::Percent(p) => NumberOrText::Text(format!("{p}%")),
        }
    }
}

/// A duration in seconds: an integer or a string such as "90s", "45m", "12h", "30d".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NumberOrText", into = "NumberOrText")]
pub struct Seconds(pub u64);

impl TryFrom<NumberOrText> for Seconds {
    type Error = String;
    fn try_from(v: NumberOrText) -> Result<Self, String> {
        match v {
            NumberOrText::Number(n) if n >= 0 => Ok(Self(n as u64)),
            NumberOrText::Number(n) => Err(format!("must not be negative, got {n}")),
            NumberOrText::Text(s) => {
                let t = s.trim();
                let (digits, mult) = match t.chars().last() {
                    Some('s') => (&t[..t.len() - 1], 1),
                    Some('m') => (&t[..t.len() - 1], 60),
                    Some('h') => (&t[..t.len() - 1], 3600),
                    Some('d') => (&t[..t.len() - 1], 86400),
                    _ => (t, 1),
                };
                digits
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_mul(mult))
                    .map(Self)
                    .ok_or_else(|| format!("{s:?} is not a duration such as \"30d\" or \"12h\""))
            }
        }
    }
}

impl From<Seconds> for NumberOrText {
    fn from(v: Seconds) -> Self {
        NumberOrText::Number(v.0 as i64)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub device: DeviceConfig,
    pub camera: CameraConfig,
    pub encoder: EncoderConfig,
    pub rtsp: RtspConfig,
    pub display: DisplayConfig,
    pub recording: RecordingConfig,
    pub playback: PlaybackConfig,
    pub signal: SignalConfig,
    pub uplink: UplinkConfig,
    pub pipeline: PipelineConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    pub id: Ident,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            id: Ident("camstream".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    V4l2,
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraFormat {
    Mjpeg,
    Yuyv,
    Nv12,
    H264,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestOverlay {
    /// The wall-clock time as text.
    Clock,
    /// The capture wall-clock time (µs since the epoch) as a QR code, for latency measurement.
    TimestampQr,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    pub source: SourceKind,
    pub device: String,
    pub width: Ranged<16, 7680>,
    pub height: Ranged<16, 4320>,
    pub fps: Ranged<1, 240>,
    pub formats: Vec<CameraFormat>,
    pub h264_passthrough: bool,
    pub test_pattern: String,
    pub test_overlay: TestOverlay,
    pub restart_max_seconds: Ranged<1, 3600>,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::V4l2,
            device: "/dev/video0".into(),
            width: Ranged(1280),
            height: Ranged(720),
            fps: Ranged(30),
            formats: vec![CameraFormat::Mjpeg, CameraFormat::Yuyv, CameraFormat::Nv12],
            h264_passthrough: false,
            test_pattern: "ball".into(),
            test_overlay: TestOverlay::Clock,
            restart_max_seconds: Ranged(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum H264Profile {
    ConstrainedBaseline,
    Baseline,
    Main,
    High,
}

impl H264Profile {
    pub fn caps_name(self) -> &'static str {
        match self {
            Self::ConstrainedBaseline => "constrained-baseline",
            Self::Baseline => "baseline",
            Self::Main => "main",
            Self::High => "high",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// "auto" or a GStreamer element name such as "x264enc".
    pub name: String,
    pub bitrate_kbps: Ranged<64, 100_000>,
    pub keyframe_interval_ms: Ranged<100, 60_000>,
    pub profile: H264Profile,
    pub low_latency: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            name: "auto".into(),
            bitrate_kbps: Ranged(2500),
            keyframe_interval_ms: Ranged(500),
            profile: H264Profile::ConstrainedBaseline,
            low_latency: true,
        }
    }
}

/// `uplink.encode`: where the uplink's H.264 comes from (see `profile::UplinkEncode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkEncodeChoice {
    Auto,
    Shared,
    Own,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    pub enabled: bool,
    pub bind: std::net::IpAddr,
    pub port: Ranged<1, 65535>,
    pub mount: MountPath,
    pub transports: Vec<RtspTransport>,
    pub user: String,
    pub password: String,
    pub max_clients: Ranged<0, 1000>,
    pub queue_buffers: Ranged<1, 1000>,
    /// A session whose client gives no sign of life (a request naming it, an RTCP receiver
    /// report) for this long, plus gst-rtsp-server's 5 s of grace, is torn down.
    pub session_timeout_seconds: Ranged<1, 3600>,
}

impl Default for RtspConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            port: Ranged(8554),
            mount: MountPath("/live".into()),
            transports: vec![RtspTransport::Tcp, RtspTransport::Udp],
            user: String::new(),
            password: String::new(),
            max_clients: Ranged(32),
            queue_buffers: Ranged(60),
            session_timeout_seconds: Ranged(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisplaySink {
    Auto,
    Kms,
    Window,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayConfig {
    pub sink: DisplaySink,
    /// DRM connector id for kmssink; -1 lets kmssink pick the first connected one.
    pub connector: Ranged<-1, 1000>,
    pub retry_max_seconds: Ranged<1, 3600>,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        Self {
            sink: DisplaySink::Auto,
            connector: Ranged(-1),
            retry_max_seconds: Ranged(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    pub enabled: bool,
    pub dir: String,
    pub segment_seconds: Ranged<1, 86_400>,
    pub index_interval_ms: Ranged<100, 10_000>,
    /// How often the file being written is flushed to the card (fdatasync), ms; 0: left to the
    /// kernel's writeback.
    pub sync_interval_ms: Ranged<0, 60_000>,
    pub max_bytes: ByteSize,
    pub min_free: FreeSpace,
    pub max_age: Seconds,
    pub queue_seconds: Ranged<1, 60>,
    pub retry_max_seconds: Ranged<1, 3600>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "/data/recordings".into(),
            segment_seconds: Ranged(60),
            index_interval_ms: Ranged(250),
            sync_interval_ms: Ranged(1000),
            max_bytes: ByteSize(0),
            min_free: FreeSpace::Percent(10.0),
            max_age: Seconds(0),
            queue_seconds: Ranged(5),
            retry_max_seconds: Ranged(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    pub enabled: bool,
    /// Socket.IO server, http(s)://host[:port][/path].
    pub url: String,
    /// When set, a viewer's `auth` must carry it (as a string or `{"token": ...}`).
    pub token: String,
    /// Key for short-lived signed viewer tokens (`camstream token`); empty: none accepted.
    pub viewer_secret: String,
    /// Let any member of the room watch, with neither token (the seed's open devices).
    pub open: bool,
    /// Proves to camstream-signal that this socket is the device (`camstream-signal device-key`).
    pub device_key: String,
    pub lease_seconds: Ranged<1, 3600>,
    pub reconnect_max_seconds: Ranged<1, 600>,
    /// PEM file of the authority that signed the server's certificate, for a private CA;
    /// empty: the system's certificates.
    pub tls_ca_file: String,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            token: String::new(),
            viewer_secret: String::new(),
            open: false,
            device_key: String::new(),
            lease_seconds: Ranged(30),
            reconnect_max_seconds: Ranged(30),
            tls_ca_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Where the stream is pushed while viewers watch; `{path}` is the session's path id.
    pub url: String,
    /// `{random}` (128-bit random, new per session) or a template with `{device}`.
    pub path: String,
    pub user: String,
    pub password: String,
    pub queue_buffers: Ranged<1, 1000>,
    /// Video the uplink may hold back before it drops whole GOPs (the picture's delay bound).
    pub max_delay_ms: Ranged<100, 10_000>,
    /// Follow the link: lower the encoder's bitrate when it narrows, raise it when it clears.
    pub adaptive: bool,
    /// The lowest bitrate the uplink may ask of the encoder it shares with the recording.
    pub min_bitrate_kbps: Ranged<64, 100_000>,
    /// "auto" (the board profile's choice), "shared" or "own".
    pub encode: UplinkEncodeChoice,
    pub retry_max_seconds: Ranged<1, 600>,
    /// For rtsps://: PEM file of the authority that signed the server's certificate;
    /// empty: the system's certificates.
    pub tls_ca_file: String,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            url: "rtsp://127.0.0.1:8554/channel/{path}".into(),
            path: "{random}".into(),
            user: String::new(),
            password: String::new(),
            queue_buffers: Ranged(60),
            max_delay_ms: Ranged(1000),
            adaptive: true,
            min_bitrate_kbps: Ranged(500),
            encode: UplinkEncodeChoice::Auto,
            retry_max_seconds: Ranged(10),
            tls_ca_file: String::new(),
        }
    }
}

/// Recordings played from afar (`play` through the signalling server, pushed like the uplink).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybackConfig {
    /// Playback sessions at once, all viewers together; 0: none.
    pub max_sessions: Ranged<0, 16>,
}

impl Default for PlaybackConfig {
    fn default() -> Self {
        Self {
            max_sessions: Ranged(2),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// "auto" (matched against the board's device-tree model) or a profile name such as "rpi4".
    pub profile: String,
    /// Extra directory searched for profiles before the built-in ones.
    pub profiles_dir: String,
    pub shutdown_timeout_ms: Ranged<100, 60_000>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            profile: "auto".into(),
            profiles_dir: "/etc/camstream/pipelines".into(),
            shutdown_timeout_ms: Ranged(5000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
    /// How often frames dropped by the leaky queues are reported (log and service status).
    pub drops_report_seconds: Ranged<1, 3600>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            drops_report_seconds: Ranged(10),
        }
    }
}

/// Prometheus metrics over HTTP. Off by default, and on loopback by default: they need no
/// credentials, and tell when someone watches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address and port of the HTTP server (`GET /metrics`).
    pub bind: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 9998)),
        }
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Formats a deserialisation error as `FILE:LINE: key `a.b`: message`.
fn describe(origin: &str, text: &str, path: &str, err: &toml::de::Error) -> String {
    let location = match err.span() {
        _ if origin.is_empty() => String::new(),
        Some(span) => format!("{origin}:{}: ", line_of(text, span.start)),
        None => format!("{origin}: "),
    };
    let message = err.message().trim();
    // serde_path_to_error ends the path with an unknown key's name, sometimes twice.
    let key = match message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        Some(field) if path.is_empty() || path == "?" => field.to_string(),
        Some(field) if path.ends_with(&format!(".{field}.{field}")) => {
            path[..path.len() - field.len() - 1].to_string()
        }
        _ => path.to_string(),
    };
    // A generated file (the card's settings, made at boot from camstream.txt) names, at the
    // end of each line, the setting it came from: the user fixes that one, not this file.
    let source = err
        .span()
        .and_then(|span| text[span.start.min(text.len())..].lines().next())
        .and_then(|l| l.rsplit_once("# from "))
        .map(|(_, from)| format!(" (set by {})", from.trim()))
        .unwrap_or_default();
    if key.is_empty() {
        format!("{location}{message}{source}")
    } else {
        format!("{location}key `{key}`: {message}{source}")
    }
}

fn from_toml_text(origin: &str, text: &str) -> Result<Config> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        anyhow!(describe(origin, text, &path, e.inner()))
    })
}

/// Splits `a.b=value` and parses the value as TOML, falling back to a plain string so that
/// `--set device.id=cam01` needs no quoting.
fn parse_override(arg: &str) -> Result<(Vec<String>, toml::Value)> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {arg:?}: expected KEY=VALUE, e.g. rtsp.port=9554"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("--set {arg:?}: bad key {key:?}");
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    };
    Ok((key.split('.').map(String::from).collect(), value))
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (k, v) in layer {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge(b, l),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn apply_override(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<()> {
    let (last, parents) = path.split_last().expect("non-empty key path");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| anyhow!("`{p}` is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

impl Config {
    /// Parses a config document; `origin` names it in errors.
    pub fn from_str_with_origin(origin: &str, text: &str) -> Result<Self> {
        let cfg = from_toml_text(origin, text)?;
        cfg.check().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(cfg)
    }

    /// Loads `path` (which must exist) and applies `--set` overrides in order.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        Self::load_layers(&[path.to_path_buf()], overrides)
    }

    /// Loads config files in order, later ones overriding earlier ones key by key (a device's
    /// site settings over the image's defaults), then `--set` overrides.
    pub fn load_layers(paths: &[std::path::PathBuf], overrides: &[String]) -> Result<Self> {
        let mut table = toml::Table::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            // Each file alone first, so its errors carry its own line numbers.
            from_toml_text(&path.display().to_string(), &text)?;
            let layer: toml::Table =
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
            merge(&mut table, layer);
        }
        let mut cfg = from_toml_text("", &toml::to_string(&table)?)?;
        for arg in overrides {
            let (path, value) = parse_override(arg)?;
            apply_override(&mut table, &path, value).map_err(|e| anyhow!("--set {arg:?}: {e}"))?;
            let merged = toml::to_string(&table)?;
            cfg = from_toml_text("", &merged).map_err(|e| anyhow!("--set {arg:?}: {e}"))?;
        }
        let origin = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        cfg.check().map_err(|e| {
            if overrides.is_empty() {
                anyhow!("{origin}: {e}")
            } else {
                anyhow!("{origin} with --set overrides: {e}")
            }
        })?;
        Ok(cfg)
    }

    /// Cross-key rules that a single value's type cannot express.
    fn check(&self) -> Result<()> {
        if self.rtsp.enabled && self.rtsp.transports.is_empty() {
            bail!("key `rtsp.transports`: must list at least one of \"tcp\", \"udp\"");
        }
        if self.rtsp.user.is_empty() != self.rtsp.password.is_empty() {
            bail!("keys `rtsp.user` and `rtsp.password`: set both or neither");
        }
        if self.recording.enabled && self.recording.dir.trim().is_empty() {
            bail!("key `recording.dir`: must not be empty while recording is enabled");
        }
        if self.signal.enabled {
            let u = self.signal.url.as_str();
            if !(u.starts_with("http://")
                || u.starts_with("https://")
                || u.starts_with("ws://")
                || u.starts_with("wss://"))
            {
                bail!("key `signal.url`: must be an http(s):// or ws(s):// URL when signal.enabled, got {u:?}");
            }
        }
        let sig = &self.signal;
        if sig.open && !(sig.token.is_empty() && sig.viewer_secret.is_empty()) {
            bail!("key `signal.open`: an open device takes no `signal.token` or `signal.viewer_secret`; choose one");
        }
        if !sig.viewer_secret.is_empty() && sig.viewer_secret.len() < 16 {
            bail!("key `signal.viewer_secret`: at least 16 characters (it signs viewer tokens)");
        }
        let up = &self.uplink;
        if !(up.url.starts_with("rtsp://") || up.url.starts_with("rtsps://"))
            || !up.url.contains("{path}")
        {
            bail!("key `uplink.url`: must be an rtsp:// or rtsps:// URL containing {{path}}, got {:?}", up.url);
        }
        let expanded = up.path.replace("{random}", "r").replace("{device}", "d");
        if expanded.is_empty()
            || !expanded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "key `uplink.path`: may hold {{random}}, {{device}}, letters, digits, '-' and '_', got {:?}",
                up.path
            );
        }
        if up.user.is_empty() != up.password.is_empty() {
            bail!("keys `uplink.user` and `uplink.password`: set both or neither");
        }
        if self.metrics.enabled && self.metrics.bind.port() == 0 {
            bail!("key `metrics.bind`: needs a port, e.g. \"127.0.0.1:9998\"");
        }
        if self.camera.formats.is_empty() {
            bail!("key `camera.formats`: must list at least one format");
        }
        if self.camera.width.get() % 2 != 0 || self.camera.height.get() % 2 != 0 {
            bail!("keys `camera.width`/`camera.height`: must be even for 4:2:0 video");
        }
        let name = self.encoder.name.as_str();
        if name != "auto"
            && !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("key `encoder.name`: must be \"auto\" or an element name, got {name:?}");
        }
        Ok(())
    }

    /// The encoder's own keyframe interval, in frames: twice the configured interval at the
    /// configured frame rate. Only a backstop: keyframes are forced by time (`keyframes.rs`),
    /// which holds whatever rate the camera really delivers.
    pub fn keyframe_frames(&self) -> u32 {
        let frames =
            (2 * self.encoder.keyframe_interval_ms.get() * self.camera.fps.get() + 999) / 1000;
        frames.max(1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_all_defaults() {
        let c = Config::from_str_with_origin("t", "").unwrap();
        assert_eq!(c.rtsp.port.get(), 8554);
        assert_eq!(c.rtsp.mount.as_str(), "/live");
        assert_eq!(c.keyframe_frames(), 30);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::from_str_with_origin("f.toml", "[rtsp]\nport = 1\nbogus = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:3: key `rtsp.bogus`"), "{e}");
    }

    #[test]
    fn out_of_range_names_key_and_line() {
        let e = Config::from_str_with_origin("f.toml", "\n[rtsp]\nport = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:3: key `rtsp.port`"), "{e}");
        assert!(e.contains("between 1 and 65535"), "{e}");
    }

    #[test]
    fn sizes_percentages_and_durations() {
        let c = Config::from_str_with_origin(
            "t",
            "[recording]\nmax_bytes = \"2G\"\nmin_free = \"5%\"\nmax_age = \"30d\"\n",
        )
        .unwrap();
        assert_eq!(c.recording.max_bytes.0, 2 << 30);
        assert_eq!(c.recording.min_free.bytes_of(1000), 50);
        assert_eq!(c.recording.max_age.0, 30 * 86400);
        let e = Config::from_str_with_origin("f", "[recording]\nmin_free = \"5 apples\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f:2: key `recording.min_free`"), "{e}");
    }

    #[test]
    fn bad_enum_value_lists_choices() {
        let e = Config::from_str_with_origin("f.toml", "[camera]\nsource = \"usb\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:2: key `camera.source`"), "{e}");
        assert!(e.contains("v4l2"), "{e}");
    }

    #[test]
    fn override_parses_typed_and_bare_values() {
        let dir = std::env::temp_dir().join(format!("camstream-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "[rtsp]\nport = 8554\n").unwrap();
        let c = Config::load(&f, &["rtsp.port=9554".into(), "device.id=cam-01".into()]).unwrap();
        assert_eq!(c.rtsp.port.get(), 9554);
        assert_eq!(c.device.id.as_str(), "cam-01");
        let e = Config::load(&f, &["rtsp.port=nope".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtsp.port"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn metrics_off_and_on_loopback_by_default() {
        let c = Config::from_str_with_origin("t", "").unwrap();
        assert!(!c.metrics.enabled);
        assert_eq!(c.metrics.bind.to_string(), "127.0.0.1:9998");
        let e = Config::from_str_with_origin("f", "[metrics]\nbind = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f:2: key `metrics.bind`"), "{e}");
        let e =
            Config::from_str_with_origin("f", "[metrics]\nenabled = true\nbind = \"[::1]:0\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("key `metrics.bind`: needs a port"), "{e}");
    }
}
