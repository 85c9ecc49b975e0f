//! Which devices are online and how they are doing: `GET /devices` (JSON) and
//! `GET /devices.html` (a page).
//!
//! Only devices that proved their key count (a closed relay; an open one lists nobody, since
//! there anyone can claim any id, and asks nobody for a status).
//!
//! ```json
//! {"devices": [{"id": "cam-0001", "online": true, "last_seen": "2026-12-03T16:40:00Z",
//!               "connected_since": "2026-12-03T08:12:31Z",
//!               "status": {"version": "0.1.0", "profile": "rpi4", "uptime_s": 5123,
//!                          "recording": "recording", "oldest_recording": "2026-12-02T16:47:00Z",
//!                          "disk_free_bytes": 3351248896, "clock_synced": true,
//!                          "link": {"interface": "wwan0", "type": "modem"},
//!                          "recent_errors": 1, "device_time": "2026-12-03T16:39:58.042Z",
//!                          "taken": "2026-12-03T16:39:58Z"}}]}
//! ```
//!
//! `last_seen` is when the relay last knew the device connected: now while it is online (its
//! connection answers the relay's pings), else when its connection ended (or, when the node it
//! was on died, when that node last said it was there). `connected_since` is null while it is
//! offline. `status` is the summary of the device's last answer to the relay's own `status`
//! request (null before the first): the node a device is connected to asks it shortly after it
//! proves its key and then every `--status-interval` seconds, addressed to itself, so the answer
//! reaches no room member; `taken` is when the answer came.
//!
//! Alone, a node knows the devices connected to it since it started. With `--redis` the nodes
//! share the list: each node writes the devices connected to it and their statuses to Redis,
//! and marks each online with a key that expires after `--presence-ttl` seconds unless the node
//! renews it (every third of that), so the devices of a node that dies go offline everywhere
//! within that time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::response::{Html, IntoResponse, Json};
use redis::aio::ConnectionManager;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

/// The viewer id the relay's own `status` requests carry (`{"viewer": ...}`): the device
/// addresses its answer to it (`{"to": ...}`). The ':' keeps it apart from socket ids, and a
/// viewer cannot send it (the relay writes the viewer argument itself).
pub const RELAY_VIEWER: &str = "relay:status";

/// How long after the relay's request an answer is taken.
const ANSWER_WINDOW: Duration = Duration::from_secs(30);
/// How long after a device proves its key the relay asks it first.
const FIRST_ASK: Duration = Duration::from_secs(2);
/// Longest text kept from a device's answer (version, profile, times, link).
const MAX_TEXT: usize = 64;
/// How long Redis keeps a device that no node has seen.
const FORGET_AFTER_S: u64 = 30 * 24 * 3600;

/// Sends the relay's `status` request to the device's socket; false if it is gone.
pub type Asker = Arc<dyn Fn() -> bool + Send + Sync>;

struct Entry {
    /// The socket that proved it is the device.
    socket: String,
    online: bool,
    last_seen: SystemTime,
    connected_since: Option<SystemTime>,
    /// The summary of its last answer to the relay.
    status: Option<Value>,
    /// Asks the device (while its socket is on this node).
    asker: Option<Asker>,
    /// When the relay last asked and no answer came yet.
    asked: Option<Instant>,
}

static DEVICES: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

/// What this node writes to Redis, in the order it happened.
enum Write {
    Connected {
        id: String,
        socket: String,
        since: u64,
    },
    Renew {
        id: String,
        socket: String,
    },
    Gone {
        id: String,
        socket: String,
        at: u64,
    },
    Status {
        id: String,
        summary: String,
    },
}

struct Shared {
    conn: ConnectionManager,
    ttl: Duration,
    writes: mpsc::UnboundedSender<Write>,
}

static REDIS: OnceLock<Shared> = OnceLock::new();

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<String, Entry>> {
    DEVICES.lock().unwrap_or_else(|e| e.into_inner())
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

fn set_key() -> &'static str {
    "camstream-signal:devices"
}
fn hash_key(id: &str) -> String {
    format!("camstream-signal:device:{id}")
}
fn online_key(id: &str) -> String {
    format!("camstream-signal:online:{id}")
}

fn write(w: Write) {
    if let Some(r) = REDIS.get() {
        let _ = r.writes.send(w);
    }
}

