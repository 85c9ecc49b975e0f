//! Which devices are online: `GET /devices` (JSON) and `GET /devices.html` (a page).
//!
//! Only devices that proved their key count (a closed relay; an open one lists nobody, since
//! there anyone can claim any id). Each node knows the devices connected to it since it
//! started: with `--redis`, ask every node, or the one the devices use.
//!
//! ```json
//! {"devices": [{"id": "cam-0001", "online": true, "last_seen": "2026-12-03T16:40:00Z",
//!               "connected_since": "2026-12-03T08:12:31Z"}]}
//! ```
//!
//! `last_seen` is when the relay last knew the device connected: now while it is online (its
//! connection answers the relay's pings), else when its connection ended. `connected_since` is
//! null while it is offline.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{Html, IntoResponse, Json};
use serde_json::{json, Value};

struct Entry {
    /// The socket that proved it is the device.
    socket: String,
    online: bool,
    last_seen: SystemTime,
    connected_since: Option<SystemTime>,
}

static DEVICES: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

/// Device `id` proved its key on `socket`.
pub fn connected(id: &str, socket: &str) {
    let now = SystemTime::now();
    let mut d = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    d.insert(
        id.to_string(),
        Entry {
            socket: socket.to_string(),
            online: true,
            last_seen: now,
            connected_since: Some(now),
        },
    );
}

/// `socket`, device `id`'s, is gone; a socket it was replaced by is not.
pub fn disconnected(id: &str, socket: &str) {
    let mut d = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = d.get_mut(id).filter(|e| e.socket == socket) {
        e.online = false;
        e.last_seen = SystemTime::now();
        e.connected_since = None;
    }
}

/// (id, online, last seen, connected since), by id.
fn list() -> Vec<(String, bool, SystemTime, Option<SystemTime>)> {
    let now = SystemTime::now();
    let d = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    d.iter()
        .map(|(id, e)| {
            let seen = if e.online { now } else { e.last_seen };
            (id.clone(), e.online, seen, e.connected_since)
        })
        .collect()
}

fn to_json() -> Value {
    let devices: Vec<Value> = list()
        .into_iter()
        .map(|(id, online, seen, since)| {
            json!({
                "id": id,
                "online": online,
                "last_seen": rfc3339(seen),
                "connected_since": since.map(rfc3339),
            })
        })
        .collect();
    json!({ "devices": devices })
}

/// GET /devices
pub async fn json_handler() -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(to_json()),
    )
}

/// GET /devices.html: the same as a page that reloads itself every 10 s.
pub async fn html_handler() -> impl IntoResponse {
    let rows = list();
    let online = rows.iter().filter(|r| r.1).count();
    let mut body = String::new();
    for (id, on, seen, since) in &rows {
        body.push_str(&format!(
            "<tr class=\"{cls}\"><td>{id}</td><td>{state}</td><td>{seen}</td><td>{since}</td></tr>\n",
            cls = if *on { "on" } else { "off" },
            id = escape(id),
            state = if *on { "online" } else { "offline" },
            seen = rfc3339(*seen),
            since = since.map(rfc3339).unwrap_or_else(|| "–".into()),
        ));
    }
    if rows.is_empty() {
        body.push_str(
            "<tr><td colspan=\"4\">No device has connected since the relay started.</td></tr>\n",
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
<p>{online} online of {total} (times in UTC; this page reloads every 10 s).</p>
<table>
<thead><tr><th>device</th><th>state</th><th>last seen</th><th>connected since</th></tr></thead>
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
}

/// RFC 3339, UTC, seconds (days to civil date: H. Hinnant's algorithm).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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
    use std::time::Duration;

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

    #[test]
    fn a_replaced_socket_does_not_take_the_device_offline() {
        connected("cam-test", "a");
        connected("cam-test", "b");
        disconnected("cam-test", "a");
        let v = to_json();
        let dev = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == "cam-test")
            .unwrap()
            .clone();
        assert_eq!(dev["online"], true);
        disconnected("cam-test", "b");
        let v = to_json();
        let dev = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == "cam-test")
            .unwrap()
            .clone();
        assert_eq!(dev["online"], false);
        assert!(dev["connected_since"].is_null());
        assert!(dev["last_seen"].as_str().unwrap().ends_with('Z'));
    }
}
