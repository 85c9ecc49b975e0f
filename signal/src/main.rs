//! camstream-signal: the reference Socket.IO relay between camstream devices and viewers,
//! wire-compatible with the seed's server.
//!
//! Open (no `--device-secret-file`, the seed's behaviour):
//! - `find <room>`: the sender joins the room and gets `create` if it was empty, else `join`;
//! - `auth`, `heartbeatping`, `heartbeatpong`, `bridge`, `status`: relayed, with their
//!   arguments, to the other members of the sender's rooms.
//!
//! Closed (`--device-secret-file`): a room has one device, proven by its key
//! (`find <room> <device key>`; see device_key.rs); a wrong key is refused with `refused`, and a
//! device that proves itself again (reconnecting) replaces the old socket. Every other member
//! is a viewer (`find <room>`, answered `join` when the device is online, else `create`).
//! - a viewer's `auth`, `heartbeatping` and `status` go to the device only, with the viewer's id
//!   added as a last argument `{"viewer": id}`;
//! - the device's `bridge`, `heartbeatpong` and `status` go only to the viewers named in their
//!   last argument `{"to": id | [ids]}` that are in its room, without that argument;
//! - nothing else is relayed: a viewer that was not let in learns nothing, not even who else
//!   watches.
//! - the relay asks each device connected to it for its status itself (`status null
//!   {"viewer": "relay:status"}`, to the device's socket only, shortly after it proves its key
//!   and every `--status-interval` seconds); the device's answer addressed `{"to":
//!   "relay:status"}` is taken from the device's socket only and goes to no room member.
//!
//! Anything else, or a payload of the wrong type or size, is dropped.
//!
//! It also lists the devices that proved their key, online or not, with the summary of their
//! answer to its own `status` request (`GET /devices`, JSON, and `/devices.html`: devices.rs),
//! serves static files (the web viewer) and answers CORS as configured. Several nodes
//! can share rooms through Redis (`--redis redis://host:6379`): a viewer on one node reaches a
//! device on another.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use clap::Parser;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;

mod device_key;
mod devices;
mod lock;
mod redis_driver;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// File whose first line is the secret devices' keys derive from: makes the relay closed
    /// (devices prove who they are; events go only to whom they are for). None: open relay.
    #[arg(long, global = true)]
    device_secret_file: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Directory of static files to serve (the web viewer); none by default.
    #[arg(long)]
    static_dir: Option<PathBuf>,
    /// Allowed CORS origin ("*" for any); repeatable. None: same origin only.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Share rooms with other nodes through this Redis (7 or later), e.g. redis://127.0.0.1:6379.
    #[arg(long)]
    redis: Option<String>,
    /// Seconds between the relay's own `status` requests to each device connected to this node
    /// (closed relay; each device is also asked once shortly after it proves its key); 0: never.
    #[arg(long, default_value_t = 60)]
    status_interval: u64,
    /// With --redis: seconds a device stays online in the shared list unless its node renews
    /// it (every third of that); the devices of a node that dies go offline within it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    presence_ttl: u64,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Print a device's key (its `signal.device_key`), from --device-secret-file.
    DeviceKey { device: String },
}

/// Events relayed between the members of a room.
const RELAYED: [&str; 12] = [
    "auth",
    "heartbeatping",
    "heartbeatpong",
    "bridge",
    "status",
    // Recordings: a viewer's requests, and the device's answers.
    "recordings",
    "play",
    "stop",
    "seek",
    "playback",
    "playback-ended",
    // A device's refusal; through a closed relay a viewer's `error` goes nowhere.
    "error",
];
/// Room names: device ids.
fn valid_room(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| s.to_string())
}

/// All of an event's arguments. socketioxide hands a `Vec` over as the first argument only; a
/// tuple of any length takes them all.
#[derive(Default)]
struct EventArgs(Vec<Value>);

impl<'de> serde::Deserialize<'de> for EventArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> serde::de::Visitor<'de> for Each {
            type Value = EventArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<EventArgs, S::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(EventArgs(v))
            }
        }
        d.deserialize_tuple(usize::MAX, Each)
    }
}

