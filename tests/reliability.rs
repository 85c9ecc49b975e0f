//! The uplink against a media server that misbehaves: refusing, dropping or stalling
//! connections while viewers come and go. What is asserted is what the outside sees: the
//! connections the server is offered, the watchdog pings systemd would get, an RTSP client's
//! frames and the daemon's exit code.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::*;
use common::*;
use gst::prelude::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A media server that takes each connection, reads a little and hangs up: the first after
/// `hold[0]`, the next after `hold[1]`… (cycling). Counts the connections it was offered.
struct Dropper {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Dropper {
    fn start(hold: &'static [u64]) -> Dropper {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let n = a.fetch_add(1, Ordering::SeqCst);
                        let ms = hold[n % hold.len()];
                        std::thread::spawn(move || {
                            let _ = conn.set_read_timeout(Some(Duration::from_millis(ms.max(1))));
                            let mut buf = [0u8; 4096];
                            let _ = conn.read(&mut buf);
                            std::thread::sleep(Duration::from_millis(ms));
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Dropper {
            port,
            accepted,
            stop,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Dropper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn many_heartbeating_viewers_make_one_retry_schedule_against_a_failing_server() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = Dropper::start(&[0]);
    let mut dev = Device::start(
        "rel-schedule",
        &device_config(free_port(), relay_port, media.port, "")
            .replace("retry_max_seconds = 1", "retry_max_seconds = 2"),
        &[],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    // Five viewers, each heartbeating ten times a second.
    let viewers: Vec<_> = (0..5)
        .map(|_| viewer(relay_port, "test01", 100, None))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let before = media.accepted();
    std::thread::sleep(Duration::from_secs(8));
    let attempts = media.accepted() - before;
    let secs = t0.elapsed().as_secs_f64();
    // Back-off 1 s, then 2 s (the maximum): about 5 attempts in 8 s, and rtspclientsink may
    // open a second connection within one attempt; 50 heartbeats a second each starting one
    // would make hundreds.
    eprintln!(
        "{attempts} connections offered to the media server in {secs:.1} s with 5 viewers at 10 heartbeats/s"
    );
    assert!(attempts >= 2, "the uplink never tried:\n{}", dev.log_text());
    assert!(
        attempts <= 12,
        "{attempts} connection attempts in {secs:.1} s: heartbeats bypass the back-off"
    );
    drop(viewers);
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", dev.log_text());
}

#[test]
fn leases_ending_and_viewers_returning_at_once_never_stop_the_device() {
    // Connections held 0 to 1.2 s before the hang-up: errors of a branch already detached on
    // lease expiry arrive while the next viewer's branch runs.
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = Dropper::start(&[0, 700, 1200, 300, 900]);
    let cfg = device_config(free_port(), relay_port, media.port, "")
        .replace("lease_seconds = 3", "lease_seconds = 1");
    let mut dev = Device::start("rel-cycles", &cfg, &[]);
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let expired = |dev: &Device| {
        dev.log_text()
            .matches("no viewer heartbeat within the lease")
            .count()
    };
    let mut cycles = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(40) && cycles < 15 {
        let before = expired(&dev);
        // Heartbeats for 1.5 s, then silence: the lease (1 s) runs out and the uplink goes.
        let v = viewer(relay_port, "test01", 200, Some(1500));
        let t1 = Instant::now();
        while expired(&dev) == before && t1.elapsed() < Duration::from_secs(8) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(v);
        assert!(
            dev.child.try_wait().unwrap().is_none(),
            "the device stopped at cycle {cycles}:\n{}",
            dev.log_text()
        );
        cycles += 1;
    }
    eprintln!(
        "{cycles} lease cycles, {} connections offered to the media server, {} late errors reported from retired branches",
        media.accepted(),
        dev.log_text().matches(", retired)").count()
    );
    assert!(cycles >= 5, "only {cycles} cycles:\n{}", dev.log_text());
    // Still serving: a local RTSP client decodes frames.
    let s = gst_client(
        &dev.url(),
        "tcp",
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    assert!(s.frames > 0, "RTSP stopped serving:\n{}", dev.log_text());
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", dev.log_text());
    assert!(!dev.log_text().contains("cannot recover"));
}

/// Receives sd_notify datagrams; records when each `WATCHDOG=1` came.
struct Systemd {
    path: std::path::PathBuf,
    pings: Arc<Mutex<Vec<Instant>>>,
}

impl Systemd {
    fn start(dir: &std::path::Path) -> Systemd {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let pings = Arc::new(Mutex::new(Vec::new()));
        let p = pings.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                    p.lock().unwrap().push(Instant::now());
                }
            }
        });
        Systemd { path, pings }
    }

    /// The longest time without a ping between `from` and `to`.
    fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        let pings = self.pings.lock().unwrap();
        let mut last = from;
        let mut worst = Duration::ZERO;
        for &t in pings.iter().filter(|t| **t > from && **t <= to) {
            worst = worst.max(t - last);
            last = t;
        }
        worst.max(to.saturating_duration_since(last))
    }
}

#[test]
fn a_stalled_media_server_never_holds_up_the_watchdog_or_rtsp() {
    let relay_port = free_port();
    let _relay = relay(relay_port);
    let media = media_standin(free_port());
    let dir = temp_dir("rel-stall");
    let systemd = Systemd::start(&dir);
    let cfg = device_config(free_port(), relay_port, media.push, "")
        .replace("lease_seconds = 3", "lease_seconds = 1");
    let mut dev = Device::start_env(
        "rel-stall",
        &cfg,
        &[],
        &[
            ("NOTIFY_SOCKET", systemd.path.to_str().unwrap()),
            // Pings every second.
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    dev.wait_log("signal: create room", Duration::from_secs(10));
    let v = viewer(relay_port, "test01", 200, None);
    v.wait_for("\"bridge\"", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no bridge:\n{}", dev.log_text()));
    // The media server stops reading: its socket fills, then the uplink's TCP send stalls.
    let server = Pid::from_raw(media.peer.child.id() as i32);
    kill(server, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The viewer goes: the lease ends and the stalled uplink is detached and stopped.
    drop(v);
    dev.wait_log(
        "no viewer heartbeat within the lease",
        Duration::from_secs(5),
    );
    let t_detach = Instant::now();
    // RTSP keeps serving meanwhile.
    let s = gst_client(
        &dev.url(),
        "tcp",
        Duration::from_secs(2),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(8).saturating_sub(t_detach.elapsed()));
    let silence = systemd.longest_silence(t_detach, Instant::now());
    kill(server, Signal::SIGCONT).unwrap();
    eprintln!(
        "after the stalled uplink was detached: longest watchdog silence {} ms (pings every 1000 ms), RTSP client got {} frames",
        silence.as_millis(),
        s.frames
    );
    assert!(
        systemd.pings.lock().unwrap().len() > 3,
        "no watchdog pings at all"
    );
    assert!(
        silence < Duration::from_millis(1900),
        "the main loop went {} ms without feeding the watchdog:\n{}",
        silence.as_millis(),
        dev.log_text()
    );
    assert!(s.frames > 10, "RTSP stalled with the uplink: {s:?}");
    let (code, _) = dev.stop(Signal::SIGTERM, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", dev.log_text());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_branch_that_stalls_and_resumes_gets_only_frames_that_decode() {
    // The daemon's leaky queues as the daemon watches them (`Drops::watch`), behind a tee fed
    // by x264; the consumer stalls for 1.5 s mid-GOP, and everything it then receives goes
    // through a real decoder that stops at the first error.
    gst::init().unwrap();
    let pipeline = gst::Pipeline::new();
    let drops = camstream::drops::Drops::default();
    drops.watch(&pipeline);
    let bin = gst::parse::bin_from_description(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 \
         ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au \
         ! tee ! queue name=branch max-size-buffers=5 max-size-bytes=0 max-size-time=0 leaky=downstream \
         ! appsink name=out sync=false max-buffers=1 drop=false",
        false,
    )
    .unwrap();
    pipeline.add(&bin).unwrap();
    let out = bin
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let stream = Arc::new(Mutex::new(Vec::<u8>::new()));
    let (s, frames) = (stream.clone(), Arc::new(AtomicUsize::new(0)));
    let f = frames.clone();
    out.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) {
                    s.lock().unwrap().extend_from_slice(&map);
                }
                // Frame 45 is mid-GOP (keyframes every 60): the consumer stalls there.
                if f.fetch_add(1, Ordering::SeqCst) == 45 {
                    std::thread::sleep(Duration::from_millis(1500));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    pipeline.set_state(gst::State::Null).unwrap();
    let dropped: u64 = drops.totals().iter().map(|(_, _, d)| d).sum();
    let dir = temp_dir("gop-gate");
    let file = dir.join("branch.h264");
    std::fs::write(&file, &*stream.lock().unwrap()).unwrap();
    // FFmpeg's decoder conceals a missing reference rather than failing, even with -xerror;
    // it says so at debug level ("Frame num gap", "concealing", "error while decoding").
    let decoded = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "debug", "-xerror", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let errors = String::from_utf8_lossy(&decoded.stderr)
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("frame num gap")
                || l.contains("conceal")
                || l.contains("error while")
                || l.contains("reference picture missing")
                || l.contains("non-existing")
        })
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "{} frames received, {dropped} dropped by the branch; decoder: {}",
        frames.load(Ordering::SeqCst),
        if errors.is_empty() {
            "no error"
        } else {
            &errors
        }
    );
    assert!(
        dropped > 10,
        "the branch never overran: the test proves nothing"
    );
    assert!(
        decoded.status.success() && errors.is_empty(),
        "frames after the stall do not decode: {errors}"
    );
    std::fs::remove_dir_all(dir).ok();
}
