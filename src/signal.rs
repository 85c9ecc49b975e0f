//! The device's side of the Socket.IO protocol (wire-compatible with the seed's servers):
//! on every (re)connect emit `find <device id> [<device key>]` (a reconnected socket has no
//! rooms); a viewer's `auth <token>` lets it in and starts the uplink, its `heartbeatping` is
//! answered with `heartbeatpong` and renews its own lease; `bridge <path>` tells the viewers
//! that were let in where to play once the uplink is live. A viewer let in the same way may
//! ask `status`: the answer, `status <object>` (`status.rs`), is addressed like `heartbeatpong`.
//!
//! Through camstream-signal (a `device_key` is set) every viewer event carries the viewer's
//! socket id as a last argument `{"viewer": id}`, and the device's answers name who they are
//! for (`{"to": id}` or `{"to": [ids]}`): the relay delivers them to those viewers only. Through
//! a plain room relay viewers are anonymous and every member sees everything; then only a
//! heartbeat that carries a valid token renews a lease (or any heartbeat, on an open device).
//!
//! Runs on its own thread with a small tokio runtime. rust_socketio runs handlers one at a time,
//! so they only validate and hand a command to the main loop through a bounded channel.
//!
//! Recordings from afar (`recordings`, `play`, `stop`, `seek`; see `playback`) are let in by the
//! same rules as a heartbeat, checked here (a bad one is answered `error` at once and never
//! reaches the main loop) and answered like `heartbeatpong`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::SignalConfig;
use crate::viewer_token::{Grant, Policy};

/// What the signalling side asks of the media side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A viewer that was let in asks about the recordings: a listing or a playback session.
    /// Checked already; `until` is its lease, as for `Watch`.
    Playback {
        viewer: String,
        until: Instant,
        asked: crate::playback::request::Asked,
    },
    /// A viewer that was let in watches until `until` (its lease, cut short by its token's
    /// expiry): start (or keep) the uplink and tell it the path. `viewer` is its socket id
    /// through camstream-signal, empty for an anonymous viewer of a plain relay. `asked`: it
    /// asked to watch (`auth`), so it wants the path even if it was watching already.
    Watch {
        viewer: String,
        until: Instant,
        asked: bool,
    },
    /// A viewer that was let in asks for the device's status; the answer goes back as an
    /// `Answer` for `viewer` (empty: an anonymous viewer of a plain relay).
    Status { viewer: String },
}

/// An event the media side answers a viewer with, addressed like `heartbeatpong`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub event: &'static str,
    pub args: Vec<Value>,
    /// Viewers (socket ids) it is for; empty or containing "": everyone in the room.
    pub to: Vec<String>,
}

/// What the media side asks the signalling side to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub path: String,
    /// Viewers (socket ids) it is for; empty or containing "": everyone in the room.
    pub to: Vec<String>,
}

/// Largest payload (serialised JSON) looked at; anything bigger is dropped unread.
const MAX_PAYLOAD: usize = 1024;
/// Viewers remembered at once (let in, not yet gone); the oldest are forgotten first.
const MAX_VIEWERS: usize = 256;
/// `status` requests handed to the media side per second, all viewers together.
const STATUS_PER_SECOND: u32 = 10;

/// A viewer that was let in.
struct Admitted {
    grant: Grant,
    last_seen: Instant,
}

struct Handler {
    policy: Policy,
    /// Viewer ids come from camstream-signal: trusted only when this device uses one.
    routed: bool,
    lease: Duration,
    to_main: mpsc::Sender<Command>,
    admitted: Mutex<HashMap<String, Admitted>>,
    dropped: AtomicU64,
    /// The current second's `status` requests: (its start, how many).
    status_window: Mutex<(Instant, u32)>,
}

/// A viewer event's parts: its token (first argument: "tok" or {"token": "tok"}) and, through
/// camstream-signal, the viewer's id (last argument: {"viewer": id}).
/// The viewer name camstream-signal asks `status` under, for its list of devices.
const RELAY_VIEWER: &str = "relay:status";

fn token_and_viewer(args: &[Value], routed: bool) -> (Option<&str>, String) {
    let routing = args
        .last()
        .and_then(|v| v.get("viewer"))
        .and_then(|v| v.as_str());
    let viewer = match routing {
        Some(id) if routed && id.len() <= 64 => id.to_string(),
        _ => String::new(),
    };
    let token = match args.first() {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Object(o)) => o.get("token").and_then(|t| t.as_str()),
        _ => None,
    };
    (token, viewer)
}