/// Arguments relayed: at most 4, each small. A 100 kB "auth" is not an auth; a device's
/// `status` answer (a few kB) may take 16 kB, and its `recordings` answer (up to 1000 spans)
/// 256 kB.
fn valid_args(ev: &str, args: &[Value]) -> bool {
    let limit = match ev {
        "status" => 16 * 1024,
        "recordings" => 256 * 1024,
        _ => 1024,
    };
    args.len() <= 4
        && serde_json::to_string(args)
            .map(|s| s.len() <= limit)
            .unwrap_or(false)
}

/// Emits `ev` with `args` as separate arguments, as the sender gave them.
async fn emit_args<A: Adapter>(
    op: socketioxide::operators::BroadcastOperators<A>,
    ev: &str,
    args: &[Value],
) -> Result<(), socketioxide::BroadcastError> {
    match args {
        [] => op.emit(ev, &()).await,
        [a] => op.emit(ev, a).await,
        [a, b] => op.emit(ev, &(a, b)).await,
        [a, b, c] => op.emit(ev, &(a, b, c)).await,
        [a, b, c, d, ..] => op.emit(ev, &(a, b, c, d)).await,
    }
}

/// Connect middleware: handlers are registered before the client learns it is connected, so
/// events it sends straight away are not lost.
async fn register_handlers<A: Adapter>(
    socket: SocketRef<A>,
) -> Result<(), std::convert::Infallible> {
    tracing::debug!(id = %socket.id, "connected");
    // Its own room, so that an answer can reach it on whichever node it is. ':' keeps it apart
    // from the rooms `find` can name.
    socket.join(own_room(&socket.id.to_string()));
    socket.on(
        "find",
        async |s: SocketRef<A>, TryData::<EventArgs>(args)| {
            // `find <room>` or, from a device of a closed relay, `find <room> <key>`.
            let args = args.unwrap_or_default().0;
            let key = args.get(1).and_then(|k| k.as_str());
            let Some(room) = args.first().and_then(valid_room) else {
                tracing::debug!(id = %s.id, "find with a bad room id dropped");
                return;
            };
            if device_key::closed() {
                find_closed(s, room, key).await
            } else {
                find_open(s, room).await
            }
        },
    );
    for ev in RELAYED {
        // The seed's viewer sends `auth` and `heartbeatping` without arguments.
        socket.on(
            ev,
            async move |s: SocketRef<A>, TryData::<EventArgs>(args)| {
                let args = args.unwrap_or_default().0;
                if !valid_args(ev, &args) {
                    if device_of(&s).is_some() {
                        tracing::warn!(id = %s.id, ev, "oversized payload from a device dropped");
                    } else {
                        tracing::debug!(id = %s.id, ev, "oversized payload dropped");
                    }
                    return;
                }
                if device_key::closed() {
                    relay_closed(s, ev, args).await
                } else {
                    relay_open(s, ev, args).await
                }
            },
        );
    }
    Ok(())
}

/// The room a device of a closed relay is alone in.
fn device_room(room: &str) -> String {
    // ':' is not allowed in room names: no viewer can find it.
    format!("device:{room}")
}

/// The room only socket `id` is in.
fn own_room(id: &str) -> String {
    format!("socket:{id}")
}

/// The rooms a socket found (not its own room, not a device room: those hold a ':').
fn found_rooms<A: Adapter>(s: &SocketRef<A>) -> Vec<String> {
    s.rooms()
        .into_iter()
        .map(|r| r.to_string())
        .filter(|r| !r.contains(':'))
        .collect()
}

/// The room whose device this socket is, on a closed relay.
fn device_of<A: Adapter>(s: &SocketRef<A>) -> Option<String> {
    s.rooms()
        .into_iter()
        .find_map(|r| r.strip_prefix("device:").map(str::to_string))
}

async fn find_open<A: Adapter>(s: SocketRef<A>, room: String) {
    // Look-up and join under a per-room lock (a Redis one across nodes), so that two
    // simultaneous finds cannot both be told `create`.
    let guard = lock::room(&room, &s.id.to_string()).await;
    let empty = match s.within(room.clone()).fetch_sockets().await {
        Ok(members) => members.is_empty(),
        Err(e) => {
            tracing::warn!(%room, "room look-up failed: {e:?}");
            true
        }
    };
    s.join(room.clone());
    drop(guard);
    let reply = if empty { "create" } else { "join" };
    let _ = s.emit(reply, &room);
    tracing::info!(id = %s.id, %room, reply, "find");
}

