//! The virtual board (scripts/virtual-board) seen from a test: one guest for the whole test
//! binary, booted on its own copy of the disks, driven through QMP and the guest agent over the
//! run directory's sockets. The guest is powered off when the test process ends (the script's
//! `--while-stdin`: our end of its standard input closes).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use serde_json::{json, Value};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn script() -> PathBuf {
    repo().join("scripts/virtual-board")
}

/// Prints straight to the process's stderr, past the test harness's capture, so that a skip is
/// seen even when the test passes.
pub fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Why the virtual board cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if std::env::var_os("CAMSTREAM_SKIP_VIRTUAL_BOARD").is_some() {
        return Some("CAMSTREAM_SKIP_VIRTUAL_BOARD is set".into());
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Some("the virtual board is an x86-64 guest for Linux hosts".into());
    }
    let root = nix::unistd::geteuid().is_root();
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !root && !sudo {
        return Some(
            "building the guest needs root (mmdebstrap, chroot) and sudo asks for a password"
                .into(),
        );
    }
    None
}

#[derive(Debug, Clone)]
pub struct Exec {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

pub struct Board {
    child: Child,
    _stdin: ChildStdin,
    pub run: PathBuf,
    pub port: u16,
    /// Host time (epoch seconds) at which QEMU was started.
    pub started_at: f64,
    pub user: String,
    pub password: String,
    /// Boots so far in this test process (the power-cut test adds one).
    pub boots: u32,
}

/// The test binary's one guest, booted on first use. Tests take turns (the lock), and each one
/// sets up the daemon configuration it needs, so they do not depend on their order.
static BOARD: Mutex<Option<Board>> = Mutex::new(None);
static BOOT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// The board, held by one test at a time; `boots` counts the boots of this disk set.
pub struct Guard(MutexGuard<'static, Option<Board>>, u32);

impl std::ops::Deref for Guard {
    type Target = Board;
    fn deref(&self) -> &Board {
        self.0.as_ref().unwrap()
    }
}

impl Guard {
    /// Power cut now (QMP quit). Returns the host time of the cut. The board is down until
    /// `boot_again`.
    pub fn power_cut(&mut self) -> f64 {
        let b = self.0.take().unwrap();
        self.1 = b.boots;
        b.power_cut()
    }

    /// Boots again on the disks the last boot left (after `power_cut`).
    pub fn boot_again(&mut self) -> Result<(), String> {
        *self.0 = Some(Board::boot(false, self.1 + 1)?);
        Ok(())
    }
}

/// The guest, or None (after printing SKIPPED and the reason) when it cannot run here.
pub fn board() -> Option<Guard> {
    if let Some(why) = unavailable() {
        loud(&format!("SKIPPED: {why}"));
        return None;
    }
    let mut g = BOARD.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        let mut err = BOOT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = err.as_ref() {
            panic!("the virtual board did not come up: {e}");
        }
        match Board::boot(true, 1) {
            Ok(b) => *g = Some(b),
            Err(e) => {
                *err = Some(e.clone());
                panic!("the virtual board did not come up: {e}");
            }
        }
    }
    Some(Guard(g, 0))
}

fn txt_value(key: &str) -> String {
    let txt = std::fs::read_to_string(repo().join("virtual-board/camstream.txt")).unwrap();
    txt.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .map(|v| v.trim().to_string())
        .next_back()
        .unwrap_or_default()
}

impl Board {
    /// Boots the guest on the run directory's disks: new copies of the built image when
    /// `fresh`, else the disks as the last boot (or power cut) left them.
    pub fn boot(fresh: bool, boots: u32) -> Result<Board, String> {
        let run = repo().join("target/virtual-board/run-test");
        if fresh {
            // A guest left over from a test process that was killed with its script: it is this
            // harness's own, power it off.
            let status = Command::new(script())
                .arg("status")
                .env("VBOARD_RUN", &run)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            if status.starts_with("running") {
                let _ = Command::new(script())
                    .arg("powercut")
                    .env("VBOARD_RUN", &run)
                    .status();
            }
        }
        let mut args = vec!["start", "--persistent", "--no-wait", "--while-stdin"];
        if fresh {
            args.push("--fresh");
        }
        let mut child = Command::new(script())
            .args(&args)
            .env("VBOARD_RUN", &run)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run scripts/virtual-board: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut started_at = None;
        let mut line = String::new();
        // The first start builds the image (minutes when its inputs changed).
        let port: Option<u16> = loop {
            line.clear();
            if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!(
                    "scripts/virtual-board start ended ({status}) before the guest started"
                ));
            }
            let l = line.trim();
            if let Some(t) = l.strip_prefix("QEMU: started ") {
                started_at = t.parse::<f64>().ok();
            }
            if let Some(url) = l.strip_prefix("RTSP: ") {
                break url
                    .trim_start_matches("rtsp://127.0.0.1:")
                    .split('/')
                    .next()
                    .and_then(|p| p.parse().ok());
            }
        };
        // Keep draining the script's output so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        let b = Board {
            child,
            _stdin: stdin,
            run,
            port: port.ok_or("no RTSP port in the script's output")?,
            started_at: started_at.ok_or("no start time in the script's output")?,
            user: txt_value("rtsp_user"),
            password: txt_value("rtsp_password"),
            boots,
        };
        b.wait_agent(Duration::from_secs(300))?;
        Ok(b)
    }

    /// rtsp://user:password@127.0.0.1:<port>/live (the credentials of camstream.txt).
    pub fn url(&self) -> String {
        if self.user.is_empty() {
            format!("rtsp://127.0.0.1:{}/live", self.port)
        } else {
            format!(
                "rtsp://{}:{}@127.0.0.1:{}/live",
                self.user, self.password, self.port
            )
        }
    }

    pub fn plain_url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/live", self.port)
    }

    fn qga_sock(&self) -> PathBuf {
        self.run.join("qga.sock")
    }

    fn qmp_sock(&self) -> PathBuf {
        self.run.join("qmp.sock")
    }

    pub fn wait_agent(&self, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < timeout {
            match qga(&self.qga_sock(), "guest-ping", None, Duration::from_secs(3)) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "the guest agent did not answer within {timeout:?} ({last}); console: {}",
            self.run.join("serial.log").display()
        ))
    }

    /// Runs `cmd` with /bin/sh -c in the guest.
    pub fn exec_timeout(&self, cmd: &str, timeout: Duration) -> Exec {
        let sock = self.qga_sock();
        let r = qga(
            &sock,
            "guest-exec",
            Some(json!({"path": "/bin/sh", "arg": ["-c", cmd], "capture-output": true})),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("guest-exec {cmd:?}: {e}"));
        let pid = r["pid"].as_i64().unwrap();
        let t0 = Instant::now();
        loop {
            let st = qga(
                &sock,
                "guest-exec-status",
                Some(json!({ "pid": pid })),
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| panic!("guest-exec-status {cmd:?}: {e}"));
            if st["exited"].as_bool() == Some(true) {
                let dec = |k: &str| {
                    String::from_utf8_lossy(&b64decode(st[k].as_str().unwrap_or(""))).to_string()
                };
                return Exec {
                    code: st["exitcode"]
                        .as_i64()
                        .unwrap_or_else(|| 128 + st["signal"].as_i64().unwrap_or(0)),
                    stdout: dec("out-data"),
                    stderr: dec("err-data"),
                };
            }
            if t0.elapsed() > timeout {
                panic!("guest command {cmd:?} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn exec(&self, cmd: &str) -> Exec {
        self.exec_timeout(cmd, Duration::from_secs(120))
    }

    /// Runs `cmd`, panics with its output unless it exits 0; returns its stdout.
    pub fn sh(&self, cmd: &str) -> String {
        let r = self.exec(cmd);
        assert_eq!(
            r.code, 0,
            "guest command failed: {cmd}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    /// A file from the guest (guest-file-read, 1 MiB at a time).
    pub fn read_file(&self, path: &str) -> Vec<u8> {
        let sock = self.qga_sock();
        let t = Duration::from_secs(60);
        let h = qga(
            &sock,
            "guest-file-open",
            Some(json!({"path": path, "mode": "r"})),
            t,
        )
        .unwrap_or_else(|e| panic!("guest-file-open {path}: {e}"));
        let handle = h.as_i64().unwrap();
        let mut data = Vec::new();
        loop {
            let r = qga(
                &sock,
                "guest-file-read",
                Some(json!({"handle": handle, "count": 1 << 20})),
                t,
            )
            .unwrap_or_else(|e| panic!("guest-file-read {path}: {e}"));
            data.extend(b64decode(r["buf-b64"].as_str().unwrap_or("")));
            if r["eof"].as_bool() == Some(true) || r["count"].as_i64() == Some(0) {
                break;
            }
        }
        let _ = qga(
            &sock,
            "guest-file-close",
            Some(json!({ "handle": handle })),
            t,
        );
        data
    }

    pub fn qmp(&self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        qmp(&self.qmp_sock(), cmd, args)
    }

    /// The guest's screen (QMP screendump; PPM, read here without an image library).
    pub fn screenshot(&self, png_copy: Option<&Path>) -> Image {
        let ppm = self.run.join("screen.ppm");
        let _ = std::fs::remove_file(&ppm);
        self.qmp(
            "screendump",
            Some(json!({"filename": ppm.to_str().unwrap(), "format": "ppm"})),
        )
        .unwrap_or_else(|e| panic!("screendump: {e}"));
        if let Some(png) = png_copy {
            let _ = self.qmp(
                "screendump",
                Some(json!({"filename": png.to_str().unwrap(), "format": "png"})),
            );
        }
        Image::read_ppm(&std::fs::read(&ppm).unwrap())
    }

    /// Power cut: QMP quit (the guest's page cache is lost; what QEMU had written stays on the
    /// disk images). Returns the host time of the cut.
    pub fn power_cut(mut self) -> f64 {
        let t = now_epoch();
        let _ = self.qmp("quit", None);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        t
    }

    /// The run directory's data disk (a partitioned image; the filesystem starts at 1 MiB).
    pub fn data_disk(&self) -> PathBuf {
        self.run.join("disks/data.img")
    }

    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Waits until ffprobe on the host decodes a frame of the stream; returns (width, height).
    pub fn wait_stream(&self, timeout: Duration) -> Result<(i64, i64), String> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < timeout {
            match probe_frame(&self.url()) {
                Ok(wh) => return Ok(wh),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!("no decodable stream within {timeout:?}: {last}"))
    }

    /// Replaces the daemon's settings (the image's camstream.toml with `tables` merged in, a
    /// copy bind-mounted over the read-only root's file) and restarts the service.
    pub fn configure(&self, tables: &str) {
        let base =
            std::fs::read_to_string(repo().join("overlay/etc/camstream/camstream.toml")).unwrap();
        let mut cfg: toml::Table = base.parse().unwrap();
        let extra: toml::Table = tables.parse().expect("test settings are TOML");
        for (k, v) in extra {
            match (cfg.get_mut(&k), v) {
                (Some(toml::Value::Table(t)), toml::Value::Table(e)) => t.extend(e),
                (_, v) => {
                    cfg.insert(k, v);
                }
            }
        }
        let text = toml::to_string(&cfg).unwrap();
        self.sh(&format!(
            "mkdir -p /run/vboard && cat > /run/vboard/camstream.toml <<'EOF'\n{text}EOF\n\
             findmnt /etc/camstream/camstream.toml >/dev/null || mount --bind /run/vboard/camstream.toml /etc/camstream/camstream.toml\n\
             systemctl reset-failed camstream.service; systemctl restart camstream.service"
        ));
    }

    /// `systemctl show` properties of the camstream service.
    pub fn service(&self, prop: &str) -> String {
        self.sh(&format!(
            "systemctl show -p {prop} --value camstream.service"
        ))
        .trim()
        .to_string()
    }

    pub fn journal_since(&self, since_epoch: f64) -> String {
        self.exec(&format!(
            "journalctl -u camstream.service --no-pager -o cat --since @{since_epoch:.3}"
        ))
        .stdout
    }

    pub fn guest_epoch(&self) -> f64 {
        self.sh("date +%s.%N").trim().parse().unwrap()
    }
}

/// One frame decoded by ffprobe from `url` (TCP): (width, height).
pub fn probe_frame(url: &str) -> Result<(i64, i64), String> {
    let out = Command::new("timeout")
        .args(["15", "ffprobe", "-v", "error", "-rtsp_transport", "tcp"])
        .args([
            "-select_streams",
            "v:0",
            "-count_frames",
            "-read_intervals",
            "%+#10",
        ])
        .args([
            "-show_entries",
            "stream=width,height,nb_read_frames",
            "-of",
            "json",
            url,
        ])
        .output()
        .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let s = &v["streams"][0];
    let n: i64 = s["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if n < 1 {
        return Err("no frame decoded".into());
    }
    Ok((
        s["width"].as_i64().unwrap_or(0),
        s["height"].as_i64().unwrap_or(0),
    ))
}

/// Video packets of a file: (pts seconds, keyframe) in presentation order.
pub fn packets(path: &Path) -> Result<Vec<(f64, bool)>, String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let mut v: Vec<(f64, bool)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let t = it.next()?.parse().ok()?;
            Some((t, it.next().unwrap_or("").contains('K')))
        })
        .collect();
    v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    Ok(v)
}

/// Frames ffprobe decodes from a file, and its size.
pub fn decoded(path: &Path) -> Result<(i64, i64, i64), String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let (_, w, h, n) = super::stream_summary(&out.stdout)?;
    Ok((w, h, n))
}