/// An answer's arguments, with camstream-signal's routing argument `{"to": [ids]}` last when
/// the viewers are known; for anonymous viewers (an empty id) it goes without, to everyone.
fn addressed(mut args: Vec<Value>, to: &[String]) -> Payload {
    if !to.is_empty() && to.iter().all(|v| !v.is_empty()) {
        args.push(json!({ "to": to }));
    }
    Payload::Text(args)
}

impl Handler {
    fn drop_event(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A flood must not flood the journal too.
        if n.is_power_of_two() {
            log::warn!("signal: dropped {n} bad events so far (latest: {why})");
        }
    }

    /// A request about the recordings from a viewer let in as for a heartbeat: checked here,
    /// refused here (`error`, addressed like `heartbeatpong`), or handed to the main loop.
    async fn recordings_request(
        &self,
        name: &str,
        args: &[Value],
        viewer: &str,
        token: Option<&str>,
        oversized: bool,
        socket: &Client,
    ) {
        use crate::playback::request::{self, Refusal, Verdict};
        let grant = self.known(viewer).or_else(|| self.admit(viewer, token));
        let Some(grant) = grant else { return };
        let now_ms = (crate::stamp::now_us() / 1000) as i64;
        let checked = match request::limit(viewer, Instant::now()) {
            Verdict::Drop => return self.drop_event("request flood"),
            Verdict::Refuse => Err(Refusal::new(name, "too many requests")),
            Verdict::Go => request::parse(name, args, oversized, now_ms),
        };
        let refusal = match checked {
            Ok(asked) => {
                let cmd = Command::Playback {
                    viewer: viewer.to_string(),
                    until: self.until(&grant),
                    asked,
                };
                match self.to_main.try_send(cmd) {
                    Ok(()) => return,
                    Err(_) => Refusal::new(name, "the device is busy, try again"),
                }
            }
            Err(r) => r,
        };
        self.drop_event(&format!("{name} refused: {}", refusal.reason));
        let answer = addressed(vec![refusal.to_json()], &[viewer.to_string()]);
        if let Err(e) = socket.emit("error", answer).await {
            log::warn!("signal: cannot answer {name}: {e}");
        }
    }

    /// Until when this viewer may watch from now: its lease, cut at its token's expiry.
    fn until(&self, grant: &Grant) -> Instant {
        let left = grant.expires.map_or(self.lease, |t| {
            let to_expiry = t.duration_since(SystemTime::now()).unwrap_or_default();
            self.lease.min(to_expiry)
        });
        Instant::now() + left
    }

    fn watch(&self, viewer: &str, grant: &Grant, asked: bool) {
        let cmd = Command::Watch {
            viewer: viewer.to_string(),
            until: self.until(grant),
            asked,
        };
        if self.to_main.try_send(cmd).is_err() {
            self.drop_event("media side busy");
        }
    }

    /// Lets a viewer in, or says why not. Anonymous viewers (plain relays) are not remembered:
    /// each of their events must carry the token.
    fn admit(&self, viewer: &str, token: Option<&str>) -> Option<Grant> {
        match self.policy.check(token, SystemTime::now()) {
            Ok(grant) => {
                if !viewer.is_empty() {
                    let mut a = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
                    if a.len() >= MAX_VIEWERS && !a.contains_key(viewer) {
                        let oldest = a
                            .iter()
                            .min_by_key(|(_, v)| v.last_seen)
                            .map(|(k, _)| k.clone());
                        if let Some(k) = oldest {
                            a.remove(&k);
                        }
                    }
                    a.insert(
                        viewer.to_string(),
                        Admitted {
                            grant: grant.clone(),
                            last_seen: Instant::now(),
                        },
                    );
                }
                Some(grant)
            }
            Err(why) => {
                self.drop_event(&format!("viewer refused: {why}"));
                None
            }
        }
    }

    /// A viewer let in earlier whose token still holds.
    fn known(&self, viewer: &str) -> Option<Grant> {
        if viewer.is_empty() {
            return None;
        }
        let mut a = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let entry = a.get_mut(viewer)?;
        if entry.grant.expires.is_some_and(|t| t <= SystemTime::now()) {
            log::info!("signal: viewer {} token expired", entry.grant.viewer);
            a.remove(viewer);
            return None;
        }
        entry.last_seen = Instant::now();
        Some(entry.grant.clone())
    }

