//! The in-process RTSP server, read by real clients: ffprobe and GStreamer's rtspsrc.

mod common;

use std::time::{Duration, Instant};

use gst::prelude::*;

use common::*;

#[test]
fn ffprobe_decodes_h264_over_tcp_and_udp() {
    let dev = Device::start("ffprobe", &dev_config(free_port(), ""), &[]);
    for transport in ["tcp", "udp"] {
        let (codec, w, h, frames) =
            ffprobe(&dev.url(), transport, 2).expect("ffprobe reads the stream");
        eprintln!("ffprobe {transport}: {codec} {w}x{h}, {frames} frames in 2 s");
        assert_eq!(codec, "h264");
        assert_eq!((w, h), (320, 240));
        assert!(
            frames >= 30,
            "only {frames} frames decoded over {transport}"
        );
    }
}

#[test]
fn two_gstreamer_clients_at_once_tcp_and_udp_get_the_source_rate() {
    let dev = Device::start("two-clients", &dev_config(free_port(), ""), &[]);
    let url = dev.url();
    let u2 = url.clone();
    let udp = std::thread::spawn(move || {
        gst_client(&u2, "udp", Duration::from_secs(3), Duration::from_secs(15))
    });
    let tcp = gst_client(&url, "tcp", Duration::from_secs(3), Duration::from_secs(15));
    let udp = udp.join().unwrap();
    for (name, s) in [("tcp", &tcp), ("udp", &udp)] {
        eprintln!("{name}: {s:?}");
        assert_eq!((s.width, s.height), (320, 240), "{name}");
        assert!(s.frames >= 60, "{name}: only {} frames in 3 s", s.frames);
        // Source is 30 fps; a broad band so a loaded CI machine does not fail it.
        assert!((20.0..=40.0).contains(&s.fps), "{name}: {:.1} fps", s.fps);
    }
}

#[test]
fn late_joiner_gets_a_keyframe_without_waiting_for_the_gop() {
    // A 4 s GOP: without a forced keyframe the late joiner would wait seconds. Clients get at
    // most one forced keyframe per interval between them, so the late joiner comes more than an
    // interval after the first client got its own.
    let cfg = dev_config(free_port(), "").replace(
        "bitrate_kbps = 500",
        "bitrate_kbps = 500\nkeyframe_interval_ms = 4000",
    );
    let dev = Device::start("late-joiner", &cfg, &[]);
    let url = dev.url();
    let (first, sink) = decoding_client(&url, "tcp");
    sink.set_property("drop", true);
    sink.set_property("max-buffers", 1u32);
    first.set_state(gst::State::Playing).unwrap();
    assert!(
        sink.try_pull_sample(gst::ClockTime::from_seconds(15))
            .is_some(),
        "the first client got no picture"
    );
    // The periodic keyframe comes 4 s after the first client's; the late joiner asks 0.8 s
    // after that, so without its own keyframe it would wait about 3 s.
    std::thread::sleep(Duration::from_millis(4800));
    let late = gst_client(
        &url,
        "tcp",
        Duration::from_millis(500),
        Duration::from_secs(15),
    );
    let _ = first.set_state(gst::State::Null);
    eprintln!("late joiner: {late:?}");
    let t = late.first_frame.expect("late joiner got a picture");
    eprintln!(
        "late joiner: first decoded frame after {} ms (connect + describe + setup + play)",
        t.as_millis()
    );
    // The next periodic keyframe is about 3 s away; well under it proves the forced keyframe.
    assert!(t < Duration::from_millis(1500), "late joiner waited {t:?}");
}

