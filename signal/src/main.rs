//! camstream-signal: the reference Socket.IO relay between camstream devices and viewers,
//! wire-compatible with the seed's server.
//!
//! - `find <room>`: the sender joins the room and gets `create` if it was empty, else `join`;
//! - `auth`, `heartbeatping`, `heartbeatpong`, `bridge`: relayed, with their arguments, to the
//!   other members of the sender's rooms;
//! - anything else, or a payload of the wrong type or size, is dropped.
//!
//! It also serves static files (the web viewer) and answers CORS as configured. Several nodes
//! can share rooms through Redis (`--redis redis://host:6379`): a viewer on one node reaches a
//! device on another.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use clap::Parser;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;

mod lock;
mod redis_driver;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
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
}

/// Events relayed between the members of a room.
const RELAYED: [&str; 4] = ["auth", "heartbeatping", "heartbeatpong", "bridge"];
/// Room names: device ids.
fn valid_room(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| s.to_string())
}

/// Arguments relayed: at most 4, each small. A 100 kB "auth" is not an auth.
fn valid_args(v: &Value) -> bool {
    let args = match v {
        Value::Array(a) => a.as_slice(),
        other => std::slice::from_ref(other),
    };
    args.len() <= 4
        && serde_json::to_string(v)
            .map(|s| s.len() <= 1024)
            .unwrap_or(false)
}

/// Connect middleware: handlers are registered before the client learns it is connected, so
/// events it sends straight away are not lost.
async fn register_handlers<A: Adapter>(
    socket: SocketRef<A>,
) -> Result<(), std::convert::Infallible> {
    tracing::debug!(id = %socket.id, "connected");
    socket.on("find", async |s: SocketRef<A>, Data::<Value>(room)| {
        let Some(room) = valid_room(&room) else {
            tracing::debug!(id = %s.id, "find with a bad room id dropped");
            return;
        };
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
    });
    for ev in RELAYED {
        // The seed's viewer sends `auth` and `heartbeatping` without arguments.
        socket.on(ev, async move |s: SocketRef<A>, TryData::<Value>(data)| {
            let data = data.unwrap_or(Value::Null);
            if !valid_args(&data) {
                tracing::debug!(id = %s.id, ev, "oversized payload dropped");
                return;
            }
            let rooms: Vec<String> = s
                .rooms()
                .into_iter()
                .map(|r| r.to_string())
                .filter(|r| *r != s.id.to_string())
                .collect();
            for room in rooms {
                let op = s.to(room);
                let sent = match &data {
                    Value::Null => op.emit(ev, &()).await,
                    Value::Array(a) if a.is_empty() => op.emit(ev, &()).await,
                    Value::Array(a) if a.len() == 1 => op.emit(ev, &a[0]).await,
                    other => op.emit(ev, other).await,
                };
                if let Err(e) = sent {
                    tracing::debug!(ev, "relay failed: {e}");
                }
            }
        });
    }
    Ok(())
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
    let mut app = axum::Router::new();
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