/// Shares the list through `client`: presence keys expire after `ttl` unless renewed.
pub async fn use_redis(client: &redis::Client, ttl: Duration) -> anyhow::Result<()> {
    let conn = ConnectionManager::new(client.clone()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    if REDIS
        .set(Shared {
            conn: conn.clone(),
            ttl,
            writes: tx,
        })
        .is_err()
    {
        return Ok(());
    }
    tokio::spawn(writer(conn, ttl, rx));
    // Renew the presence of this node's devices.
    tokio::spawn(async move {
        let every = (ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(every).await;
            let d = lock();
            for (id, e) in d.iter().filter(|(_, e)| e.online) {
                // Sent under the lock: a disconnection comes after it, in order.
                write(Write::Renew {
                    id: id.clone(),
                    socket: e.socket.clone(),
                });
            }
        }
    });
    Ok(())
}

/// Applies this node's writes to Redis one after the other.
async fn writer(
    mut conn: ConnectionManager,
    ttl: Duration,
    mut rx: mpsc::UnboundedReceiver<Write>,
) {
    let ttl_ms = ttl.as_millis().max(1) as u64;
    // Renews only this socket's presence (another node may hold the device now).
    let renew = redis::Script::new(
        "local v = redis.call('GET', KEYS[1])
         if v and v ~= ARGV[1] then return 0 end
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
         redis.call('HSET', KEYS[2], 'last_seen', ARGV[3])
         redis.call('EXPIRE', KEYS[2], ARGV[4])
         return 1",
    );
    // Ends only this socket's presence.
    let gone = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then
           redis.call('DEL', KEYS[1])
           redis.call('HSET', KEYS[2], 'last_seen', ARGV[2])
           return 1
         end
         return 0",
    );
    while let Some(w) = rx.recv().await {
        let now = secs(SystemTime::now());
        let r: redis::RedisResult<()> = match &w {
            Write::Connected { id, socket, since } => {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(online_key(id))
                    .arg(socket)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore()
                    .cmd("HSET")
                    .arg(hash_key(id))
                    .arg("socket")
                    .arg(socket)
                    .arg("connected_since")
                    .arg(since)
                    .arg("last_seen")
                    .arg(now)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(hash_key(id))
                    .arg(FORGET_AFTER_S)
                    .ignore()
                    .cmd("SADD")
                    .arg(set_key())
                    .arg(id)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            }
            Write::Renew { id, socket } => renew
                .key(online_key(id))
                .key(hash_key(id))
                .arg(socket)
                .arg(ttl_ms)
                .arg(now)
                .arg(FORGET_AFTER_S)
                .invoke_async::<i32>(&mut conn)
                .await
                .map(|_| ()),
            Write::Gone { id, socket, at } => gone
                .key(online_key(id))
                .key(hash_key(id))
                .arg(socket)
                .arg(at)
                .invoke_async::<i32>(&mut conn)
                .await
                .map(|_| ()),
            Write::Status { id, summary } => {
                redis::cmd("HSET")
                    .arg(hash_key(id))
                    .arg("status")
                    .arg(summary)
                    .query_async(&mut conn)
                    .await
            }
        };
        if let Err(e) = r {
            tracing::warn!("devices: cannot write to Redis: {e}");
        }
    }
}

/// Device `id` proved its key on `socket`; `asker` sends it the relay's `status` request.
pub fn connected(id: &str, socket: &str, asker: Asker) {
    let now = SystemTime::now();
    {
        let mut d = lock();
        let status = d.get(id).and_then(|e| e.status.clone());
        d.insert(
            id.to_string(),
            Entry {
                socket: socket.to_string(),
                online: true,
                last_seen: now,
                connected_since: Some(now),
                status,
                asker: Some(asker),
                asked: None,
            },
        );
        write(Write::Connected {
            id: id.to_string(),
            socket: socket.to_string(),
            since: secs(now),
        });
    }
    // Asked once shortly after it joins, whatever the interval.
    if POLLING.get().is_some() {
        let (id, socket) = (id.to_string(), socket.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(FIRST_ASK).await;
            ask(&id, Some(&socket));
        });
    }
}

/// `socket`, device `id`'s, is gone; a socket it was replaced by is not.
pub fn disconnected(id: &str, socket: &str) {
    let mut d = lock();
    if let Some(e) = d.get_mut(id).filter(|e| e.socket == socket) {
        e.online = false;
        e.last_seen = SystemTime::now();
        e.connected_since = None;
        e.asker = None;
        e.asked = None;
        write(Write::Gone {
            id: id.to_string(),
            socket: socket.to_string(),
            at: secs(e.last_seen),
        });
    }
}