/// An RTSP client on the host (rtspsrc over TCP → avdec_h264) that notes when each frame was
/// decoded and whether the connection ended.
pub struct Watcher {
    pipeline: gst::Pipeline,
    pub frames: Arc<Mutex<Vec<Instant>>>,
    pub ended: Arc<Mutex<Option<String>>>,
    _bus: std::thread::JoinHandle<()>,
}

impl Watcher {
    pub fn start(url: &str) -> Watcher {
        let (p, sink) = super::decoding_client(url, "tcp");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let f = frames.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let _ = s.pull_sample();
                    f.lock().unwrap().push(Instant::now());
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let ended = Arc::new(Mutex::new(None));
        let e = ended.clone();
        let bus = p.bus().unwrap();
        let handle = std::thread::spawn(move || {
            for msg in bus.iter_timed(gst::ClockTime::NONE) {
                use gst::MessageView;
                match msg.view() {
                    MessageView::Eos(_) => {
                        *e.lock().unwrap() = Some("end-of-stream".into());
                        break;
                    }
                    MessageView::Error(err) => {
                        *e.lock().unwrap() = Some(format!("{} ({:?})", err.error(), err.debug()));
                        break;
                    }
                    MessageView::Application(_) => break,
                    _ => {}
                }
            }
        });
        p.set_state(gst::State::Playing).unwrap();
        Watcher {
            pipeline: p,
            frames,
            ended,
            _bus: handle,
        }
    }

