//! A modelled mobile link between two network namespaces (examples/link_emulator.rs,
//! docs/link-model.md): `Link::start("4g")` creates `cs-dev-*` (10.201.0.1) and `cs-srv-*`
//! (10.201.0.2) joined by the emulator; run the device side in dev and the server side in srv,
//! as processes (`exec_in_dev`) or as threads whose sockets live there (`in_dev`, `thread_in_dev`).
//! Everything is removed on drop, also when the test panics.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const DEV_ADDR: &str = "10.201.0.1";
pub const SRV_ADDR: &str = "10.201.0.2";

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Link {
    child: Child,
    stdin: Mutex<Option<ChildStdin>>,
    pub dev_ns: String,
    pub srv_ns: String,
    /// When the emulator's clock started (its timeline's t=0), as near as the test can tell.
    pub started: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The emulator binary. `cargo test` builds the examples, `cargo test --test x` does not: it is
/// brought up to date once per test process.
pub fn emulator() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_camstream"))
        .parent()
        .unwrap()
        .to_path_buf();
    BUILT.get_or_init(|| {
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "--quiet", "--locked", "--example", "link_emulator"])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if dir.ends_with("release") {
            c.arg("--release");
        }
        let _ = c.status();
    });
    dir.join("examples/link_emulator")
}

/// Runs `f` in a thread of its own inside network namespace `ns`; sockets made there stay there.
pub fn thread_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f_ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns(2) on an fd we hold; it moves only this thread.
        let r = unsafe { nix::libc::setns(f_ns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn join<T>(h: JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

impl Link {
    /// Why the link cannot be made here, if it cannot.
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("network namespaces and TUN devices need root".into());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Some("no /dev/net/tun".into());
        }
        let ip = Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !ip.map(|s| s.success()).unwrap_or(false) {
            return Some("no `ip` (iproute2)".into());
        }
        if !emulator().exists() {
            return Some(format!("{} not built", emulator().display()));
        }
        None
    }

    /// A link with a profile or timeline name (good, 4g, weak, narrowing, outage).
    pub fn start(profile: &str) -> Link {
        Self::start_with(&["--profile", profile])
    }

    /// A link with these emulator arguments (e.g. `--timeline 4g:5,down:3,4g`, `--loss-percent 0`).
    pub fn start_with(args: &[&str]) -> Link {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dev_ns = format!("cs-dev-{pid}-{n}");
        let srv_ns = format!("cs-srv-{pid}-{n}");
        let mut child = Command::new(emulator())
            .args(["--create", "--exit-on-stdin-eof", "--dev-ns", &dev_ns])
            .args(["--srv-ns", &srv_ns])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn link_emulator");
        let stdin = Mutex::new(child.stdin.take());
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(Instant::now());
                }
                l.lock().unwrap().push(line);
            }
        });
        let mut link = Link {
            child,
            stdin,
            dev_ns,
            srv_ns,
            started: Instant::now(),
            lines,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(t) => link.started = t,
            Err(_) => panic!(
                "link emulator not ready within 10 s: {:?}",
                link.lines.lock().unwrap()
            ),
        }
        link
    }

    /// `ip netns exec <dev> <program>`: add arguments, then run it.
    pub fn exec_in_dev(&self, program: &str) -> Command {
        exec_in(&self.dev_ns, program)
    }

    pub fn exec_in_srv(&self, program: &str) -> Command {
        exec_in(&self.srv_ns, program)
    }

    /// Runs `f` inside the device's namespace and returns what it returns.
    pub fn in_dev<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        join(thread_in(&self.dev_ns, f))
    }

    pub fn in_srv<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        join(thread_in(&self.srv_ns, f))
    }

    pub fn thread_in_dev<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        thread_in(&self.dev_ns, f)
    }

    pub fn thread_in_srv<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        thread_in(&self.srv_ns, f)
    }

    /// Switches the model now to a profile or timeline (`weak`, `4g:10,down:5,4g`, `narrowing`).
    pub fn set_timeline(&self, spec: &str) {
        let mut stdin = self.stdin.lock().unwrap();
        let stdin = stdin.as_mut().expect("emulator stdin");
        writeln!(stdin, "timeline {spec}").expect("write to the link emulator");
        stdin.flush().unwrap();
    }

    /// The emulator's output so far (`stats ...` once a second, `phase ...`).
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn exec_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

impl Drop for Link {
    fn drop(&mut self) {
        // Closing its stdin ends the emulator (--exit-on-stdin-eof); it removes the namespaces.
        drop(self.stdin.lock().unwrap().take());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for ns in [&self.dev_ns, &self.srv_ns] {
            if std::path::Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