/// Sends the relay's request to device `id` (on `socket` only, when given).
fn ask(id: &str, socket: Option<&str>) {
    let asker = {
        let mut d = lock();
        let Some(e) = d
            .get_mut(id)
            .filter(|e| e.online && socket.is_none_or(|s| s == e.socket))
        else {
            return;
        };
        e.asked = Some(Instant::now());
        e.asker.clone()
    };
    if let Some(asker) = asker {
        if !asker() {
            tracing::debug!(%id, "status request not sent: the socket is gone");
        }
    }
}

static POLLING: OnceLock<Duration> = OnceLock::new();

/// Asks every device connected to this node for its status every `every` (and each once
/// shortly after it proves its key). Zero: never.
pub fn poll(every: Duration) {
    if every.is_zero() || POLLING.set(every).is_err() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let ids: Vec<(String, String)> = lock()
                .iter()
                .filter(|(_, e)| e.online)
                .map(|(id, e)| (id.clone(), e.socket.clone()))
                .collect();
            for (id, socket) in ids {
                ask(&id, Some(&socket));
            }
        }
    });
}

/// Device `id`'s socket `socket` answered the relay's request with `args` (routing argument
/// removed). Taken only from the socket asked, once per request, and only if it reads as a
/// status; anything else is dropped with a log line.
pub fn answered(id: &str, socket: &str, args: &[Value]) {
    let mut d = lock();
    let Some(e) = d.get_mut(id).filter(|e| e.online && e.socket == socket) else {
        tracing::warn!(%id, %socket, "status answer from a socket that is not the device's dropped");
        return;
    };
    match e.asked.take() {
        Some(t) if t.elapsed() <= ANSWER_WINDOW => {}
        _ => {
            tracing::warn!(%id, "status answer the relay did not ask for dropped");
            return;
        }
    }
    match summary(args, SystemTime::now()) {
        Ok(s) => {
            write(Write::Status {
                id: id.to_string(),
                summary: s.to_string(),
            });
            e.status = Some(s);
            tracing::debug!(%id, "status taken");
        }
        Err(why) => tracing::warn!(%id, "status answer dropped: {why}"),
    }
}

/// A string of at most `MAX_TEXT` characters, without control characters.
fn text(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    Some(
        s.chars()
            .filter(|c| !c.is_control())
            .take(MAX_TEXT)
            .collect(),
    )
}

/// The relay's summary of a device's `status` answer, taken at `now`: the fields it shows,
/// each null when missing or of the wrong type.
pub fn summary(args: &[Value], now: SystemTime) -> Result<Value, &'static str> {
    let [s] = args else {
        return Err("not one argument");
    };
    if !s.is_object() {
        return Err("not an object");
    }
    let version = text(s.get("version")).ok_or("no version")?;
    let recording = match (
        s.pointer("/recording/enabled").and_then(Value::as_bool),
        s.pointer("/recording/attached").and_then(Value::as_bool),
    ) {
        (Some(false), _) => Some("off"),
        (Some(true), Some(true)) => Some("recording"),
        (Some(true), _) => Some("not recording"),
        _ => None,
    };
    let link = s.get("network").and_then(|n| {
        let interface = text(n.get("interface"))?;
        Some(json!({ "interface": interface, "type": text(n.get("type")) }))
    });
    Ok(json!({
        "version": version,
        "profile": text(s.get("profile")),
        "uptime_s": s.get("uptime_s").and_then(Value::as_u64),
        "recording": recording,
        "oldest_recording": text(s.pointer("/recording/oldest_start")),
        "disk_free_bytes": s.pointer("/disk/free_bytes").and_then(Value::as_u64),
        "clock_synced": s.get("clock_synced").and_then(Value::as_bool),
        "link": link,
        "recent_errors": s.get("last_errors").and_then(Value::as_array).map(|a| a.len()),
        "device_time": text(s.get("time")),
        "taken": rfc3339(now),
    }))
}

/// One device as listed.
struct Row {
    id: String,
    online: bool,
    last_seen: SystemTime,
    connected_since: Option<SystemTime>,
    status: Option<Value>,
}

/// This node's devices, by id.
fn local_list() -> Vec<Row> {
    let now = SystemTime::now();
    lock()
        .iter()
        .map(|(id, e)| Row {
            id: id.clone(),
            online: e.online,
            last_seen: if e.online { now } else { e.last_seen },
            connected_since: e.connected_since,
            status: e.status.clone(),
        })
        .collect()
}

