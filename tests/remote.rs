//! Remote viewing end to end with real peers: the real Node socket.io-client following the
//! seed's viewer steps, a plain Node socket.io relay, the device, and the media stand-in
//! (gst-rtsp-server in RECORD mode) as the remote media server; ffprobe reads what was pushed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::peers::*;
use common::recordings::*;
use common::*;
use nix::sys::signal::Signal;

#[test]
fn viewer_gets_bridge_and_the_pushed_stream_is_readable_at_once() {
    bridge_then_readable(relay);
}

#[test]
fn bridge_through_camstream_signal() {
    bridge_then_readable(camstream_signal);
}

fn bridge_then_readable(start_relay: fn(u16) -> Peer) {
    let relay_port = free_port();
    let _relay = start_relay(relay_port);
    let media = media_standin(free_port());
    let dev = Device::start(
        "remote-bridge",
        &device_config(free_port(), relay_port, media.push, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));

    let v = viewer(relay_port, "test01", 1000, None);
    let (t_join, _) = v
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("join");
    let (t_bridge, line) = v
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge");
    let path = bridge_path(&line);
    assert_eq!(path.len(), 32, "128-bit path id: {path}");
    // bridge follows the server's answer to RECORD, not just the request.
    dev.wait_log("RECORD answered", Duration::from_secs(1));
    let url = format!("rtsp://127.0.0.1:{}/channel/{path}", media.read);
    let t0 = Instant::now();
    let s = gst_client(
        &url,
        "tcp",
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    let first = s.first_frame.expect("pushed stream readable");
    eprintln!(
        "auth -> bridge {} ms; bridge -> first decoded frame at a reader of the media server {} ms",
        (t_bridge - t_join).as_millis(),
        (t0 - t_bridge + first).as_millis()
    );
    assert!(
        t0 - t_bridge + first < Duration::from_secs(1),
        "not readable within 1 s of bridge"
    );
    let (codec, _, _, _) = ffprobe(&url, "tcp", 1).expect("ffprobe reads the pushed stream");
    assert_eq!(codec, "h264");
    assert!(media.peer.count("push started") >= 1);
}

#[test]
fn uplink_stops_when_heartbeats_stop_and_two_viewers_share_it() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let dev = Device::start(
        "remote-lease",
        &device_config(free_port(), relay_port, media.push, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let a = viewer(relay_port, "test01", 1000, Some(2000));
    let (_, la) = a
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge a");
    let b = viewer(relay_port, "test01", 1000, Some(2000));
    let (_, lb) = b
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge b");
    assert_eq!(
        bridge_path(&la),
        bridge_path(&lb),
        "one uplink for both viewers"
    );
    assert_eq!(dev.log_text().matches("uplink: pushing to").count(), 1);
    // Heartbeats stop after 2 s; lease 3 s: gone within lease + 2 s of the last heartbeat.
    let t_last = Instant::now();
    dev.wait_log(
        "uplink: no viewer heartbeat within the lease",
        Duration::from_secs(3 + 2 + 2),
    );
    eprintln!(
        "uplink stopped {} ms after the test's last-heartbeat mark",
        t_last.elapsed().as_millis()
    );
}

#[test]
fn device_refinds_after_relay_restart_and_uplink_returns_after_media_restart() {
    let relay_port = free_port();
    let relay1 = relay(relay_port);
    let media_push = free_port();
    let media = media_standin(media_push);
    let dev = Device::start(
        "remote-restart",
        &device_config(free_port(), relay_port, media_push, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    drop(relay1);
    std::thread::sleep(Duration::from_millis(500));
    let _relay2 = relay(relay_port);
    // The device reconnects, finds its room again, and a new viewer works.
    let t0 = Instant::now();
    while dev
        .log_text()
        .matches("signal: connected, joining room")
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no reconnect:\n{}",
            dev.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = viewer(relay_port, "test01", 500, None);
    let (_, line) = v
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge after relay restart");
    let path = bridge_path(&line);
    // Media server killed and restarted: the uplink comes back by itself while the viewer watches.
    drop(media);
    dev.wait_log("uplink:", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1));
    let media2 = media_standin(media_push);
    assert!(
        media2
            .peer
            .wait_for("push started", Duration::from_secs(15))
            .is_some(),
        "{}",
        dev.log_text()
    );
    let url = format!("rtsp://127.0.0.1:{}/channel/{path}", media2.read);
    let s = gst_client(
        &url,
        "tcp",
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    assert!(
        s.frames > 0,
        "uplink did not come back:\n{}",
        dev.log_text()
    );
}

#[test]
fn attach_detach_cycles_lose_no_recorded_frame() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("remote-rec");
    let cfg = device_config(free_port(), relay_port, media.push, "")
        .replace(
            "[recording]\nenabled = false",
            &format!(
                "[recording]\ndir = \"{}\"\nsegment_seconds = 5",
                rec.display()
            ),
        )
        .replace("lease_seconds = 3", "lease_seconds = 1");
    let mut dev = Device::start("remote-cycles", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    for i in 0..20 {
        let v = viewer(relay_port, "test01", 60_000, None);
        v.wait_for("\"bridge\"", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("cycle {i}: no bridge"));
        drop(v);
        let want = i + 1;
        let t0 = Instant::now();
        while dev
            .log_text()
            .matches("no viewer heartbeat within the lease")
            .count()
            < want
        {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "cycle {i}: uplink not detached"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let (written, _, dropped) = summary_frames(&dev.log_text());
    assert_eq!(dropped, 0);
    let in_files: u64 = mp4_files(&rec)
        .iter()
        .map(|f| frame_times(f).len() as u64)
        .sum();
    assert_eq!(
        in_files, written,
        "frames in files vs frames written over 20 uplink cycles"
    );
    std::fs::remove_dir_all(rec).ok();
}

#[test]
fn malformed_socketio_events_are_dropped_and_the_device_keeps_serving() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let dev = Device::start(
        "remote-flood",
        &device_config_signal(
            free_port(),
            relay_port,
            media.push,
            "token = \"s3cret\"",
            "",
        ),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let script = r#"
const { io } = require("socket.io-client");
const s = io(process.argv[1], { transports: ["websocket"] });
s.on("connect", () => { s.emit("find", "test01"); });
s.on("join", () => {
  const big = "x".repeat(100000);
  for (let i = 0; i < 300; i++) {
    s.emit("auth", big); s.emit("auth", 42); s.emit("auth", { token: ["x"] }); s.emit("auth", Buffer.from([1, 2, 3]));
    s.emit("heartbeatping", { nested: { deep: [1, 2, 3] } }); s.emit("bridge", null); s.emit("auth");
    s.emit("auth", "wrong-token"); s.emit("heartbeatping", Buffer.alloc(1000));
  }
  setTimeout(() => process.stdout.write("flood done\n", () => process.exit(0)), 1500);
});
"#;
    let mut c = Command::new("node");
    c.current_dir(node_dir())
        .arg("-e")
        .arg(script)
        .arg(format!("http://127.0.0.1:{relay_port}"));
    let flood = Peer::spawn(c);
    assert!(flood
        .wait_for("flood done", Duration::from_secs(20))
        .is_some());
    // No session from bad or missing tokens.
    assert!(
        !dev.log_text().contains("uplink: pushing to"),
        "{}",
        dev.log_text()
    );
    // Still serving RTSP, still answering the protocol.
    let (codec, _, _, frames) = ffprobe(&dev.url(), "tcp", 1).expect("RTSP after the flood");
    assert_eq!(codec, "h264");
    assert!(frames > 0);
    let script = r#"
const { io } = require("socket.io-client");
const s = io(process.argv[1], { transports: ["websocket"] });
s.on("connect", () => s.emit("find", "test01"));
s.on("join", () => { s.emit("auth", { token: "s3cret" }); s.emit("heartbeatping"); });
s.on("bridge", (p) => process.stdout.write("bridge " + p + "\n", () => process.exit(0)));
"#;
    let mut c = Command::new("node");
    c.current_dir(node_dir())
        .arg("-e")
        .arg(script)
        .arg(format!("http://127.0.0.1:{relay_port}"));
    let good = Peer::spawn(c);
    assert!(
        good.wait_for("bridge ", Duration::from_secs(10)).is_some(),
        "{}",
        dev.log_text()
    );
}

#[test]
fn two_relay_nodes_share_rooms_through_redis() {
    let redis_port = free_port();
    let redis = start_redis(redis_port);
    let url = format!("redis://127.0.0.1:{redis_port}");
    let (a, b) = (free_port(), free_port());
    let _node_a = camstream_signal_with(a, &["--redis", &url]);
    let _node_b = camstream_signal_with(b, &["--redis", &url]);
    let media = media_standin(free_port());
    // The device on node B, the viewer on node A.
    let dev = Device::start(
        "remote-redis",
        &device_config(free_port(), b, media.push, ""),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let v = viewer(a, "test01", 1000, None);
    let (_, joined) = v
        .wait_for("\"join\"", Duration::from_secs(10))
        .expect("viewer on node A joins the device's room on node B");
    assert!(joined.contains("join"));
    let (_, line) = v
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("bridge across nodes");
    v.wait_for("\"heartbeatpong\"", Duration::from_secs(5))
        .expect("heartbeatpong across nodes");
    let url = format!(
        "rtsp://127.0.0.1:{}/channel/{}",
        media.read,
        bridge_path(&line)
    );
    let s = gst_client(
        &url,
        "tcp",
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    assert!(s.frames > 0);

    // Redis restarts (an upgrade, a crash): the nodes reconnect, subscribe again, and a new
    // viewer on node A still reaches the device on node B.
    drop(v);
    drop(redis);
    std::thread::sleep(Duration::from_millis(500));
    let redis = start_redis(redis_port);
    let v2 = viewer(a, "test01", 1000, None);
    v2.wait_for("\"join\"", Duration::from_secs(20))
        .expect("after the Redis restart, the viewer on node A joins the room on node B");
    v2.wait_for("\"bridge\"", Duration::from_secs(20))
        .expect("bridge across nodes after the Redis restart");
    drop(redis);
}

/// Production runs on TLS: the relay over HTTPS/WSS and the push over RTSPS, both with a
/// certificate from a private authority the device is told to trust.
#[test]
fn tls_relay_and_rtsps_push_with_a_private_ca() {
    let dir = temp_dir("tls");
    let (cert, key) = self_signed_cert(&dir);
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let relay_port = free_port();
    let _relay = relay_with(relay_port, &["--tls", cert_s, key_s]);
    let media = media_standin_with(free_port(), &["--tls-cert", cert_s, "--tls-key", key_s]);
    let cfg = format!(
        "{}\n[signal]\nenabled = true\nurl = \"https://127.0.0.1:{relay_port}\"\n\
         tls_ca_file = \"{cert_s}\"\nlease_seconds = 3\nreconnect_max_seconds = 2\nopen = true\n\
         [uplink]\nurl = \"rtsps://127.0.0.1:{}/channel/{{path}}\"\ntls_ca_file = \"{cert_s}\"\n\
         retry_max_seconds = 1\n",
        dev_config(free_port(), ""),
        media.push
    );
    let dev = Device::start("remote-tls", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));

    let v = viewer_at(
        &format!("https://127.0.0.1:{relay_port}"),
        "test01",
        1000,
        None,
        Some(&cert),
    );
    let (_, line) = v
        .wait_for("\"bridge\"", Duration::from_secs(15))
        .expect("bridge over wss with the push over rtsps");
    let path = bridge_path(&line);
    assert!(dev.log_text().contains("pushing to rtsps://"));
    let url = format!("rtsp://127.0.0.1:{}/channel/{path}", media.read);
    let (codec, _, _, _) = ffprobe(&url, "tcp", 1).expect("the stream pushed over rtsps");
    assert_eq!(codec, "h264");
    drop(dev);
    std::fs::remove_dir_all(&dir).ok();
}