    /// Waits for a frame decoded after `after`; returns when it came.
    pub fn frame_after(&self, after: Instant, timeout: Duration) -> Option<Instant> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(t) = self.frames.lock().unwrap().iter().find(|t| **t > after) {
                return Some(*t);
            }
            if self.ended.lock().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        if let Some(bus) = self.pipeline.bus() {
            let _ = bus.post(gst::message::Application::new(gst::Structure::new_empty(
                "stop",
            )));
        }
    }
}

/// An RGB picture.
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn read_ppm(data: &[u8]) -> Image {
        // P6 <w> <h> <max>\n<data>
        let mut fields = Vec::new();
        let mut i = 0;
        while fields.len() < 4 {
            while data[i].is_ascii_whitespace() {
                i += 1;
            }
            if data[i] == b'#' {
                while data[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            let start = i;
            while !data[i].is_ascii_whitespace() {
                i += 1;
            }
            fields.push(String::from_utf8_lossy(&data[start..i]).to_string());
        }
        assert_eq!(fields[0], "P6", "not a binary PPM");
        let width: usize = fields[1].parse().unwrap();
        let height: usize = fields[2].parse().unwrap();
        let rgb = data[i + 1..i + 1 + width * height * 3].to_vec();
        Image { width, height, rgb }
    }

    pub fn pixel(&self, x: usize, y: usize) -> (u8, u8, u8) {
        let o = (y * self.width + x) * 3;
        (self.rgb[o], self.rgb[o + 1], self.rgb[o + 2])
    }
}

fn read_json_line(s: &mut BufReader<UnixStream>) -> Result<Value, String> {
    let mut line = String::new();
    if s.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("socket closed".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))
}

