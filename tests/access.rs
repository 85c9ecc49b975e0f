//! Who may watch, against real peers: camstream-signal as a closed relay and the plain Node
//! relay, Node socket.io-client viewers (with and without tokens, and one claiming to be the
//! device), the device, the media stand-in and ffprobe.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::peers::*;
use common::*;

const VIEWER_SECRET: &str = "viewer-secret-0123456789";

/// The device with these `[signal]` keys, once it has found its room on the relay.
fn device(tag: &str, relay_port: u16, media_push: u16, signal: &str) -> Device {
    let cfg = device_config_signal(free_port(), relay_port, media_push, signal, "");
    let dev = Device::start(tag, &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    dev
}

/// Events a viewer received, by name.
fn events(p: &Peer) -> Vec<String> {
    p.lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event"].as_str().map(str::to_string))
        .collect()
}

fn text(p: &Peer) -> String {
    p.lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A member that was not let in received none of the device's or viewers' events, and neither
/// the token ("s3cret") nor the session's path.
fn assert_learned_nothing(who: &str, p: &Peer, path: &str) {
    let got = events(p);
    let t = text(p);
    for leaked in ["bridge", "auth", "heartbeatping", "heartbeatpong"] {
        assert!(
            !got.iter().any(|e| e == leaked),
            "{who} received `{leaked}`:\n{t}"
        );
    }
    assert!(!t.contains("s3cret"), "{who} learned the token:\n{t}");
    assert!(!t.contains(path), "{who} learned the path:\n{t}");
}

/// A signed viewer token made here, independently of the device's code (Node's crypto).
fn node_token(device: &str, name: &str, expires: u64) -> String {
    let script = r#"
const [secret, device, name, exp] = process.argv.slice(1);
const sig = require("crypto").createHmac("sha256", secret)
  .update(`camstream viewer v1\n${device}\n${exp}\n${name}`).digest("hex");
console.log(`cs1.${exp}.${name}.${sig}`);
"#;
    let out = Command::new("node")
        .args([
            "-e",
            script,
            VIEWER_SECRET,
            device,
            name,
            &expires.to_string(),
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn closed_relay_a_viewer_without_token_and_a_false_device_learn_nothing() {
    let dir = temp_dir("access-closed");
    let relay_port = free_port();
    let (_relay, key) = closed_relay(relay_port, &dir, "test01");
    let media = media_standin(free_port());
    let signal = format!("token = \"s3cret\"\ndevice_key = \"{key}\"");
    let dev = device("access-closed", relay_port, media.push, &signal);

    // Members that are not let in: a viewer without a token and two sockets claiming the device
    // id with wrong keys.
    let stranger = viewer_with(relay_port, "test01", 300, &[]);
    let false_dev = viewer_with(relay_port, "test01", 300, &["--find-key", &"0".repeat(64)]);
    let squatter = viewer_with(relay_port, "test01", 300, &["--find-key", "not-a-key"]);
    for p in [&false_dev, &squatter] {
        assert!(
            p.wait_for("\"refused\"", Duration::from_secs(10)).is_some(),
            "a wrong device key is not refused: {}",
            text(p)
        );
    }
    stranger
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("the stranger joins the room as a viewer");

    // The owner's viewer, with the token, after them: the real device still has its room.
    let owner = viewer_with(relay_port, "test01", 500, &["--token", "s3cret"]);
    let (_, line) = owner
        .wait_for("\"bridge\"", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no bridge for the owner:\n{}", dev.log_text()));
    let path = bridge_path(&line);
    assert_eq!(path.len(), 32);
    owner
        .wait_for("\"heartbeatpong\"", Duration::from_secs(5))
        .expect("heartbeatpong for the owner");
    let (codec, _, _, _) = ffprobe(
        &format!("rtsp://127.0.0.1:{}/channel/{path}", media.read),
        "tcp",
        1,
    )
    .expect("the owner's stream is readable");
    assert_eq!(codec, "h264");
    // Let a few heartbeats go by, then look at what everyone else received.
    std::thread::sleep(Duration::from_secs(2));
    for (who, p) in [
        ("viewer without token", &stranger),
        ("false device", &false_dev),
        ("squatter", &squatter),
    ] {
        assert_learned_nothing(who, p, &path);
    }
    // The device heard the stranger and refused it; nobody else got the device's answers.
    assert!(
        dev.log_text().contains("viewer refused"),
        "{}",
        dev.log_text()
    );
}

/// A stranger's heartbeats (no token) must not keep the uplink running once the viewer that
/// started it has gone: through the plain relay (anonymous viewers) and camstream-signal.
fn strangers_heartbeats(closed: bool) {
    let dir = temp_dir("access-lease");
    let relay_port = free_port();
    let (_relay, signal) = if closed {
        let (r, key) = closed_relay(relay_port, &dir, "test01");
        (r, format!("token = \"s3cret\"\ndevice_key = \"{key}\""))
    } else {
        (relay(relay_port), "token = \"s3cret\"".to_string())
    };
    let media = media_standin(free_port());
    let dev = device("access-lease", relay_port, media.push, &signal);
    // The stranger heartbeats every 300 ms for the whole test.
    let _stranger = viewer_with(relay_port, "test01", 300, &[]);
    let owner = viewer_with(
        relay_port,
        "test01",
        500,
        &["--token", "s3cret", "--no-heartbeat-after", "2000"],
    );
    owner
        .wait_for("\"bridge\"", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no bridge:\n{}", dev.log_text()));
    let t0 = Instant::now();
    // Owner's heartbeats stop ~2 s after it started; lease 3 s.
    dev.wait_log(
        "uplink: no viewer heartbeat within the lease",
        Duration::from_secs(2 + 3 + 3),
    );
    eprintln!(
        "uplink stopped {} ms after the owner's bridge, while the stranger kept heartbeating",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        dev.log_text().matches("uplink: pushing to").count(),
        1,
        "the stranger restarted the uplink:\n{}",
        dev.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        dev.log_text().matches("uplink: pushing to").count(),
        1,
        "the stranger restarted the uplink:\n{}",
        dev.log_text()
    );
}

#[test]
fn strangers_heartbeats_do_not_keep_the_uplink_plain_relay() {
    strangers_heartbeats(false);
}

#[test]
fn strangers_heartbeats_do_not_keep_the_uplink_closed_relay() {
    strangers_heartbeats(true);
}

#[test]
fn signed_viewer_tokens_expire_and_forgeries_are_refused() {
    let relay_port = free_port();
    let _relay = camstream_signal(relay_port);
    let media = media_standin(free_port());
    let dev = device(
        "access-signed",
        relay_port,
        media.push,
        &format!("viewer_secret = \"{VIEWER_SECRET}\""),
    );
    let cfg_file = dev.dir.join("camstream.toml");
    let mint = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("token")
            .arg("--config")
            .arg(&cfg_file)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "camstream token: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let good = mint(&["--viewer", "alice", "--valid", "3600"]);
    // The device's own minting and an independent one agree.
    let exp: u64 = good.split('.').nth(1).unwrap().parse().unwrap();
    assert_eq!(good, node_token("test01", "alice", exp));

    let expired = node_token("test01", "bob", now_s() - 10);
    let other_device = mint(&[
        "--viewer",
        "alice",
        "--valid",
        "3600",
        "--set",
        "device.id=test02",
    ]);
    let mut forged = good.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let longer = good.replacen(&exp.to_string(), &(exp + 86400).to_string(), 1);
    for (what, token) in [
        ("expired", &expired),
        ("for another device", &other_device),
        ("forged", &forged),
        ("with its expiry changed", &longer),
    ] {
        let v = viewer_with(relay_port, "test01", 500, &["--token", token]);
        assert!(
            v.wait_for("\"bridge\"", Duration::from_secs(4)).is_none(),
            "a token {what} was accepted:\n{}",
            dev.log_text()
        );
        drop(v);
    }
    assert!(
        !dev.log_text().contains("uplink: pushing to"),
        "{}",
        dev.log_text()
    );

    // A valid token: watching, and its end cuts the session although heartbeats go on.
    let soon = now_s() + 5;
    let short = node_token("test01", "carol", soon);
    let v = viewer_with(relay_port, "test01", 300, &["--token", &short]);
    v.wait_for("\"bridge\"", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a valid signed token was refused:\n{}", dev.log_text()));
    assert!(dev.log_text().contains("viewer carol let in"));
    dev.wait_log(
        "uplink: no viewer heartbeat within the lease",
        Duration::from_secs(10),
    );
    let stopped = now_s();
    assert!(
        stopped <= soon + 2,
        "the uplink ran {} s past the token's expiry",
        stopped - soon
    );
}

#[test]
fn closed_by_default_nobody_watches_without_a_rule() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let dev = device("access-default", relay_port, media.push, "");
    assert!(dev.log_text().contains("nobody can watch"));
    let v = viewer(relay_port, "test01", 300, None);
    assert!(
        v.wait_for("\"bridge\"", Duration::from_secs(5)).is_none(),
        "a device with no token and not open let a viewer in:\n{}",
        dev.log_text()
    );
    assert!(!dev.log_text().contains("uplink: pushing to"));
}

#[test]
fn closed_relay_routes_across_two_redis_nodes() {
    let dir = temp_dir("access-redis");
    let redis_port = free_port();
    let _redis = start_redis(redis_port);
    let url = format!("redis://127.0.0.1:{redis_port}");
    let (f, key) = device_secret(&dir, "test01");
    let (a, b) = (free_port(), free_port());
    let args = ["--redis", &url, "--device-secret-file", &f];
    let _node_a = camstream_signal_with(a, &args);
    let _node_b = camstream_signal_with(b, &args);
    let media = media_standin(free_port());
    // The device on node B; the owner, a stranger and a false device on node A.
    let signal = format!("token = \"s3cret\"\ndevice_key = \"{key}\"");
    let dev = device("access-redis", b, media.push, &signal);
    let stranger = viewer_with(a, "test01", 300, &[]);
    let false_dev = viewer_with(a, "test01", 300, &["--find-key", &"0".repeat(64)]);
    false_dev
        .wait_for("\"refused\"", Duration::from_secs(10))
        .expect("a wrong device key is refused on the other node");
    stranger
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("the device on node B is online for a viewer on node A");
    let owner = viewer_with(a, "test01", 500, &["--token", "s3cret"]);
    let (_, line) = owner
        .wait_for("\"bridge\"", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no bridge across nodes:\n{}", dev.log_text()));
    let path = bridge_path(&line);
    owner
        .wait_for("\"heartbeatpong\"", Duration::from_secs(5))
        .expect("heartbeatpong across nodes");
    std::thread::sleep(Duration::from_secs(2));
    for (who, p) in [
        ("viewer without token", &stranger),
        ("false device", &false_dev),
    ] {
        assert_learned_nothing(who, p, &path);
    }
}