async fn find_closed<A: Adapter>(s: SocketRef<A>, room: String, key: Option<&str>) {
    let dev = device_room(&room);
    match key {
        Some(key) if device_key::verify(&room, key) => {
            let guard = lock::room(&room, &s.id.to_string()).await;
            // A device that proves itself again replaces its old socket (a reconnect before
            // the old one timed out).
            if let Ok(old) = s.within(dev.clone()).fetch_sockets().await {
                for o in old.into_iter().filter(|o| o.data().id != s.id) {
                    tracing::info!(%room, old = %o.data().id, "device replaced by a new socket");
                    let _ = o.disconnect().await;
                }
            }
            s.join(dev);
            drop(guard);
            let device = s.clone();
            let asker: devices::Asker = std::sync::Arc::new(move || {
                // To the device's socket only; it answers `{"to": RELAY_VIEWER}`.
                let who = serde_json::json!({ "viewer": devices::RELAY_VIEWER });
                device.emit("status", &(Value::Null, who)).is_ok()
            });
            devices::connected(&room, &s.id.to_string(), asker);
            let r = room.clone();
            s.on_disconnect(move |s: SocketRef<A>| {
                let r = r.clone();
                async move {
                    devices::disconnected(&r, &s.id.to_string());
                    tracing::info!(id = %s.id, room = %r, "device gone");
                }
            });
            let _ = s.emit("create", &room);
            tracing::info!(id = %s.id, %room, "device found its room");
        }
        Some(_) => {
            tracing::warn!(id = %s.id, %room, "device key refused");
            let _ = s.emit("refused", &room);
        }
        None => {
            s.join(room.clone());
            let online = s
                .within(dev)
                .fetch_sockets()
                .await
                .map(|d| !d.is_empty())
                .unwrap_or(false);
            let reply = if online { "join" } else { "create" };
            let _ = s.emit(reply, &room);
            tracing::info!(id = %s.id, %room, reply, "viewer find");
        }
    }
}

async fn relay_open<A: Adapter>(s: SocketRef<A>, ev: &'static str, args: Vec<Value>) {
    for room in found_rooms(&s) {
        if let Err(e) = emit_args(s.to(room), ev, &args).await {
            tracing::debug!(ev, "relay failed: {e}");
        }
    }
}

async fn relay_closed<A: Adapter>(s: SocketRef<A>, ev: &'static str, args: Vec<Value>) {
    match (ev, device_of(&s)) {
        // A viewer asks its devices: the token (if any) and who asks.
        ("auth" | "heartbeatping" | "status" | "recordings" | "play" | "stop" | "seek", None) => {
            let token = args.first().cloned().unwrap_or(Value::Null);
            let who = serde_json::json!({ "viewer": s.id.to_string() });
            for room in found_rooms(&s) {
                if let Err(e) = s.to(device_room(&room)).emit(ev, &(&token, &who)).await {
                    tracing::debug!(ev, "relay failed: {e}");
                }
            }
        }
        // The device answers the viewers it let in, and only those of its room.
        (
            "bridge" | "heartbeatpong" | "status" | "recordings" | "playback" | "playback-ended"
            | "error",
            Some(room),
        ) => {
            let to: Vec<String> = match args.last().and_then(|a| a.get("to")) {
                Some(Value::String(id)) => vec![id.clone()],
                Some(Value::Array(ids)) => ids
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect(),
                _ => {
                    tracing::debug!(ev, %room, "device event without recipients dropped");
                    return;
                }
            };
            // The relay's own `status` request: taken here, never relayed (from the device's
            // socket only: this is the device's branch).
            if ev == "status" && to.iter().any(|id| id == devices::RELAY_VIEWER) {
                devices::answered(&room, &s.id.to_string(), &args[..args.len() - 1]);
            }
            let to: Vec<String> = to
                .into_iter()
                .filter(|id| id != devices::RELAY_VIEWER)
                .collect();
            if to.is_empty() {
                return;
            }
            let members: Vec<String> = match s.within(room.clone()).fetch_sockets().await {
                Ok(m) => m.iter().map(|m| m.data().id.to_string()).collect(),
                Err(e) => {
                    tracing::warn!(%room, "room look-up failed: {e:?}");
                    return;
                }
            };
            // Without the routing argument: what a seed viewer expects.
            let payload = &args[..args.len() - 1];
            for id in to.iter().filter(|id| members.contains(id)) {
                if let Err(e) = emit_args(s.to(own_room(id)), ev, payload).await {
                    tracing::debug!(ev, "relay failed: {e}");
                }
            }
        }
        (ev, role) => {
            tracing::debug!(id = %s.id, ev, device = role.is_some(), "event not for this role dropped")
        }
    }
}