pub fn qmp(sock: &Path, cmd: &str, args: Option<Value>) -> Result<Value, String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    read_json_line(&mut r)?; // greeting
    writeln!(w, "{}", json!({"execute": "qmp_capabilities"})).map_err(|e| e.to_string())?;
    loop {
        if read_json_line(&mut r)?.get("return").is_some() {
            break;
        }
    }
    let mut msg = json!({ "execute": cmd });
    if let Some(a) = args {
        msg["arguments"] = a;
    }
    writeln!(w, "{msg}").map_err(|e| e.to_string())?;
    loop {
        match read_json_line(&mut r) {
            Ok(m) => {
                if let Some(e) = m.get("error") {
                    return Err(e.to_string());
                }
                if let Some(v) = m.get("return") {
                    return Ok(v.clone());
                }
            }
            Err(_) if cmd == "quit" => return Ok(Value::Null),
            Err(e) => return Err(e),
        }
    }
}

/// One guest-agent command on its own connection, after a delimited sync (the channel may hold
/// an answer meant for an earlier, interrupted client).
pub fn qga(
    sock: &Path,
    cmd: &str,
    args: Option<Value>,
    timeout: Duration,
) -> Result<Value, String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let id = (now_epoch() * 1000.0) as i64 % (1 << 30);
    w.write_all(&[0xff]).map_err(|e| e.to_string())?;
    writeln!(
        w,
        "{}",
        json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
    )
    .map_err(|e| e.to_string())?;
    let mut junk = Vec::new();
    r.read_until(0xff, &mut junk)
        .map_err(|e| format!("guest agent: {e}"))?;
    loop {
        let m = read_json_line(&mut r)?;
        if m.get("return").and_then(|v| v.as_i64()) == Some(id) {
            break;
        }
    }
    let mut msg = json!({ "execute": cmd });
    if let Some(a) = args {
        msg["arguments"] = a;
    }
    writeln!(w, "{msg}").map_err(|e| e.to_string())?;
    let m = read_json_line(&mut r)?;
    if let Some(e) = m.get("error") {
        return Err(e.to_string());
    }
    Ok(m.get("return").cloned().unwrap_or(Value::Null))
}

pub fn b64decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