/// Every node's devices, from Redis, by id.
async fn shared_list(r: &Shared) -> redis::RedisResult<Vec<Row>> {
    let mut conn = r.conn.clone();
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(set_key())
        .query_async(&mut conn)
        .await?;
    ids.sort();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HGETALL").arg(hash_key(id));
        pipe.cmd("EXISTS").arg(online_key(id));
    }
    let answers: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let mut forgotten = Vec::new();
    for (id, pair) in ids.into_iter().zip(answers.chunks(2)) {
        let [fields, online] = pair else { continue };
        let fields: HashMap<String, String> =
            redis::FromRedisValue::from_redis_value(fields.clone()).unwrap_or_default();
        let online: bool = redis::FromRedisValue::from_redis_value(online.clone()).unwrap_or(false);
        if fields.is_empty() {
            // Expired: seen by no node for a month.
            forgotten.push(id);
            continue;
        }
        let time = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).map(from_secs);
        let status = fields
            .get("status")
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .filter(Value::is_object);
        rows.push(Row {
            id,
            online,
            last_seen: if online {
                now
            } else {
                time("last_seen").unwrap_or(UNIX_EPOCH)
            },
            connected_since: if online {
                time("connected_since")
            } else {
                None
            },
            status,
        });
    }
    if !forgotten.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("SREM")
            .arg(set_key())
            .arg(&forgotten)
            .query_async(&mut conn)
            .await;
    }
    Ok(rows)
}

/// The devices: every node's through Redis, else (or when Redis fails) this node's.
async fn list() -> Vec<Row> {
    if let Some(r) = REDIS.get() {
        match tokio::time::timeout(r.ttl.max(Duration::from_secs(2)), shared_list(r)).await {
            Ok(Ok(rows)) => return rows,
            Ok(Err(e)) => tracing::warn!("devices: Redis unavailable, listing this node's: {e}"),
            Err(_) => tracing::warn!("devices: Redis too slow, listing this node's"),
        }
    }
    local_list()
}

fn to_json(rows: Vec<Row>) -> Value {
    let devices: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "online": r.online,
                "last_seen": rfc3339(r.last_seen),
                "connected_since": r.connected_since.map(rfc3339),
                "status": r.status,
            })
        })
        .collect();
    json!({ "devices": devices })
}

/// GET /devices
pub async fn json_handler() -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(to_json(list().await)),
    )
}

/// A summary's field as page text (escaped), "–" when missing.
fn cell(s: Option<&Map<String, Value>>, key: &str) -> String {
    let v = s.and_then(|s| s.get(key)).unwrap_or(&Value::Null);
    let t = match v {
        Value::Null => return "–".into(),
        Value::String(t) => t.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => match key {
            "uptime_s" => n.as_u64().map(duration).unwrap_or_else(|| n.to_string()),
            "disk_free_bytes" => n.as_u64().map(bytes).unwrap_or_else(|| n.to_string()),
            _ => n.to_string(),
        },
        Value::Object(o) => {
            let i = o.get("interface").and_then(Value::as_str).unwrap_or("");
            match o.get("type").and_then(Value::as_str) {
                Some(t) => format!("{i} ({t})"),
                None => i.to_string(),
            }
        }
        Value::Array(_) => return "–".into(),
    };
    escape(&t)
}

fn duration(s: u64) -> String {
    match s {
        s if s >= 86400 => format!("{} d {} h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} min {} s", s / 60, s % 60),
    }
}

fn bytes(b: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    if b >= G {
        format!("{:.1} GiB", b as f64 / G as f64)
    } else {
        format!("{:.1} MiB", b as f64 / M as f64)
    }
}