    /// Whether another `status` request may go to the media side this second.
    fn status_allowed(&self) -> bool {
        let mut w = self.status_window.lock().unwrap_or_else(|e| e.into_inner());
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        w.1 <= STATUS_PER_SECOND
    }

    /// Dispatches one event. Runs inside rust_socketio's handler: never blocks.
    async fn handle(&self, event: Event, payload: Payload, socket: Client) {
        let args = match payload {
            Payload::Text(v) => v,
            Payload::Binary(_) => return self.drop_event("binary payload"),
            #[allow(deprecated)]
            Payload::String(s) => vec![Value::String(s)],
        };
        let oversized = serde_json::to_string(&args)
            .map(|s| s.len())
            .unwrap_or(usize::MAX)
            > MAX_PAYLOAD;
        // A request about the recordings is told it was too large; anything else just goes.
        let about_recordings =
            matches!(&event, Event::Custom(n) if crate::playback::request::is_request(n));
        if oversized && !about_recordings {
            return self.drop_event("payload too large");
        }
        // The seed's viewer emits `auth` and `heartbeatping` without arguments, which arrive
        // as the `message` event carrying the event name.
        let (name, args) = match &event {
            Event::Custom(name) => (name.as_str(), &args[..]),
            Event::Message => match args.first().and_then(|v| v.as_str()) {
                Some(name) => (name, &args[1..]),
                None => return self.drop_event("message without a name"),
            },
            _ => return,
        };
        let (token, viewer) = token_and_viewer(args, self.routed);
        match name {
            // An answer (ours relayed back, or another device's) asks nothing.
            "recordings" if args.first().is_some_and(|a| a.get("spans").is_some()) => {}
            n if crate::playback::request::is_request(n) => {
                self.recordings_request(n, args, &viewer, token, oversized, &socket)
                    .await
            }
            "playback" | "playback-ended" | "error" => {}
            "auth" => {
                if let Some(grant) = self.admit(&viewer, token) {
                    log::info!(
                        "signal: viewer {} let in{}",
                        grant.viewer,
                        if viewer.is_empty() {
                            String::new()
                        } else {
                            format!(" (socket {viewer})")
                        }
                    );
                    self.watch(&viewer, &grant, true);
                }
            }
            "heartbeatping" => {
                // Its own lease only: a viewer let in before, or a heartbeat that carries a
                // valid token (a viewer that kept watching through a device restart).
                let grant = self.known(&viewer).or_else(|| self.admit(&viewer, token));
                let Some(grant) = grant else { return };
                self.watch(&viewer, &grant, false);
                let pong = addressed(vec![], std::slice::from_ref(&viewer));
                if let Err(e) = socket.emit("heartbeatpong", pong).await {
                    log::warn!("signal: cannot answer heartbeat: {e}");
                }
            }
            // An answer (ours relayed back, or another device's on a plain relay) asks nothing.
            "status" if args.first().is_some_and(|a| a.get("version").is_some()) => {}
            "status" => {
                // The same rule as a heartbeat: a viewer let in before, or a valid token. Or
                // camstream-signal itself, which lists devices with their status: with a device
                // key the relay writes every viewer argument, so no room member can claim its.
                let from_relay = self.routed && viewer == RELAY_VIEWER;
                if !from_relay
                    && self
                        .known(&viewer)
                        .or_else(|| self.admit(&viewer, token))
                        .is_none()
                {
                    return;
                }
                if !self.status_allowed() {
                    return self.drop_event("too many status requests");
                }
                if self.to_main.try_send(Command::Status { viewer }).is_err() {
                    self.drop_event("media side busy");
                }
            }
            "create" | "join" => log::info!("signal: {name} room {}", self.policy.device),
            "refused" => log::error!(
                "signal: the relay refused this device: signal.device_key is wrong for {}",
                self.policy.device
            ),
            // Our own relayed events and anything else: not for the device.
            "heartbeatpong" | "bridge" | "find" => {}
            _ => self.drop_event("unknown event"),
        }
    }
}