/// Clients that connect, play until their first packet and leave, `threads` at a time, until
/// `until`: returns how many got a packet.
fn play_flood(url: &str, threads: usize, until: Instant) -> usize {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let mut played = 0;
                while Instant::now() < until {
                    // No decoder: the flood is about PLAYs, not this machine's CPU.
                    let (p, sink) = rtsp_client(&url, "tcp", "");
                    p.set_state(gst::State::Playing).unwrap();
                    if sink
                        .try_pull_sample(gst::ClockTime::from_seconds(5))
                        .is_some()
                    {
                        played += 1;
                    }
                    let _ = p.set_state(gst::State::Null);
                }
                played
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

#[test]
fn a_keyframe_flood_from_rtsp_clients_does_not_raise_the_recordings_keyframe_rate() {
    gst::init().unwrap();
    let dir = temp_dir("kf-flood");
    let interval = 2.0;
    let cfg = dev_config(free_port(), "")
        .replace(
            "bitrate_kbps = 500",
            "bitrate_kbps = 500\nkeyframe_interval_ms = 2000",
        )
        .replace(
            "[recording]\nenabled = false",
            &format!(
                "[recording]\ndir = \"{}\"\nsegment_seconds = 60",
                dir.display()
            ),
        );
    let mut dev = Device::start("kf-flood", &cfg, &[]);
    dev.wait_log("recording: first frame at", Duration::from_secs(10));
    // Six clients at a time, each playing until its first packet and leaving, for 12 s: every
    // one of them asks for a keyframe (its PLAY, and a new media when the last one had left).
    let played = play_flood(&dev.url(), 6, Instant::now() + Duration::from_secs(12));
    std::thread::sleep(Duration::from_secs(1));
    let (code, _) = dev.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let files = recordings::mp4_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let frames = recordings::frame_times(&files[0]);
    let keys = recordings::keyframe_times(&files[0]);
    let span = frames[frames.len() - 1] - frames[0];
    let widest = keys.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let closest = keys
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::MAX, f64::min);
    eprintln!(
        "{played} client PLAYs in 12 s; recording {span:.1} s: {} keyframes (periodic alone: {:.1}), gaps {closest:.3} .. {widest:.3} s",
        keys.len(),
        span / interval + 1.0
    );
    assert!(played >= 30, "only {played} clients played: no flood");
    // The periodic keyframes (one per interval, plus the first), and at most two more for
    // clients over the whole recording.
    assert!(
        keys.len() as f64 <= span / interval + 1.0 + 2.0,
        "{} keyframes in {span:.1} s at a {interval} s interval, the first at {:?}",
        keys.len(),
        &keys[..keys.len().min(20)]
    );
    // The interval still holds: no gap wider than it (and a frame).
    assert!(
        widest <= interval + 0.05,
        "keyframes {widest:.3} s apart: {keys:?}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn digest_credentials_are_required_when_configured() {
    let port = free_port();
    let cfg = dev_config(port, "user = \"viewer\"\npassword = \"s3cret\"");
    let dev = Device::start("auth", &cfg, &[]);
    let denied = ffprobe(&dev.url(), "tcp", 1);
    assert!(
        denied.is_err(),
        "no credentials must be refused: {denied:?}"
    );
    let url = format!("rtsp://viewer:s3cret@127.0.0.1:{port}/live");
    let (codec, _, _, frames) = ffprobe(&url, "tcp", 1).expect("credentials accepted");
    assert_eq!(codec, "h264");
    assert!(frames > 0);
}

#[test]
fn every_address_without_credentials_is_a_loud_warning() {
    // Bound to every address with no credentials: warned at start and by `probe`.
    let port = free_port();
    let open = dev_config(port, "").replace("bind = \"127.0.0.1\"", "bind = \"0.0.0.0\"");
    let dev = Device::start("open-warning", &open, &[]);
    dev.wait_log("RTSP OPEN TO EVERYONE", Duration::from_secs(5));
    let line = dev
        .log_text()
        .lines()
        .find(|l| l.contains("RTSP OPEN TO EVERYONE"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("WARN") && line.contains(&format!("0.0.0.0:{port}")),
        "{line}"
    );
    drop(dev);
    let probe = |text: &str| {
        let dir = temp_dir("open-probe");
        let f = dir.join("c.toml");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["probe", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = probe(&open);
    assert!(p.contains("WARNING: RTSP OPEN TO EVERYONE"), "{p}");

    // With credentials, or on loopback only: no warning.
    let closed = open.replace(
        &format!("port = {port}"),
        &format!("port = {port}\nuser = \"viewer\"\npassword = \"s3cret\""),
    );
    let dev = Device::start("closed-no-warning", &closed, &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!dev.log_text().contains("OPEN TO EVERYONE"));
    drop(dev);
    let p = probe(&closed);
    assert!(
        p.contains("digest credentials required") && !p.contains("WARNING"),
        "{p}"
    );
    let p = probe(&dev_config(port, ""));
    assert!(
        p.contains("RTSP: 127.0.0.1") && !p.contains("WARNING"),
        "{p}"
    );
}

/// gst-rtsp-server's grace after a session's timeout, and the period of the daemon's check.
const SESSION_GRACE: Duration = Duration::from_secs(5 + 1);

#[test]
fn udp_sessions_of_vanished_clients_expire_and_release_their_sockets() {
    const TIMEOUT: u64 = 3;
    let expiry = Duration::from_secs(TIMEOUT) + SESSION_GRACE;
    let cfg = dev_config(free_port(), &format!("session_timeout_seconds = {TIMEOUT}"));
    let dev = Device::start("vanish", &cfg, &[]);
    let url = dev.url();
    let pid = dev.pid();
    let base = udp_sockets(pid);

    // Killed: its connection closes, and its part of the media goes at once.
    let killed = UdpRtspClient::play(&url).expect("a raw UDP client plays");
    assert_eq!(
        killed.timeout,
        Some(TIMEOUT as u32),
        "the session header announces the timeout"
    );
    let n = killed.rtp_packets(Duration::from_secs(1));
    let playing = udp_sockets(pid);
    eprintln!("killed client: {n} RTP packets in 1 s; daemon UDP sockets {base} -> {playing}");
    assert!(n >= 10, "only {n} RTP packets in 1 s");
    assert!(playing > base, "no UDP socket for the media: {playing}");
    drop(killed.tcp);
    let quiet = wait_for(Duration::from_secs(5), || {
        udp_packets(&killed.rtp, Duration::from_millis(500)) == 0
    });
    assert!(quiet.is_some(), "RTP still flows to a client that hung up");
    assert!(
        wait_for(Duration::from_secs(5), || udp_sockets(pid) == base).is_some(),
        "UDP sockets: {} after the killed client, {base} before",
        udp_sockets(pid)
    );

    // Unplugged: its connection stays open and silent, its UDP port receives but never
    // answers. Meanwhile a bare client keeps its session alive with nothing but an RTCP
    // receiver report every timeout, over twice the timeout and its grace, and real clients
    // (rtspsrc, ffmpeg: keep-alive requests and RTCP) play for 15 s.
    let mut unplugged = UdpRtspClient::play(&url).expect("a raw UDP client plays");
    let reporting = UdpRtspClient::play(&url).expect("a raw UDP client plays");
    let u = url.clone();
    let rtspsrc = std::thread::spawn(move || {
        gst_client(&u, "udp", Duration::from_secs(15), Duration::from_secs(15))
    });
    let u = url.clone();
    let ffmpeg = std::thread::spawn(move || ffprobe(&u, "udp", 15));
    let t0 = Instant::now();
    let mut unplugged_rate = Vec::new();
    let mut reporting_rate = Vec::new();
    for s in 1..=(2 * expiry.as_secs() + 1) {
        if s % TIMEOUT == 1 {
            reporting.send_receiver_report();
        }
        std::thread::sleep((t0 + Duration::from_secs(s)).saturating_duration_since(Instant::now()));
        unplugged_rate.push(udp_drain(&unplugged.rtp));
        reporting_rate.push(udp_drain(&reporting.rtp));
    }
    eprintln!("RTP packets per second, unplugged client: {unplugged_rate:?}");
    eprintln!("RTP packets per second, client sending only RTCP: {reporting_rate:?}");
    let last = unplugged_rate
        .iter()
        .rposition(|&n| n > 0)
        .map_or(0, |i| i + 1);
    assert!(
        last <= (expiry + Duration::from_secs(2)).as_secs() as usize,
        "RTP still reached the unplugged client {last} s after it went silent (timeout {TIMEOUT} s)"
    );
    assert!(
        last >= TIMEOUT as usize,
        "the unplugged client was cut off after {last} s, before its timeout of {TIMEOUT} s"
    );
    assert!(
        reporting_rate.iter().all(|&n| n >= 10),
        "a client sending RTCP reports was cut off: {reporting_rate:?}"
    );
    // Its connection, left without a session, is closed after as long again.
    assert!(
        closed_by_peer(&mut unplugged.tcp, Duration::from_secs(TIMEOUT + 3)),
        "the daemon kept the unplugged client's connection open"
    );
    dev.wait_log(
        &format!("RTSP: session {} expired", unplugged.session),
        Duration::from_secs(1),
    );
    let s = rtspsrc.join().unwrap();
    eprintln!("rtspsrc over UDP meanwhile: {s:?}");
    assert!(
        s.frames >= 15 * 20,
        "rtspsrc got {} frames in 15 s: cut off?",
        s.frames
    );
    let (_, _, _, frames) = ffmpeg.join().unwrap().expect("ffprobe reads over UDP");
    eprintln!("ffprobe over UDP meanwhile: {frames} frames in 15 s");
    assert!(
        frames >= 15 * 20,
        "ffprobe got {frames} frames in 15 s: cut off?"
    );

    // The reporting client falls silent too: the last session goes, and with it the media.
    let gone = wait_for(expiry + Duration::from_secs(3), || udp_sockets(pid) == base);
    eprintln!("all clients silent: daemon UDP sockets back to {base} after {gone:?}");
    assert!(
        gone.is_some(),
        "UDP sockets: {} with every client gone, {base} before",
        udp_sockets(pid)
    );
    udp_drain(&reporting.rtp);
    assert_eq!(
        udp_packets(&reporting.rtp, Duration::from_secs(1)),
        0,
        "RTP still flows to the silent client"
    );
    let (codec, _, _, frames) = ffprobe(&url, "udp", 2).expect("ffprobe still reads over UDP");
    assert_eq!(codec, "h264");
    assert!(frames >= 30, "ffprobe afterwards: {frames} frames in 2 s");
}

#[test]
fn five_hundred_vanished_udp_clients_leave_no_memory_sockets_or_connections_behind() {
    const TIMEOUT: u64 = 3;
    const CLIENTS: usize = 500;
    let expiry = Duration::from_secs(TIMEOUT) + SESSION_GRACE;
    let cfg = dev_config(
        free_port(),
        &format!("session_timeout_seconds = {TIMEOUT}\nmax_clients = 0"),
    );
    let dev = Device::start("vanish-500", &cfg, &[]);
    let url = dev.url();
    let pid = dev.pid();
    let base_udp = udp_sockets(pid);
    // Half of them killed (their connections close), half unplugged (their connections stay
    // open, silent): RTP goes on to the unplugged ones until their sessions expire.
    let vanish = |i: usize| {
        let c = UdpRtspClient::play(&url).unwrap_or_else(|e| panic!("client {i}: {e}"));
        if i & 1 == 0 {
            None
        } else {
            Some(c.unplug())
        }
    };
    let settle = |what: &str| {
        let t = wait_for(expiry + Duration::from_secs(5), || {
            udp_sockets(pid) == base_udp
        });
        assert!(
            t.is_some(),
            "{what}: {} UDP sockets, {base_udp} before any client",
            udp_sockets(pid)
        );
    };

    // Warm-up: the first media and its branch, once.
    let warm: Vec<_> = (0..20).filter_map(vanish).collect();
    settle("after the warm-up");
    drop(warm);
    std::thread::sleep(Duration::from_secs(1));
    let rss_base = rss_kib(pid);

    let t0 = Instant::now();
    let (mut rss_peak, mut udp_peak) = (0, 0);
    let mut open = Vec::new();
    for i in 0..CLIENTS {
        open.extend(vanish(i));
        if i % 20 == 0 {
            rss_peak = rss_peak.max(rss_kib(pid));
            udp_peak = udp_peak.max(udp_sockets(pid));
        }
    }
    let played_in = t0.elapsed();
    let rss_500 = rss_kib(pid);
    let udp_500 = udp_sockets(pid);
    rss_peak = rss_peak.max(rss_500);
    udp_peak = udp_peak.max(udp_500);

    settle("after the sessions' timeout");
    let expired_in = t0.elapsed() - played_in;
    let closed = wait_for(Duration::from_secs(TIMEOUT + 5), || {
        open.iter_mut()
            .all(|c| closed_by_peer(c, Duration::from_millis(1)))
    });
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(pid);
    let udp_after = udp_sockets(pid);
    // Every session, the killed clients' too (they would stay in the pool, empty), expired.
    let expired = dev
        .log_text()
        .matches("expired: nothing from its client")
        .count();
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "{CLIENTS} vanished UDP clients played in {:.1} s; RSS {:.1} MiB after warm-up, \
         {:.1} after {CLIENTS} (peak {:.1}), {:.1} after expiry ({:.1} s later); UDP sockets \
         {base_udp} before, {udp_500} after {CLIENTS} (peak {udp_peak}), {udp_after} after \
         expiry; sessions expired: {expired}; unplugged connections closed by the daemon: {}",
        played_in.as_secs_f64(),
        mib(rss_base),
        mib(rss_500),
        mib(rss_peak),
        mib(rss_after),
        expired_in.as_secs_f64(),
        closed.is_some()
    );
    assert_eq!(udp_after, base_udp);
    assert_eq!(expired, 20 + CLIENTS);
    assert!(
        rss_after <= rss_base + 20 * 1024,
        "RSS {:.1} MiB after expiry, {:.1} MiB after warm-up",
        mib(rss_after),
        mib(rss_base)
    );
    assert!(
        closed.is_some(),
        "the daemon kept unplugged clients' connections open after their sessions expired"
    );
}
