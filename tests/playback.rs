//! Recordings from afar, end to end with real peers: the device records 2 s segments with each
//! frame's capture time drawn in as a QR code; the real Node socket.io-client viewer lists them
//! and plays ranges back through a plain Node socket.io relay; the media stand-in takes the
//! pushed stream (RTSP RECORD) and writes it as HLS, whose segments are decoded here frame by
//! frame and read back with zbar. Frames are judged by their capture times, not by log lines.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::peers::*;
use common::recordings::*;
use common::*;
use gst::prelude::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// One decoded frame: whether it was a keyframe, and the capture time (µs since the epoch) its
/// QR code says, if zbar read it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    key: bool,
    capture: Option<u64>,
}

/// Decodes every frame of `file` (MP4 or MPEG-TS) and reads its QR code.
fn decode_frames(file: &Path) -> Vec<Frame> {
    decode_checked(file).0
}

/// The same, and the decoding pipeline's error, if it posted one.
fn decode_checked(file: &Path) -> (Vec<Frame>, Option<String>) {
    gst::init().unwrap();
    let p = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! parsebin ! identity name=coded ! avdec_h264 ! identity name=decoded \
         ! videoconvert ! video/x-raw,format=I420 ! zbar cache=false ! fakesink sync=false",
        file.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let keys = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let decoded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let k = keys.clone();
    p.by_name("coded")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                if let Some(pts) = b.pts() {
                    k.lock().unwrap().insert(
                        pts.nseconds(),
                        !b.flags().contains(gst::BufferFlags::DELTA_UNIT),
                    );
                }
            }
            gst::PadProbeReturn::Ok
        });
    let d = decoded.clone();
    p.by_name("decoded")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                d.lock().unwrap().push(pts.nseconds());
            }
            gst::PadProbeReturn::Ok
        });
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let mut codes = std::collections::HashMap::new();
    let mut error = None;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                // A segment cut short at the end of a push: what was decoded counts.
                eprintln!("{}: {}", file.display(), e.error());
                error = Some(e.error().to_string());
                break;
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "barcode") {
                    if let (Ok(ts), Ok(sym)) =
                        (s.get::<u64>("timestamp"), s.get::<String>("symbol"))
                    {
                        if let Ok(us) = sym.trim().parse::<u64>() {
                            codes.insert(ts, us);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    p.set_state(gst::State::Null).unwrap();
    let keys = keys.lock().unwrap();
    let out = decoded
        .lock()
        .unwrap()
        .iter()
        .map(|pts| Frame {
            key: keys.get(pts).copied().unwrap_or(false),
            capture: codes.get(pts).copied(),
        })
        .collect();
    (out, error)
}

/// Capture times of every frame of `files` (each file's frames in order), and how many frames
/// had no readable code.
fn captures(files: &[PathBuf]) -> (Vec<Frame>, usize) {
    let mut all = Vec::new();
    let mut unread = 0;
    for f in files {
        let frames = decode_frames(f);
        unread += frames.iter().filter(|f| f.capture.is_none()).count();
        all.extend(frames);
    }
    (all, unread)
}

/// A recording device on a plain relay with the media stand-in: 2 s segments, capture times in
/// QR codes, `extra` appended to its config.
fn recording_device(tag: &str, relay_port: u16, media: &Media, rec: &Path, extra: &str) -> Device {
    recording_device_with(tag, relay_port, media, rec, extra)
}

/// The same, with `recording` settings added to the `[recording]` section.
fn recording_device_with(
    tag: &str,
    relay_port: u16,
    media: &Media,
    rec: &Path,
    recording: &str,
) -> Device {
    recording_device_signal(tag, relay_port, media, rec, recording, "open = true")
}

/// The same, with these `[signal]` keys (who may watch, the device key).
fn recording_device_signal(
    tag: &str,
    relay_port: u16,
    media: &Media,
    rec: &Path,
    recording: &str,
    signal: &str,
) -> Device {
    let cfg = device_config_signal(free_port(), relay_port, media.push, signal, "")
        .replace(
            "[recording]\nenabled = false",
            &format!(
                "[recording]\ndir = \"{}\"\nsegment_seconds = 2\n{recording}",
                rec.display()
            ),
        )
        .replace(
            "source = \"test\"",
            "source = \"test\"\ntest_overlay = \"timestamp-qr\"",
        )
        .replace("bitrate_kbps = 500", "bitrate_kbps = 1200");
    let dev = Device::start(tag, &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    dev
}

/// The viewer's answers: the first argument of each `event` line, in order.
fn answers(v: &Peer, event: &str) -> Vec<Value> {
    v.lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<Value>(l).ok())
        .filter(|j| j["event"] == event)
        .map(|j| j["arg"].clone())
        .collect()
}

/// Waits for an `event` answer that `pred` accepts.
fn wait_answer(v: &Peer, event: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(a) = answers(v, event).into_iter().find(|a| pred(a)) {
            return a;
        }
        assert!(
            t0.elapsed() < timeout,
            "no {event} answer within {timeout:?}; the viewer saw:\n{}",
            v.lines
                .lock()
                .unwrap()
                .iter()
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn viewer_args(relay_port: u16, args: &[&str]) -> Peer {
    viewer_with(relay_port, "test01", 1000, args)
}

fn epoch(us: u64) -> String {
    format!("{:.6}", us as f64 / 1e6)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The HLS segments the stand-in wrote for `path`, in order.
fn pushed_segments(media: &Media, path: &str) -> Vec<PathBuf> {
    let dir = media.dir.join("channel").join(path);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    segs.retain(|p| p.extension().is_some_and(|x| x == "ts"));
    segs.sort();
    segs
}

/// Checks the recorder lost no frame: frames in the files = frames it wrote, none dropped.
fn assert_recording_whole(dev: &mut Device, rec: &Path) -> u64 {
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let (written, files, dropped) = summary_frames(&dev.log_text());
    let in_files: u64 = mp4_files(rec)
        .iter()
        .map(|f| frame_times(f).len() as u64)
        .sum();
    eprintln!("recording: {written} frames written in {files} files, {dropped} dropped; {in_files} frames in the files");
    assert_eq!(dropped, 0);
    assert_eq!(in_files, written, "frames in files vs frames written");
    written
}

#[test]
fn recordings_are_listed_and_a_range_across_a_segment_boundary_plays_frame_for_frame() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("playback-rec");
    let mut dev = recording_device("playback-range", relay_port, &media, &rec, "");
    std::thread::sleep(Duration::from_secs(9));

    // The listing: one open-ended span over every file on the card.
    let t_list = now_us();
    let v = viewer_args(
        relay_port,
        &[
            "--recordings",
            &epoch(t_list - 120_000_000),
            &epoch(t_list + 10_000_000),
        ],
    );
    let list = wait_answer(&v, "recordings", Duration::from_secs(10), |a| {
        a.get("spans").is_some()
    });
    drop(v);
    eprintln!("recordings: {list}");
    let files = mp4_files(&rec);
    let spans = list["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "{list}");
    assert_eq!(spans[0]["open"], Value::Bool(true));
    assert_eq!(spans[0]["end"], Value::Null);
    assert!(files.len() >= 4, "expected several 2 s segments: {files:?}");
    let listed = spans[0]["files"].as_u64().unwrap() as usize;
    assert!(
        listed == files.len() || listed + 1 == files.len(),
        "{listed} files listed, {} on the card",
        files.len()
    );
    let span_s = spans[0]["duration_s"].as_f64().unwrap();
    assert!(span_s > 8.0 && span_s < 13.0, "span of {span_s} s");
    assert!(list["gaps"].as_array().unwrap().is_empty());
    assert!(list["unsynced"].as_array().unwrap().is_empty());

    // What the finished files hold, by capture time.
    let finished = &files[..files.len() - 1];
    let per_file: Vec<Vec<Frame>> = finished.iter().map(|f| decode_frames(f)).collect();
    let recorded: Vec<Frame> = per_file.iter().flatten().copied().collect();
    let unread = recorded.iter().filter(|f| f.capture.is_none()).count();
    eprintln!(
        "{} frames in {} finished files, {unread} without a readable code",
        recorded.len(),
        finished.len()
    );
    assert!(
        unread <= recorded.len() / 100,
        "{unread} of {} frames without a readable code",
        recorded.len()
    );
    // The boundary between the second and the third file.
    let boundary = per_file[2].iter().find_map(|f| f.capture).unwrap();
    let times: Vec<(u64, bool)> = recorded
        .iter()
        .filter_map(|f| f.capture.map(|c| (c, f.key)))
        .collect();
    let keys: Vec<u64> = times.iter().filter(|t| t.1).map(|t| t.0).collect();
    // From the middle of a GOP about 1.2 s before the boundary to the middle between two frames
    // about 1 s after it.
    let k0 = *keys
        .iter()
        .rev()
        .find(|k| **k <= boundary - 1_200_000)
        .unwrap();
    let k1 = *keys.iter().find(|k| **k > k0).unwrap();
    let from = (k0 + k1) / 2;
    let j = times
        .iter()
        .position(|t| t.0 >= boundary + 1_000_000)
        .unwrap();
    let to = (times[j].0 + times[j + 1].0) / 2;
    let expected: Vec<u64> = times
        .iter()
        .map(|t| t.0)
        .filter(|c| *c >= k0 && *c < to)
        .collect();
    eprintln!(
        "range: from {} (keyframe before it {}) to {}, across the boundary at {}: {} frames recorded",
        epoch(from),
        epoch(k0),
        epoch(to),
        epoch(boundary),
        expected.len()
    );

    let t_play = Instant::now();
    let v = viewer_args(
        relay_port,
        &["--play", &epoch(from), &epoch(to), "--id", "range"],
    );
    let pb = wait_answer(&v, "playback", Duration::from_secs(15), |a| {
        a["id"] == "range"
    });
    let path = pb["path"].as_str().unwrap().to_string();
    assert_eq!(path.len(), 32, "128-bit path: {path}");
    let (_, bridge) = v
        .wait_for(&format!("\"arg\":\"{path}\""), Duration::from_secs(5))
        .expect("bridge with the session's path");
    assert!(bridge.contains("\"bridge\""), "{bridge}");
    let t_bridge = t_play.elapsed();
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(15), |a| {
        a["path"] == path.as_str()
    });
    let t_ended = t_play.elapsed();
    eprintln!(
        "play -> bridge {} ms, -> playback-ended {} ms: {ended}",
        t_bridge.as_millis(),
        t_ended.as_millis()
    );
    assert_eq!(ended["reason"], "to");
    // Paced at real time: the range took about as long to push as it lasts.
    let range_s = (to - k0) as f64 / 1e6;
    assert!(
        t_ended.as_secs_f64() > range_s * 0.8,
        "{range_s:.2} s of recording pushed in {:.2} s",
        t_ended.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(500));

    // What the media server received, by capture time.
    let segs = pushed_segments(&media, &path);
    assert!(!segs.is_empty(), "no HLS segment for {path}");
    let (pushed, unread) = captures(&segs);
    let pushed: Vec<u64> = pushed.iter().filter_map(|f| f.capture).collect();
    // One frame step is 33.3 ms, give or take the capture clock's jitter: "within one frame"
    // is less than one and a half steps apart.
    let frame = 50_000;
    eprintln!(
        "pushed: {} frames decoded ({unread} without a code) for {} recorded; first {} (recorded {}), last {} (recorded {})",
        pushed.len(),
        expected.len(),
        epoch(pushed[0]),
        epoch(expected[0]),
        epoch(*pushed.last().unwrap()),
        epoch(*expected.last().unwrap())
    );
    let start_claim = pb["start"].as_str().unwrap().to_string();
    eprintln!("playback says its first frame was captured at {start_claim}");
    assert!(
        (pushed.len() as i64 + unread as i64 - expected.len() as i64).abs() <= 2,
        "{} frames pushed, {} recorded in the range",
        pushed.len() + unread,
        expected.len()
    );
    assert!(pushed[0].abs_diff(expected[0]) < frame, "first frame");
    assert!(
        pushed.last().unwrap().abs_diff(*expected.last().unwrap()) < frame,
        "last frame"
    );
    let claimed = rfc3339_us(&start_claim);
    eprintln!(
        "the first frame's time as the device gave it is off by {} µs",
        claimed as i64 - pushed[0] as i64
    );
    assert!(
        claimed.abs_diff(pushed[0]) < frame,
        "playback start {start_claim}"
    );
    drop(v);

    // The same range at twice the speed: every frame, in half the time.
    let v = viewer_args(
        relay_port,
        &[
            "--play",
            &epoch(from),
            &epoch(to),
            "--id",
            "fast",
            "--speed",
            "2",
        ],
    );
    let pb = wait_answer(&v, "playback", Duration::from_secs(15), |a| {
        a["id"] == "fast"
    });
    let t_live = Instant::now();
    assert_eq!(pb["speed"], 2);
    let path = pb["path"].as_str().unwrap().to_string();
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(15), |a| {
        a["path"] == path.as_str()
    });
    let took = t_live.elapsed().as_secs_f64();
    assert_eq!(ended["reason"], "to");
    std::thread::sleep(Duration::from_millis(500));
    let (fast, unread) = captures(&pushed_segments(&media, &path));
    let fast: Vec<u64> = fast.iter().filter_map(|f| f.capture).collect();
    eprintln!(
        "at speed 2: {} frames ({unread} without a code) for {} recorded, from playback to playback-ended {took:.2} s for {range_s:.2} s of recording",
        fast.len(),
        expected.len()
    );
    assert!((fast.len() as i64 + unread as i64 - expected.len() as i64).abs() <= 2);
    assert!(
        fast[0].abs_diff(expected[0]) < frame,
        "first frame at speed 2"
    );
    assert!(
        fast.last().unwrap().abs_diff(*expected.last().unwrap()) < frame,
        "last frame at speed 2"
    );
    // Half the range, plus the end-of-stream and the moment the server is given at the end.
    assert!(
        took > range_s * 0.4 && took < range_s * 0.5 + 1.2,
        "{range_s:.2} s of recording at speed 2 took {took:.2} s"
    );
    drop(v);
    assert_recording_whole(&mut dev, &rec);
    std::fs::remove_dir_all(rec).ok();
}

/// µs since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_us(s: &str) -> u64 {
    let ms = camstream::playback::request::parse_rfc3339(s).expect("an RFC 3339 time");
    ms as u64 * 1000
}

#[test]
fn malformed_requests_are_answered_with_errors_and_recording_loses_no_frame() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("playback-bad");
    let mut dev = recording_device("playback-bad", relay_port, &media, &rec, "");
    std::thread::sleep(Duration::from_secs(3));
    let now = now_us() / 1_000_000;
    let big = format!(
        "{{\"from\": {now}, \"to\": {now}, \"pad\": \"{}\"}}",
        "x".repeat(2000)
    );
    let requests = [
        (
            "recordings",
            r#"{"from": "yesterday", "to": "2026-12-03T10:00:00Z"}"#.to_string(),
        ),
        (
            "recordings",
            format!(r#"{{"from": {now}, "to": {}}}"#, now - 60),
        ),
        (
            "recordings",
            format!(r#"{{"from": {}, "to": {now}}}"#, now - 40 * 86400),
        ),
        ("play", r#"{"from": [1, 2]}"#.to_string()),
        ("play", format!(r#"{{"from": {}, "speed": 2.5}}"#, now - 2)),
        ("recordings", big),
        ("stop", r#"{"path": "../../etc"}"#.to_string()),
        ("seek", "42".to_string()),
    ];
    let mut args: Vec<String> = Vec::new();
    for (ev, json) in &requests {
        args.extend(["--request".to_string(), ev.to_string(), json.clone()]);
    }
    args.extend(["--repeat".to_string(), "40".to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = viewer_args(relay_port, &argv);
    let reasons = |v: &Peer| -> Vec<String> {
        answers(v, "error")
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    };
    wait_answer(&v, "error", Duration::from_secs(10), |e| {
        e["reason"] == "too many requests"
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = reasons(&v);
    eprintln!(
        "{} errors for {} requests: {got:?}",
        got.len(),
        requests.len() * 40
    );
    for want in [
        "from: not an RFC 3339 time",
        "from is after to",
        "range over 31 days",
        "from: a time is an RFC 3339 string",
        "speed: a whole number",
        "payload too large",
        "path: not a session path",
        "expected an object",
        "too many requests",
    ] {
        assert!(
            got.iter().any(|r| r.starts_with(want)),
            "no error {want:?} in {got:?}"
        );
    }
    // A flood is told, not echoed: at most the burst plus one refusal a second.
    assert!(got.len() <= 20, "{} answers to a flood", got.len());
    assert!(answers(&v, "playback").is_empty());
    drop(v);
    // The device still answers a good request, and still serves live video.
    let t = now_us();
    let good = viewer_args(
        relay_port,
        &["--recordings", &epoch(t - 60_000_000), &epoch(t)],
    );
    let list = wait_answer(&good, "recordings", Duration::from_secs(10), |a| {
        a.get("spans").is_some()
    });
    assert_eq!(list["spans"].as_array().unwrap().len(), 1, "{list}");
    let (codec, _, _, frames) = ffprobe(&dev.url(), "tcp", 1).expect("RTSP after the bad requests");
    assert_eq!(codec, "h264");
    assert!(frames > 0);
    drop(good);
    assert!(
        !dev.log_text().contains("playback 1:"),
        "a session was started"
    );
    assert_recording_whole(&mut dev, &rec);
    std::fs::remove_dir_all(rec).ok();
}

#[test]
fn two_playback_sessions_with_live_video_and_recording_loses_no_frame() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("playback-two");
    let mut dev = recording_device("playback-two", relay_port, &media, &rec, "");
    std::thread::sleep(Duration::from_secs(7));

    let live = viewer(relay_port, "test01", 1000, None);
    let (_, line) = live
        .wait_for("\"bridge\"", Duration::from_secs(10))
        .expect("live bridge");
    let live_path = bridge_path(&line);
    let t = now_us();
    // One to the end of the recordings (the file being written included), one for 3 s.
    let a = viewer_args(
        relay_port,
        &["--play", &epoch(t - 6_500_000), "-", "--id", "a"],
    );
    let b = viewer_args(
        relay_port,
        &[
            "--play",
            &epoch(t - 5_500_000),
            &epoch(t - 1_500_000),
            "--id",
            "b",
        ],
    );
    let pa = wait_answer(&a, "playback", Duration::from_secs(15), |x| x["id"] == "a");
    let pb = wait_answer(&b, "playback", Duration::from_secs(15), |x| x["id"] == "b");
    assert_ne!(pa["path"], pb["path"]);
    assert_ne!(pa["path"].as_str().unwrap(), live_path);
    // A third is one too many.
    let c = viewer_args(
        relay_port,
        &["--play", &epoch(t - 4_000_000), "-", "--id", "c"],
    );
    let refused = wait_answer(&c, "error", Duration::from_secs(10), |x| x["id"] == "c");
    eprintln!("third session: {refused}");
    assert!(refused["reason"]
        .as_str()
        .unwrap()
        .starts_with("too many playback sessions"));
    drop(c);
    // Live video goes on meanwhile.
    let url = format!("rtsp://127.0.0.1:{}/channel/{live_path}", media.read);
    let s = gst_client(&url, "tcp", Duration::from_secs(2), Duration::from_secs(5));
    eprintln!(
        "live during playback: {} frames at {:.1} fps",
        s.frames, s.fps
    );
    assert!(s.frames >= 45, "live stream: {s:?}");

    let path_a = pa["path"].as_str().unwrap().to_string();
    let path_b = pb["path"].as_str().unwrap().to_string();
    let ea = wait_answer(&a, "playback-ended", Duration::from_secs(20), |x| {
        x["path"] == path_a.as_str()
    });
    let eb = wait_answer(&b, "playback-ended", Duration::from_secs(20), |x| {
        x["path"] == path_b.as_str()
    });
    eprintln!("ended: {ea} / {eb}");
    assert_eq!(ea["reason"], "end");
    assert_eq!(eb["reason"], "to");
    std::thread::sleep(Duration::from_millis(500));
    for (path, min_frames) in [(&path_a, 6 * 30), (&path_b, 3 * 30)] {
        let frames: usize = pushed_segments(&media, path)
            .iter()
            .map(|s| frame_times(s).len())
            .sum();
        eprintln!("session {path}: {frames} frames at the media server");
        assert!(frames >= min_frames, "session {path}: {frames} frames");
    }
    drop((a, b, live));
    assert_recording_whole(&mut dev, &rec);
    std::fs::remove_dir_all(rec).ok();
}

#[test]
fn a_file_deleted_by_retention_while_played_ends_the_session_cleanly() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("playback-retention");
    // A few 2 s files fit; each new one deletes the oldest.
    let dev = recording_device_with(
        "playback-retention",
        relay_port,
        &media,
        &rec,
        "max_bytes = \"1M\"\nmin_free = 0",
    );
    std::thread::sleep(Duration::from_secs(14));
    assert!(
        dev.log_text().contains("retention: deleted"),
        "retention deleted nothing:\n{}",
        dev.log_text()
    );
    let t = now_us();
    let v = viewer_args(
        relay_port,
        &["--recordings", &epoch(t - 120_000_000), &epoch(t)],
    );
    let list = wait_answer(&v, "recordings", Duration::from_secs(10), |a| {
        a.get("spans").is_some()
    });
    drop(v);
    let oldest = list["spans"][0]["start"].as_str().unwrap().to_string();
    // From the oldest file on, to the end: the oldest goes at the next segment boundary.
    let v = viewer_args(relay_port, &["--play", &oldest, "-", "--id", "old"]);
    let t0 = Instant::now();
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(15), |a| {
        a["id"] == "old"
    });
    eprintln!("{} ms after play: {ended}", t0.elapsed().as_millis());
    assert_eq!(ended["reason"], "recording deleted");
    drop(v);
    // Recording goes on, and so does listing.
    let t = now_us();
    let v = viewer_args(
        relay_port,
        &["--recordings", &epoch(t - 120_000_000), &epoch(t)],
    );
    let list = wait_answer(&v, "recordings", Duration::from_secs(10), |a| {
        a.get("spans").is_some()
    });
    assert_eq!(list["spans"][0]["open"], Value::Bool(true), "{list}");
    std::fs::remove_dir_all(rec).ok();
}

#[test]
fn through_a_closed_camstream_signal_only_the_viewer_that_asked_gets_the_answers() {
    let dir = temp_dir("playback-closed");
    let relay_port = free_port();
    let (_relay, key) = closed_relay(relay_port, &dir, "test01");
    let media = media_standin(free_port());
    let rec = dir.join("rec");
    let signal = format!("token = \"s3cret\"\ndevice_key = \"{key}\"");
    let _dev = recording_device_signal("playback-closed", relay_port, &media, &rec, "", &signal);
    std::thread::sleep(Duration::from_secs(5));
    let t = now_us();
    let (from, to) = (epoch(t - 4_000_000), epoch(t - 2_000_000));
    let (list_from, list_to) = (epoch(t - 60_000_000), epoch(t));
    // In the room without the token: refused, told nothing.
    let stranger = viewer_args(
        relay_port,
        &["--recordings", &list_from, &list_to, "--play", &from, &to],
    );
    // Let in, but asking nothing: hears nothing meant for another.
    let other = viewer_args(relay_port, &["--token", "s3cret"]);
    let v = viewer_args(
        relay_port,
        &[
            "--token",
            "s3cret",
            "--recordings",
            &list_from,
            &list_to,
            "--play",
            &from,
            &to,
            "--id",
            "mine",
        ],
    );
    let list = wait_answer(&v, "recordings", Duration::from_secs(10), |a| {
        a.get("spans").is_some()
    });
    assert_eq!(list["spans"].as_array().unwrap().len(), 1, "{list}");
    let pb = wait_answer(&v, "playback", Duration::from_secs(15), |a| {
        a["id"] == "mine"
    });
    let path = pb["path"].as_str().unwrap().to_string();
    v.wait_for(&format!("\"arg\":\"{path}\""), Duration::from_secs(5))
        .expect("bridge to the viewer that asked");
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(15), |a| {
        a["path"] == path.as_str()
    });
    assert_eq!(ended["reason"], "to");
    let frames: usize = pushed_segments(&media, &path)
        .iter()
        .map(|s| frame_times(s).len())
        .sum();
    eprintln!("{frames} frames of the 2 s range at the media server");
    assert!(frames >= 60, "{frames} frames");
    for (who, p) in [
        ("a viewer without the token", &stranger),
        ("another viewer", &other),
    ] {
        for ev in ["recordings", "playback", "playback-ended", "error"] {
            assert!(answers(p, ev).is_empty(), "{who} got {ev}");
        }
        assert!(p.count(&path) == 0, "{who} learned the path");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn seek_starts_the_session_again_from_another_time_and_stop_ends_it() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("playback-seek");
    let _dev = recording_device("playback-seek", relay_port, &media, &rec, "");
    std::thread::sleep(Duration::from_secs(7));
    let t = now_us();
    let to = t - 1_000_000;
    let v = viewer_args(
        relay_port,
        &[
            "--play",
            &epoch(t - 6_000_000),
            &epoch(to),
            "--id",
            "s",
            "--then-seek",
            &epoch(t - 3_000_000),
        ],
    );
    let first = wait_answer(&v, "playback", Duration::from_secs(15), |a| a["id"] == "s");
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(10), |a| {
        a["path"] == first["path"]
    });
    assert_eq!(ended["reason"], "seek");
    let second = wait_answer(&v, "playback", Duration::from_secs(10), |a| {
        a["id"] == "s" && a["path"] != first["path"]
    });
    eprintln!("seek: {first} then {second}");
    // From the keyframe at or before the new time (500 ms apart), to the same end.
    let start = rfc3339_us(second["start"].as_str().unwrap());
    let target = t - 3_000_000;
    assert!(
        start <= target + 1000 && start + 550_000 > target,
        "started at {start}, asked {target}"
    );
    assert_eq!(second["to"], first["to"]);
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(10), |a| {
        a["path"] == second["path"]
    });
    assert_eq!(ended["reason"], "to");
    drop(v);

    let v = viewer_args(
        relay_port,
        &[
            "--play",
            &epoch(t - 5_000_000),
            "-",
            "--id",
            "x",
            "--then-stop",
        ],
    );
    let pb = wait_answer(&v, "playback", Duration::from_secs(15), |a| a["id"] == "x");
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(10), |a| {
        a["path"] == pb["path"]
    });
    assert_eq!(ended["reason"], "stopped");
    std::fs::remove_dir_all(rec).ok();
}

/// The size field of the top-level `mdat` box: 0 ("to the end of the file") in a robust-muxed
/// MP4 until mp4mux finalises it, which a killed recorder never does. None: no `mdat`.
fn mdat_size_field(file: &Path) -> Option<u64> {
    let b = std::fs::read(file).unwrap();
    let mut at = 0usize;
    while at + 8 <= b.len() {
        let size = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as u64;
        let (field, len) = match size {
            1 => {
                let s = u64::from_be_bytes(b.get(at + 8..at + 16)?.try_into().unwrap());
                (s, s)
            }
            0 => (0, (b.len() - at) as u64),
            s => (s, s),
        };
        if &b[at + 4..at + 8] == b"mdat" {
            return Some(field);
        }
        if len < 8 {
            return None;
        }
        at += len as usize;
    }
    None
}

/// What ffmpeg reports while decoding every frame of `file` (empty: no decoder error).
fn ffmpeg_errors(file: &Path) -> String {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        text.push_str(&format!("(exit {:?})", out.status.code()));
    }
    text
}

/// The capture time of a file's first and last frame, from the first and last readable codes
/// (a frame without one is a frame step away from its neighbour).
fn capture_span(frames: &[Frame]) -> (u64, u64) {
    const STEP: u64 = 33_333;
    let i = frames.iter().position(|f| f.capture.is_some()).unwrap();
    let j = frames.iter().rposition(|f| f.capture.is_some()).unwrap();
    (
        frames[i].capture.unwrap() - i as u64 * STEP,
        frames[j].capture.unwrap() + (frames.len() - 1 - j) as u64 * STEP,
    )
}

/// Plays `[from, to]` (device timeline, µs) and returns the `playback` answer, the
/// `playback-ended` answer and the frames decoded from what the media server received, with
/// the errors decoding them raised (GStreamer or ffmpeg).
fn play_and_decode(
    relay_port: u16,
    media: &Media,
    from: u64,
    to: u64,
    id: &str,
) -> (Value, Value, Vec<Frame>, Vec<String>) {
    let v = viewer_args(
        relay_port,
        &["--play", &epoch(from), &epoch(to), "--id", id],
    );
    let pb = wait_answer(&v, "playback", Duration::from_secs(15), |a| a["id"] == id);
    let path = pb["path"].as_str().unwrap().to_string();
    let ended = wait_answer(&v, "playback-ended", Duration::from_secs(20), |a| {
        a["path"] == path.as_str()
    });
    drop(v);
    std::thread::sleep(Duration::from_millis(500));
    let segs = pushed_segments(media, &path);
    assert!(!segs.is_empty(), "no HLS segment for {path}");
    let mut frames = Vec::new();
    let mut errors = Vec::new();
    for s in &segs {
        let (f, e) = decode_checked(s);
        frames.extend(f);
        errors.extend(e.map(|e| format!("{}: {e}", s.display())));
        let ff = ffmpeg_errors(s);
        if !ff.trim().is_empty() {
            errors.push(format!("{} (ffmpeg): {ff}", s.display()));
        }
    }
    (pb, ended, frames, errors)
}

/// Pushed frames against the recorded ones, by capture time: as many (give or take the HLS
/// writer's last frames), the first and the last within one frame.
fn assert_frame_for_frame(what: &str, pushed: &[Frame], expected: &[u64]) {
    let unread = pushed.iter().filter(|f| f.capture.is_none()).count();
    let got: Vec<u64> = pushed.iter().filter_map(|f| f.capture).collect();
    let frame = 50_000;
    eprintln!(
        "{what}: {} frames pushed ({unread} without a code) for {} recorded; first {} (recorded {}), last {} (recorded {})",
        pushed.len(),
        expected.len(),
        epoch(got[0]),
        epoch(expected[0]),
        epoch(*got.last().unwrap()),
        epoch(*expected.last().unwrap())
    );
    assert!(
        (pushed.len() as i64 - expected.len() as i64).abs() <= 2,
        "{what}: {} frames pushed, {} recorded in the range",
        pushed.len(),
        expected.len()
    );
    assert!(unread <= 2, "{what}: {unread} frames without a code");
    assert!(got[0].abs_diff(expected[0]) < frame, "{what}: first frame");
    assert!(
        got.last().unwrap().abs_diff(*expected.last().unwrap()) < frame,
        "{what}: last frame"
    );
}

#[test]
fn a_file_cut_short_by_a_kill_is_listed_and_played_after_a_restart() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let rec = temp_dir("playback-cut");
    let mut dev = recording_device("playback-cut", relay_port, &media, &rec, "");
    // In the middle of the fourth 2 s segment: it is opened about a GOP (500 ms) into itself
    // and ends at the first keyframe after 2 s.
    dev.wait_log("-000004.mp4", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(850));
    dev.stop(Signal::SIGKILL, Duration::from_secs(5));
    drop(dev);

    let before = mp4_files(&rec);
    let cut = before.last().unwrap().clone();
    eprintln!("after the kill: {before:?}");
    assert!(
        cut.to_string_lossy().ends_with("_0001-000004.mp4"),
        "PREMISE: the file being written at the kill is not the last one: {before:?}"
    );
    // The premise: mp4mux never finalised the file (its mdat still runs "to the end of the
    // file"), and what its last index update covers is less than a whole segment.
    let mdat = mdat_size_field(&cut);
    assert_eq!(
        mdat,
        Some(0),
        "PREMISE: {} was finalised (mdat size {mdat:?}), not cut short",
        cut.display()
    );
    for f in &before[..before.len() - 1] {
        assert_ne!(mdat_size_field(f), Some(0), "{} left open", f.display());
    }
    let (cut_frames, err) = decode_checked(&cut);
    assert_eq!(err, None, "GStreamer cannot decode the cut file");
    let ff = ffmpeg_errors(&cut);
    assert!(ff.trim().is_empty(), "ffmpeg on the cut file: {ff}");
    let probed = frame_times(&cut).len();
    eprintln!(
        "cut file {}: {} bytes, mdat size field 0, {probed} frames for ffprobe, {} for GStreamer",
        cut.display(),
        std::fs::metadata(&cut).unwrap().len(),
        cut_frames.len()
    );
    assert_eq!(cut_frames.len(), probed, "GStreamer and ffprobe disagree");
    assert!(
        probed > 15 && probed < 60,
        "PREMISE: {probed} playable frames in the cut file, not a 2 s segment cut after its second keyframe"
    );
    let first_boot: Vec<Vec<Frame>> = before.iter().map(|f| decode_frames(f)).collect();
    let played_before: usize = first_boot.iter().map(Vec::len).sum();

    // The daemon again, on the same card.
    let dev = recording_device("playback-cut-again", relay_port, &media, &rec, "");
    dev.wait_log("recordings on the card indexed", Duration::from_secs(10));
    dev.wait_log("_0002-000002.mp4", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let after = mp4_files(&rec);
    let restart_first = after
        .iter()
        .find(|p| p.to_string_lossy().ends_with("_0002-000001.mp4"))
        .expect("the first file after the restart")
        .clone();
    let second_boot = decode_frames(&restart_first);

    let t = now_us();
    let v = viewer_args(
        relay_port,
        &[
            "--recordings",
            &epoch(t - 120_000_000),
            &epoch(t + 10_000_000),
        ],
    );
    let list = wait_answer(&v, "recordings", Duration::from_secs(10), |a| {
        a.get("spans").is_some()
    });
    drop(v);
    eprintln!("recordings: {list}");
    assert_eq!(list["complete"], Value::Bool(true), "{list}");
    let spans = list["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "the kill and restart leave a gap: {list}");
    let (old, new) = (&spans[0], &spans[1]);
    assert_eq!(
        old["files"].as_u64().unwrap() as usize,
        before.len(),
        "{list}"
    );
    assert_eq!(old["open"], Value::Bool(false));
    assert_eq!(new["open"], Value::Bool(true));
    let old_start = rfc3339_us(old["start"].as_str().unwrap());
    let old_end = rfc3339_us(old["end"].as_str().unwrap());
    let new_start = rfc3339_us(new["start"].as_str().unwrap());
    let gap = &list["gaps"][0];
    assert_eq!(gap["start"], old["end"], "{list}");
    assert_eq!(gap["end"], new["start"], "{list}");

    // The run before the kill is placed from its file names (to the second) narrowed by the
    // durations, so it sits `shift` off the capture clock; within it, files follow each other.
    let (cap0, _) = capture_span(&first_boot[0]);
    let shift = old_start as i64 - cap0 as i64;
    let (cut_first, cut_last) = capture_span(&cut_frames);
    let step = 33_333i64;
    let listed_end = old_end as i64 - shift;
    eprintln!(
        "before the kill: {played_before} frames in {} files; the span is {} µs off the capture clock; \
         it ends {} µs after the cut file's last frame; gap {} s; after the restart the span starts {} µs from its first frame",
        before.len(),
        shift,
        listed_end - cut_last as i64,
        gap["duration_s"],
        new_start as i64 - capture_span(&second_boot).0 as i64
    );
    assert!(shift.abs() < 600_000, "placed {shift} µs off");
    // The cut file ends where its last playable frame does (plus that frame's own length).
    assert!(
        (listed_end - (cut_last as i64 + step)).abs() < 50_000,
        "the span ends {} µs after the cut file's last frame",
        listed_end - cut_last as i64
    );
    let span_s = old["duration_s"].as_f64().unwrap();
    assert!(
        (span_s - played_before as f64 / 30.0).abs() < 0.1,
        "span of {span_s} s for {played_before} frames"
    );
    // Where the cut file starts on that timeline (the span's end less what it holds): at its
    // first frame.
    let cut_start = listed_end - probed as i64 * step;
    assert!(
        (cut_start - cut_first as i64).abs() < 50_000,
        "the cut file starts {} µs from its first frame",
        cut_start - cut_first as i64
    );
    let (restart_cap0, _) = capture_span(&second_boot);
    assert!(
        new_start.abs_diff(restart_cap0) < 50_000,
        "the span after the restart starts at {}, its first frame at {}",
        epoch(new_start),
        epoch(restart_cap0)
    );

    // A range from inside the cut file, from the middle of a GOP, to the gap after it.
    let times: Vec<(u64, bool)> = cut_frames
        .iter()
        .filter_map(|f| f.capture.map(|c| (c, f.key)))
        .collect();
    let keys: Vec<usize> = (0..times.len()).filter(|i| times[*i].1).collect();
    assert!(keys.len() >= 2, "keyframes in the cut file: {times:?}");
    let k = keys[1];
    let j = (k + 7).min(times.len() - 2);
    let from_cap = (times[j].0 + times[j + 1].0) / 2;
    let from = (from_cap as i64 + shift) as u64;
    let expected: Vec<u64> = times[k..].iter().map(|t| t.0).collect();
    let to = (old_end + new_start) / 2;
    let (pb, ended, pushed, errors) = play_and_decode(relay_port, &media, from, to, "cut");
    eprintln!("to the end of the cut file: {pb} then {ended}");
    assert_eq!(ended["reason"], "end", "{ended}");
    assert!(errors.is_empty(), "decoding what was pushed: {errors:?}");
    assert_frame_for_frame("to the end of the cut file", &pushed, &expected);
    let claimed = rfc3339_us(pb["start"].as_str().unwrap()) as i64 - shift;
    assert!(
        claimed.abs_diff(expected[0] as i64) < 50_000,
        "playback says it starts at {claimed}, its first frame was captured at {}",
        expected[0]
    );

    // From the same point across the gap, to about a second into the first file after the
    // restart (placed to the millisecond).
    let times2: Vec<u64> = second_boot.iter().filter_map(|f| f.capture).collect();
    let m = times2
        .iter()
        .position(|c| *c >= restart_cap0 + 1_000_000)
        .unwrap();
    let to_cap = (times2[m] + times2[m + 1]) / 2;
    let to = to_cap + new_start - restart_cap0;
    let mut expected2 = expected.clone();
    expected2.extend(times2.iter().filter(|c| **c < to_cap));
    let (_, ended, pushed, errors) = play_and_decode(relay_port, &media, from, to, "across");
    eprintln!("across the restart: {ended}");
    assert_eq!(ended["reason"], "to", "{ended}");
    assert!(errors.is_empty(), "decoding what was pushed: {errors:?}");
    assert_frame_for_frame("across the restart", &pushed, &expected2);
    // Both sides of the gap came through, in order.
    let got: Vec<u64> = pushed.iter().filter_map(|f| f.capture).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
    let cut_end = *expected.last().unwrap();
    assert!(
        got.contains(&cut_end),
        "the cut file's last frame is missing"
    );
    assert!(
        got.iter().any(|c| *c >= restart_cap0),
        "nothing after the restart"
    );
    drop(dev);
    std::fs::remove_dir_all(rec).ok();
}
