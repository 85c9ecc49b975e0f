//! The device's side of the Socket.IO protocol (wire-compatible with the seed's servers):
//! on every (re)connect emit `find <device id>` (a reconnected socket has no rooms); a viewer's
//! `auth` starts the uplink, `heartbeatping` is answered with `heartbeatpong` and renews the
//! viewing lease; `bridge <path>` tells viewers where to play once the uplink is live.
//!
//! Runs on its own thread with a small tokio runtime. rust_socketio runs handlers one at a time,
//! so they only validate and hand a command to the main loop through a bounded channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload};
use tokio::sync::mpsc;

use crate::config::SignalConfig;

/// What the signalling side asks of the media side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A viewer authenticated: start (or keep) the uplink and answer with `bridge`.
    Auth,
    /// A viewer is still watching.
    Ping,
}

/// Largest payload (serialised JSON) looked at; anything bigger is dropped unread.
const MAX_PAYLOAD: usize = 1024;

struct Handler {
    token: String,
    device: String,
    to_main: mpsc::Sender<Command>,
    dropped: AtomicU64,
}

impl Handler {
    fn drop_event(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A flood must not flood the journal too.
        if n.is_power_of_two() {
            log::warn!("signal: dropped {n} bad events so far (latest: {why})");
        }
    }

    fn send(&self, cmd: Command) {
        if self.to_main.try_send(cmd).is_err() {
            self.drop_event("media side busy");
        }
    }

    /// The token, when one is configured, must be the first argument: "tok" or {"token":"tok"}.
    fn auth_ok(&self, args: &[serde_json::Value]) -> bool {
        if self.token.is_empty() {
            return true;
        }
        let given = match args.first() {
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(serde_json::Value::Object(o)) => o.get("token").and_then(|t| t.as_str()),
            _ => None,
        };
        given == Some(self.token.as_str())
    }

    /// Dispatches one event. Runs inside rust_socketio's handler: never blocks.
    async fn handle(&self, event: Event, payload: Payload, socket: Client) {
        let args = match payload {
            Payload::Text(v) => v,
            Payload::Binary(_) => return self.drop_event("binary payload"),
            #[allow(deprecated)]
            Payload::String(s) => vec![serde_json::Value::String(s)],
        };
        if serde_json::to_string(&args)
            .map(|s| s.len())
            .unwrap_or(usize::MAX)
            > MAX_PAYLOAD
        {
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
        match name {
            "auth" => {
                if self.auth_ok(args) {
                    log::info!("signal: viewer authenticated");
                    self.send(Command::Auth);
                } else {
                    self.drop_event("auth refused: wrong or missing token");
                }
            }
            "heartbeatping" => {
                self.send(Command::Ping);
                if let Err(e) = socket.emit("heartbeatpong", Payload::Text(vec![])).await {
                    log::warn!("signal: cannot answer heartbeat: {e}");
                }
            }
            "create" | "join" => log::info!("signal: {name} room {}", self.device),
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
    let device = handler.device.clone();
    let mut builder = ClientBuilder::new(cfg.url.clone())
        .reconnect(true)
        .reconnect_on_disconnect(true)
        .reconnect_delay(1000, cfg.reconnect_max_seconds.get() as u64 * 1000)
        .on(Event::Connect, move |_, socket: Client| {
            let device = device.clone();
            async move {
                log::info!("signal: connected, joining room {device}");
                if let Err(e) = socket.emit("find", serde_json::json!(device)).await {
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

/// Starts the signalling thread. `from_main` carries the paths to announce with `bridge`.
pub fn spawn(
    cfg: SignalConfig,
    device: String,
    to_main: mpsc::Sender<Command>,
    mut from_main: mpsc::Receiver<String>,
) -> std::io::Result<()> {
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
                    token: cfg.token.clone(),
                    device,
                    to_main,
                    dropped: AtomicU64::new(0),
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
                while let Some(path) = from_main.recv().await {
                    log::info!("signal: bridge {path}");
                    if let Err(e) = client.emit("bridge", serde_json::json!(path)).await {
                        log::warn!("signal: cannot emit bridge: {e}");
                    }
                }
            });
        })?;
    Ok(())
}