async fn noop<A: Adapter>(_: SocketRef<A>) {}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "camstream_signal=info".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(file) = &args.device_secret_file {
        device_key::load(file)?;
    }
    if let Some(Cmd::DeviceKey { device }) = &args.command {
        if !device_key::closed() {
            anyhow::bail!("device-key needs --device-secret-file");
        }
        if valid_room(&Value::String(device.clone())).is_none() {
            anyhow::bail!("device id {device:?}: 1 to 64 letters, digits, '-' or '_'");
        }
        println!("{}", device_key::key_for(device).unwrap_or_default());
        return Ok(());
    }
    if device_key::closed() {
        tracing::info!(
            "closed relay: devices prove their ids, events go only to whom they are for"
        );
    } else {
        tracing::warn!("open relay (no --device-secret-file): every member of a room sees every relayed event, tokens and paths included");
    }
    let mut app = axum::Router::new()
        .route("/devices", axum::routing::get(devices::json_handler))
        .route("/devices.html", axum::routing::get(devices::html_handler));
    if let Some(dir) = &args.static_dir {
        // The build ships gzip copies next to the files (web/: npm run build).
        app = app.fallback_service(ServeDir::new(dir).precompressed_gzip());
    }
    let app = match &args.redis {
        None => {
            let (layer, io) = SocketIo::builder().max_payload(64 * 1024).build_layer();
            io.ns("/", noop.with(register_handlers));
            app.layer(layer)
        }
        Some(url) => {
            // The adapter's drivers speak RESP3.
            let url = if url.contains("protocol=") {
                url.clone()
            } else if url.contains('?') {
                format!("{url}&protocol=resp3")
            } else {
                format!("{url}?protocol=resp3")
            };
            let client = redis::Client::open(url.as_str()).context("bad --redis URL")?;
            lock::use_redis(&client).await?;
            devices::use_redis(&client, std::time::Duration::from_secs(args.presence_ttl))
                .await
                .context("cannot reach Redis")?;
            let config = socketioxide_redis::RedisAdapterConfig::new()
                .with_request_timeout(std::time::Duration::from_millis(500));
            let driver = redis_driver::ReconnectingDriver::new(&client)
                .await
                .context("cannot reach Redis")?;
            let adapter = socketioxide_redis::RedisAdapterCtr::new_with_driver(driver, config);
            let (layer, io) = SocketIo::builder()
                .max_payload(64 * 1024)
                .with_adapter::<socketioxide_redis::CustomRedisAdapter<_, redis_driver::ReconnectingDriver>>(adapter)
                .build_layer();
            io.ns("/", noop.with(register_handlers))
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe through Redis: {e:?}"))?;
            tracing::info!("sharing rooms through Redis");
            app.layer(layer)
        }
    };
    if device_key::closed() {
        devices::poll(std::time::Duration::from_secs(args.status_interval));
    }
    let mut app = app;
    if !args.cors_origins.is_empty() {
        let origin = if args.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                args.cors_origins
                    .iter()
                    .filter_map(|o| o.parse().ok())
                    .collect::<Vec<_>>(),
            )
        };
        app = app.layer(CorsLayer::new().allow_origin(origin));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!("camstream-signal listening on {}", args.listen);
    println!("camstream-signal listening on {}", args.listen);
    // Nagle off: relayed events are small and latency is what they are for.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
