//! The uplink over a modelled mobile link (tests/common/link.rs): the device in one network
//! namespace, the relay, the media server stand-in, a viewer and a reader of the pushed stream
//! in the other, joined by the link emulator. What is judged is what the reader sees, second
//! by second (examples/stream_watch.rs): frames decoded, their delay from capture (QR stamps),
//! decoder errors; and what the card holds.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::link::{Link, SRV_ADDR};
use common::peers::*;
use common::recordings::*;
use common::*;

const RELAY_PORT: u16 = 3000;
const PUSH_PORT: u16 = 8554;
const READ_PORT: u16 = 8555;
const BITRATE_KBPS: u32 = 2000;

fn example(name: &str) -> PathBuf {
    PathBuf::from(BIN)
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// One second of what the reader saw.
#[derive(Debug, Clone)]
struct Second {
    t: u64,
    frames: u64,
    kbps: u64,
    delay_ms: Option<f64>,
    errors: u64,
}

fn seconds(watch: &Peer) -> Vec<Second> {
    watch
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Second {
            t: v["t"].as_u64().unwrap_or(0),
            frames: v["frames"].as_u64().unwrap_or(0),
            kbps: v["kbps"].as_u64().unwrap_or(0),
            delay_ms: v["delay_ms"].as_f64(),
            errors: v["errors"].as_u64().unwrap_or(0),
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The reader's seconds in [from, to) (seconds since the reader started).
fn window(all: &[Second], from: u64, to: u64) -> Vec<Second> {
    all.iter()
        .filter(|s| s.t >= from && s.t < to)
        .cloned()
        .collect()
}

fn describe(all: &[Second]) -> String {
    all.iter()
        .map(|s| {
            format!(
                "{:>3}s {:>2} fps {:>5} kbit/s delay {:>6} err {}",
                s.t,
                s.frames,
                s.kbps,
                s.delay_ms
                    .map(|d| format!("{d:.0}"))
                    .unwrap_or_else(|| "-".into()),
                s.errors
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Rig {
    link: Link,
    dev: Device,
    _relay: Peer,
    _media: Peer,
    viewer: Peer,
    path: String,
    rec: PathBuf,
}

/// Everything up, the viewer let in and the uplink live on `path`.
fn rig(tag: &str, profile: &str, uplink_extra: &str) -> Option<Rig> {
    if let Some(why) = Link::unavailable() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    for ex in ["media_standin", "stream_watch"] {
        if !example(ex).exists() {
            eprintln!("SKIPPED: {} not built (cargo build --examples)", ex);
            return None;
        }
    }
    let link = Link::start(profile);
    let mut c = link.exec_in_srv(&camstream_signal_bin().to_string_lossy());
    c.arg("--listen").arg(format!("{SRV_ADDR}:{RELAY_PORT}"));
    // The web viewer, for the browser test.
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    if web.join("index.html").exists() {
        c.arg("--static-dir").arg(web);
    }
    let relay = Peer::spawn(c);
    assert!(relay
        .wait_for("camstream-signal listening", Duration::from_secs(10))
        .is_some());
    let media_dir = temp_dir(&format!("{tag}-media"));
    let mut c = link.exec_in_srv(&example("media_standin").to_string_lossy());
    c.args(["--bind", SRV_ADDR])
        .args(["--push-port", &PUSH_PORT.to_string()])
        .args(["--read-port", &READ_PORT.to_string()])
        .args(["--http-port", "8080"])
        .arg("--dir")
        .arg(&media_dir);
    let media = Peer::spawn(c);
    assert!(media
        .wait_for("media-standin: push", Duration::from_secs(10))
        .is_some());

    let rec = temp_dir(&format!("{tag}-rec"));
    let cfg = format!(
        r#"
[device]
id = "test01"
[camera]
source = "test"
width = 640
height = 360
fps = 30
test_pattern = "smpte"
test_overlay = "timestamp-qr"
[encoder]
name = "x264enc"
bitrate_kbps = {BITRATE_KBPS}
[display]
sink = "none"
[rtsp]
bind = "127.0.0.1"
port = 8554
[recording]
dir = "{rec}"
segment_seconds = 10
[signal]
enabled = true
url = "http://{SRV_ADDR}:{RELAY_PORT}"
lease_seconds = 30
reconnect_max_seconds = 2
open = true
[uplink]
url = "rtsp://{SRV_ADDR}:{PUSH_PORT}/channel/{{path}}"
retry_max_seconds = 2
{floor}
{uplink_extra}
"#,
        rec = rec.display(),
        floor = if uplink_extra.contains("min_bitrate_kbps") {
            ""
        } else {
            "min_bitrate_kbps = 300"
        }
    );
    let dev = Device::start_in(
        tag,
        &cfg,
        link.exec_in_dev(&PathBuf::from(BIN).to_string_lossy()),
    );
    dev.wait_log("signal: create room", Duration::from_secs(20));

    let mut c = link.exec_in_srv("node");
    c.arg(node_dir().join("viewer.js"))
        .arg(format!("http://{SRV_ADDR}:{RELAY_PORT}"))
        .arg("test01")
        .arg("5000")
        // The device's own account of its link, every 2 s.
        .args(["--status", "2000"]);
    let viewer = Peer::spawn(c);
    let (_, line) = viewer
        .wait_for("\"bridge\"", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no bridge:\n{}", dev.log_text()));
    let path = bridge_path(&line);
    Some(Rig {
        link,
        dev,
        _relay: relay,
        _media: media,
        viewer,
        path,
        rec,
    })
}

impl Rig {
    /// A reader of the pushed stream for `secs`, in the server's namespace, once it reports.
    fn watch(&self, secs: u64) -> Peer {
        let mut c = self
            .link
            .exec_in_srv(&example("stream_watch").to_string_lossy());
        c.arg(format!(
            "rtsp://{SRV_ADDR}:{READ_PORT}/channel/{}",
            self.path
        ))
        .arg(secs.to_string());
        let watch = Peer::spawn(c);
        assert!(
            watch
                .wait_for("\"frames\"", Duration::from_secs(20))
                .is_some(),
            "the reader got nothing"
        );
        watch
    }

    /// Stops the device and checks the card: every frame captured is in the files, one frame
    /// interval apart; one line per file with its frames, holes and bitrate.
    fn recording_whole(mut self) -> String {
        let pid = self.dev.pid();
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let _ = self.dev.child.wait();
        let files = mp4_files(&self.rec);
        assert!(!files.is_empty(), "no recording");
        let mut report = Vec::new();
        for f in &files {
            let t = frame_times(f);
            let holes = t.windows(2).filter(|w| w[1] - w[0] > 1.5 / 30.0).count();
            let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            let span = t.last().copied().unwrap_or(0.0) - t.first().copied().unwrap_or(0.0);
            let kbps = if span > 0.0 {
                size as f64 * 8.0 / span / 1000.0
            } else {
                0.0
            };
            report.push(format!(
                "{}: {} frames over {span:.1} s, {holes} holes, {kbps:.0} kbit/s",
                f.file_name().unwrap().to_string_lossy(),
                t.len()
            ));
            assert_eq!(
                holes,
                0,
                "the recording lost frames while the uplink adapted: {report:?}\n{}",
                self.dev.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.rec);
        report.join("\n")
    }
}

/// 4G narrowing to a weak link and back: the uplink follows it down within seconds, the
/// picture keeps its frame rate with a bounded delay and no decoder errors, the rate comes
/// back when the link does, and the recording loses nothing.
#[test]
fn a_narrowing_link_keeps_a_watchable_picture_with_a_bounded_delay() {
    let Some(rig) = rig("weak-narrowing", "good", "") else {
        return;
    };
    let watch = rig.watch(75);
    let t0 = Instant::now();
    // Good for 12 s, weak for 30 s, then good again.
    std::thread::sleep(Duration::from_secs(12));
    let weak_at = seconds(&watch).last().map(|s| s.t).unwrap_or(0);
    rig.link.set_timeline("weak:30,good");
    while t0.elapsed() < Duration::from_secs(74) {
        std::thread::sleep(Duration::from_secs(1));
        if rig.viewer.count("\"disconnect\"") > 0 {
            break;
        }
    }
    let all = seconds(&watch);
    let text = describe(&all);
    eprintln!("{text}");
    let link_out: Vec<String> = rig
        .link
        .output()
        .into_iter()
        .filter(|l| l.starts_with("phase"))
        .collect();
    eprintln!("{link_out:?}");

    let good = window(&all, 3, weak_at);
    let weak = window(&all, weak_at + 8, weak_at + 30);
    let back = window(&all, weak_at + 30, weak_at + 62);
    let kbps = |w: &[Second]| median(w.iter().map(|s| s.kbps as f64).collect());
    let fps = |w: &[Second]| median(w.iter().map(|s| s.frames as f64).collect());
    let delay = |w: &[Second]| median(w.iter().filter_map(|s| s.delay_ms).collect());
    let errors = |w: &[Second]| w.iter().map(|s| s.errors).sum::<u64>();
    eprintln!(
        "good: {:.0} kbit/s {:.0} fps {:.0} ms; weak: {:.0} kbit/s {:.0} fps {:.0} ms; back: {:.0} kbit/s, last 10 s {:.0} kbit/s",
        kbps(&good),
        fps(&good),
        delay(&good),
        kbps(&weak),
        fps(&weak),
        delay(&weak),
        kbps(&back),
        kbps(&back[back.len().saturating_sub(10)..]),
    );
    assert!(
        kbps(&good) > BITRATE_KBPS as f64 * 0.6,
        "the encoder did not fill its bitrate on the good link:\n{text}"
    );
    assert!(
        fps(&weak) >= 24.0,
        "on the weak link the picture lost its frame rate (whole GOPs dropped: the rate did not come down):\n{text}\n{}",
        rig.dev.log_text()
    );
    let weak_delay = delay(&weak);
    assert!(
        weak_delay < 1500.0,
        "on the weak link the picture's delay grew to {weak_delay:.0} ms:\n{text}"
    );
    // The narrowing itself leaves a few seconds of video in the link's queue and TCP's
    // retransmissions (2 % loss); once that is out, no second may lag far behind.
    let worst = window(&all, weak_at + 12, weak_at + 30)
        .iter()
        .filter_map(|s| s.delay_ms)
        .fold(0.0f64, f64::max);
    assert!(
        worst < 3000.0,
        "delay reached {worst:.0} ms on the weak link, 12 s after it narrowed:\n{text}"
    );
    assert_eq!(errors(&all), 0, "decoder errors at the reader:\n{text}");
    let end = &back[back.len().saturating_sub(10)..];
    assert!(
        kbps(end) > kbps(&weak) * 2.0,
        "the rate did not come back up with the link:\n{text}"
    );
    // The device's status said what it did: the bitrate it asked of the encoder went down
    // with the link and back up.
    let asked: Vec<u64> = rig
        .viewer
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["status"]["uplink"]["link"]["bitrate_kbps"].as_u64())
        .collect();
    eprintln!("status: bitrate asked of the encoder {asked:?}");
    assert!(
        asked.iter().any(|k| *k <= 800) && asked.last().is_some_and(|k| *k > 800),
        "status did not show the bitrate following the link: {asked:?}"
    );
    let report = rig.recording_whole();
    eprintln!("{report}");
}

/// A 10 s outage, then a 3 s one: the uplink comes back by itself within seconds of the link's
/// return, on the same path (the viewer still holds its lease and is told nothing new), without
/// the backlog of the outage; the stream goes on after it (the held-back video arriving in a
/// burst must not break the media server's side either); the recording loses nothing.
#[test]
fn after_an_outage_the_uplink_comes_back_on_the_same_path() {
    let Some(rig) = rig("weak-outage", "4g", "") else {
        return;
    };
    let watch = rig.watch(75);
    let now = || seconds(&watch).last().map(|s| s.t).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(8));
    let down_at = now();
    rig.link.set_timeline("down:10,4g");
    std::thread::sleep(Duration::from_secs(35));
    let short_at = now();
    rig.link.set_timeline("down:3,4g");
    std::thread::sleep(Duration::from_secs(20));
    let all = seconds(&watch);
    let text = describe(&all);
    eprintln!("{text}");
    let fps = |w: &[Second]| median(w.iter().map(|s| s.frames as f64).collect());
    let up_at = down_at + 10;
    let back = all
        .iter()
        .find(|s| s.t > up_at && s.frames > 0)
        .map(|s| s.t - up_at);
    let back = back.unwrap_or_else(|| {
        panic!(
            "no picture after the link came back:\n{text}\n{}",
            rig.dev.log_text()
        )
    });
    assert!(
        back <= 10,
        "the picture came back {back} s after the link:\n{text}"
    );
    // Once back, the delay settles: the outage's video is not played out late.
    let settled = window(&all, up_at + back + 5, short_at);
    let d = median(settled.iter().filter_map(|s| s.delay_ms).collect());
    assert!(d < 1500.0, "delay {d:.0} ms after the outage:\n{text}");
    assert!(
        fps(&settled) >= 24.0,
        "frame rate after the outage:\n{text}"
    );
    // After the short one too, and it goes on.
    let after_short = window(&all, short_at + 3 + 8, short_at + 3 + 17);
    assert!(
        fps(&after_short) >= 24.0,
        "frame rate after the 3 s outage:\n{text}\n{}",
        rig.dev.log_text()
    );
    // Still the same path: the viewer was sent one bridge only.
    assert_eq!(
        rig.viewer.count("\"bridge\""),
        1,
        "the viewer was given another path: {:?}",
        rig.viewer.lines.lock().unwrap()
    );
    eprintln!("picture back {back} s after the link, then {d:.0} ms delay");
    let report = rig.recording_whole();
    eprintln!("{report}");
}

/// The web viewer through a 10 s outage of the device's link: its player stalls and plays on
/// by itself when the link is back, in the same page (no reload).
#[test]
fn the_web_viewer_plays_on_after_an_outage_without_a_reload() {
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        eprintln!("SKIPPED: no /usr/bin/chromium");
        return;
    }
    if !PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("web/dist/index.html")
        .exists()
    {
        eprintln!("SKIPPED: the web viewer is not built (npm --prefix web run build)");
        return;
    }
    let Some(rig) = rig("weak-web", "4g", "") else {
        return;
    };
    let mut c = rig.link.exec_in_srv("node");
    c.arg(node_dir().join("web_outage.js")).arg(format!(
        "http://{SRV_ADDR}:{RELAY_PORT}/index.html?device=test01&media=http://{SRV_ADDR}:8080&heartbeat=5000"
    ));
    let browser = Peer::spawn(c);
    let step = |name: &str, secs: u64| {
        browser
            .wait_for(&format!("STEP {name}"), Duration::from_secs(secs))
            .or_else(|| browser.wait_for("FAILED", Duration::from_millis(10)))
            .unwrap_or_else(|| {
                panic!(
                    "no step {name}: {:?}\n{}",
                    browser.lines.lock().unwrap(),
                    rig.dev.log_text()
                )
            })
            .1
    };
    let live = step("live", 90);
    assert!(live.starts_with("STEP live"), "{live}");
    std::thread::sleep(Duration::from_secs(5));
    let cut = Instant::now();
    rig.link.set_timeline("down:10,4g");
    let stalled = step("stalled", 60);
    assert!(stalled.starts_with("STEP stalled"), "{stalled}");
    let resumed = step("resumed", 120);
    eprintln!(
        "{stalled} / {resumed}, {:.1} s after the link was cut",
        cut.elapsed().as_secs_f64()
    );
    assert!(
        resumed.starts_with("STEP resumed"),
        "{resumed}\n{}",
        rig.dev.log_text()
    );
    // One path all along: the page was never told to play another.
    let paths: Vec<String> = rig
        .viewer
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l.contains("\"bridge\""))
        .map(|(_, l)| bridge_path(l))
        .collect();
    assert!(paths.iter().all(|p| *p == rig.path), "{paths:?}");
}

/// With an encoder of its own (`uplink.encode = "own"`), the recording keeps its configured
/// quality whatever the link; the uplink goes down to its floor, then lowers its frame rate,
/// with a bounded delay and no decoder error, and gets it back when the link does.
#[test]
fn with_an_encoder_of_its_own_the_recording_keeps_its_quality_and_the_uplink_its_delay() {
    // A floor above what the weak link carries: the frame rate has to give.
    let Some(rig) = rig(
        "weak-own",
        "good",
        "encode = \"own\"\nmin_bitrate_kbps = 1000",
    ) else {
        return;
    };
    let watch = rig.watch(70);
    std::thread::sleep(Duration::from_secs(10));
    let weak_at = seconds(&watch).last().map(|s| s.t).unwrap_or(0);
    rig.link.set_timeline("weak:25,good");
    std::thread::sleep(Duration::from_secs(58));
    let all = seconds(&watch);
    let text = describe(&all);
    eprintln!("{text}");
    let weak = window(&all, weak_at + 8, weak_at + 25);
    let end = window(&all, weak_at + 45, weak_at + 60);
    let fps = |w: &[Second]| median(w.iter().map(|s| s.frames as f64).collect());
    let delay = |w: &[Second]| median(w.iter().filter_map(|s| s.delay_ms).collect());
    eprintln!(
        "weak: {:.0} fps {:.0} ms; end: {:.0} fps {:.0} ms",
        fps(&weak),
        delay(&weak),
        fps(&end),
        delay(&end)
    );
    assert!(
        (4.0..=20.0).contains(&fps(&weak)),
        "on the weak link below the floor the frame rate should have gone down:\n{text}\n{}",
        rig.dev.log_text()
    );
    assert!(delay(&weak) < 1500.0, "delay on the weak link:\n{text}");
    assert_eq!(
        all.iter().map(|s| s.errors).sum::<u64>(),
        0,
        "decoder errors:\n{text}"
    );
    assert!(fps(&end) >= 28.0, "frame rate not back:\n{text}");
    // The recording kept its bitrate throughout (its encoder never followed the link).
    let report = rig.recording_whole();
    eprintln!("{report}");
    for line in report.lines().filter(|l| !l.contains(" 0 frames")) {
        let kbps: f64 = line
            .rsplit(", ")
            .next()
            .and_then(|k| k.trim_end_matches(" kbit/s").parse().ok())
            .unwrap_or(0.0);
        let frames: u64 = line
            .split(": ")
            .nth(1)
            .and_then(|f| f.split(' ').next())
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        if frames >= 150 {
            assert!(
                kbps > BITRATE_KBPS as f64 * 0.8,
                "a recording below its configured bitrate: {report}"
            );
        }
    }
}