/// GET /devices.html: the same as a page that reloads itself every 10 s.
pub async fn html_handler() -> impl IntoResponse {
    let rows = list().await;
    let online = rows.iter().filter(|r| r.online).count();
    let mut body = String::new();
    for r in &rows {
        let s = r.status.as_ref().and_then(Value::as_object);
        body.push_str(&format!(
            "<tr class=\"{cls}\"><td>{id}</td><td>{state}</td><td>{seen}</td><td>{since}</td>",
            cls = if r.online { "on" } else { "off" },
            id = escape(&r.id),
            state = if r.online { "online" } else { "offline" },
            seen = rfc3339(r.last_seen),
            since = r.connected_since.map(rfc3339).unwrap_or_else(|| "–".into()),
        ));
        for key in [
            "version",
            "profile",
            "uptime_s",
            "recording",
            "oldest_recording",
            "disk_free_bytes",
            "clock_synced",
            "link",
            "recent_errors",
            "taken",
        ] {
            body.push_str(&format!("<td>{}</td>", cell(s, key)));
        }
        body.push_str("</tr>\n");
    }
    if rows.is_empty() {
        body.push_str(
            "<tr><td colspan=\"14\">No device has connected since the relay started.</td></tr>\n",
        );
    }
    let page = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="10">
<title>camstream devices</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: .3rem .8rem; border-bottom: 1px solid #ddd; }}
tr.on td:nth-child(2) {{ color: #080; font-weight: bold; }}
tr.off td {{ color: #777; }}
</style>
</head>
<body>
<h1>Devices</h1>
<p>{online} online of {total} (times in UTC; the status is the device's last answer to the relay, taken at the time shown; this page reloads every 10 s).</p>
<table>
<thead><tr><th>device</th><th>state</th><th>last seen</th><th>connected since</th><th>version</th><th>board</th><th>uptime</th><th>recording</th><th>oldest recording</th><th>disk free</th><th>clock synced</th><th>link</th><th>recent errors</th><th>status taken</th></tr></thead>
<tbody>
{body}</tbody>
</table>
</body>
</html>
"#,
        total = rows.len(),
    );
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Html(page),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// RFC 3339, UTC, seconds (days to civil date: H. Hinnant's algorithm).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = secs(t);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_896_916)),
            "2026-11-28T20:15:16Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    fn entry(id: &str) -> Value {
        to_json(local_list())["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap()
            .clone()
    }

    #[test]
    fn a_replaced_socket_does_not_take_the_device_offline() {
        let asker: Asker = Arc::new(|| true);
        connected("cam-test", "a", asker.clone());
        connected("cam-test", "b", asker);
        disconnected("cam-test", "a");
        assert_eq!(entry("cam-test")["online"], true);
        disconnected("cam-test", "b");
        let dev = entry("cam-test");
        assert_eq!(dev["online"], false);
        assert!(dev["connected_since"].is_null());
        assert!(dev["last_seen"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn answers_are_taken_once_per_request_from_the_device_socket_only() {
        let asker: Asker = Arc::new(|| true);
        connected("cam-ask", "s1", asker);
        let good = [json!({"version": "1.2.3"})];
        // Not asked yet.
        answered("cam-ask", "s1", &good);
        assert!(entry("cam-ask")["status"].is_null());
        ask("cam-ask", None);
        // Another socket.
        answered("cam-ask", "s2", &good);
        assert!(entry("cam-ask")["status"].is_null());
        answered("cam-ask", "s1", &good);
        assert_eq!(entry("cam-ask")["status"]["version"], "1.2.3");
        // Once per request.
        answered("cam-ask", "s1", &[json!({"version": "9"})]);
        assert_eq!(entry("cam-ask")["status"]["version"], "1.2.3");
        disconnected("cam-ask", "s1");
    }

    #[test]
    fn summary_keeps_typed_fields_and_refuses_what_is_not_a_status() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_896_916);
        assert!(summary(&[json!("hello")], now).is_err());
        assert!(summary(&[json!({"version": 3})], now).is_err());
        assert!(summary(&[json!({"version": "1"}), json!(1)], now).is_err());
        let s = summary(
            &[json!({
                "version": "<b>1</b>\u{7}",
                "profile": "x".repeat(1000),
                "uptime_s": -1,
                "recording": {"enabled": true, "attached": false, "oldest_start": "2026-01-01T00:00:00Z"},
                "disk": {"free_bytes": 42},
                "clock_synced": "yes",
                "network": {"interface": "eth0", "type": "ethernet"},
                "last_errors": [{}, {}],
            })],
            now,
        )
        .unwrap();
        assert_eq!(s["version"], "<b>1</b>");
        assert_eq!(s["profile"].as_str().unwrap().len(), MAX_TEXT);
        assert!(s["uptime_s"].is_null());
        assert_eq!(s["recording"], "not recording");
        assert_eq!(s["oldest_recording"], "2026-01-01T00:00:00Z");
        assert_eq!(s["disk_free_bytes"], 42);
        assert!(s["clock_synced"].is_null());
        assert_eq!(s["link"]["interface"], "eth0");
        assert_eq!(s["recent_errors"], 2);
        assert_eq!(s["taken"], "2026-11-28T20:15:16Z");
        let o = s.as_object();
        assert_eq!(cell(o, "version"), "&lt;b&gt;1&lt;/b&gt;");
        assert_eq!(cell(o, "link"), "eth0 (ethernet)");
        assert_eq!(cell(o, "clock_synced"), "–");
    }
}