async fn connect(
    cfg: &SignalConfig,
    handler: Arc<Handler>,
) -> Result<Client, rust_socketio::Error> {
    let h = handler.clone();
    let device = handler.policy.device.clone();
    let key = cfg.device_key.clone();
    let mut builder = ClientBuilder::new(cfg.url.clone())
        .reconnect(true)
        .reconnect_on_disconnect(true)
        .reconnect_delay(1000, cfg.reconnect_max_seconds.get() as u64 * 1000)
        .on(Event::Connect, move |_, socket: Client| {
            let (device, key) = (device.clone(), key.clone());
            async move {
                log::info!("signal: connected, joining room {device}");
                // Plain relays read the first argument only.
                let mut args = vec![json!(device)];
                if !key.is_empty() {
                    args.push(json!(key));
                }
                if let Err(e) = socket.emit("find", Payload::Text(args)).await {
                    log::warn!("signal: cannot emit find: {e}");
                }
            }
            .boxed()
        })
        .on(Event::Close, |_, _| {
            async { log::warn!("signal: disconnected, reconnecting") }.boxed()
        })
        .on_any(move |event, payload, socket| {
            let h = h.clone();
            async move { h.handle(event, payload, socket).await }.boxed()
        });
    if cfg.url.starts_with("https://") || cfg.url.starts_with("wss://") {
        match tls_connector(&cfg.tls_ca_file) {
            Ok(tls) => builder = builder.tls_config(tls),
            Err(e) => log::error!("signal: TLS unavailable: {e:#}"),
        }
    }
    builder.connect().await
}

/// The system's certificate authorities, plus `ca_file` (PEM) when set.
fn tls_connector(ca_file: &str) -> anyhow::Result<native_tls::TlsConnector> {
    let mut b = native_tls::TlsConnector::builder();
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file)
            .map_err(|e| anyhow::anyhow!("signal.tls_ca_file {ca_file}: {e}"))?;
        let ca = native_tls::Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("signal.tls_ca_file {ca_file}: {e}"))?;
        b.add_root_certificate(ca);
    }
    Ok(b.build()?)
}

/// Starts the signalling thread. `from_main` carries the paths to announce with `bridge`,
/// `answers` what the media side answers viewers' requests with.
pub fn spawn(
    cfg: SignalConfig,
    device: String,
    to_main: mpsc::Sender<Command>,
    mut from_main: mpsc::Receiver<Bridge>,
    mut answers: mpsc::Receiver<Answer>,
) -> std::io::Result<()> {
    let policy = Policy {
        device,
        token: cfg.token.clone(),
        viewer_secret: cfg.viewer_secret.clone(),
        open: cfg.open,
    };
    if policy.is_closed() {
        log::warn!(
            "signal: no signal.token, signal.viewer_secret or signal.open = true: nobody can watch"
        );
    } else if policy.open {
        log::warn!("signal: open device (signal.open = true): anyone in the room can watch");
    }
    if cfg.device_key.is_empty() {
        log::warn!(
            "signal: no signal.device_key: every member of the room sees the tokens viewers send and the paths this device announces"
        );
    }
    std::thread::Builder::new()
        .name("signal".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return log::error!("signal: cannot start: {e}"),
            };
            rt.block_on(async move {
                let handler = Arc::new(Handler {
                    policy,
                    routed: !cfg.device_key.is_empty(),
                    lease: Duration::from_secs(cfg.lease_seconds.get() as u64),
                    to_main,
                    admitted: Mutex::new(HashMap::new()),
                    dropped: AtomicU64::new(0),
                    status_window: Mutex::new((Instant::now(), 0)),
                });
                // The first connection is retried here; rust_socketio reconnects after that.
                let mut delay = Duration::from_secs(1);
                let client = loop {
                    match connect(&cfg, handler.clone()).await {
                        Ok(c) => break c,
                        Err(e) => {
                            log::warn!(
                                "signal: cannot reach {}: {e}; retrying in {} s",
                                cfg.url,
                                delay.as_secs()
                            );
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2)
                                .min(Duration::from_secs(cfg.reconnect_max_seconds.get() as u64));
                        }
                    }
                };
                let answering = client.clone();
                tokio::spawn(async move {
                    while let Some(Answer { event, args, to }) = answers.recv().await {
                        if let Err(e) = answering.emit(event, addressed(args, &to)).await {
                            log::warn!("signal: cannot emit {event}: {e}");
                        }
                    }
                });
                while let Some(Bridge { path, to }) = from_main.recv().await {
                    log::info!("signal: bridge {path}");
                    // Seed viewers read the first argument only.
                    if let Err(e) = client
                        .emit("bridge", addressed(vec![json!(path)], &to))
                        .await
                    {
                        log::warn!("signal: cannot emit bridge: {e}");
                    }
                }
            });
        })?;
    Ok(())
}
