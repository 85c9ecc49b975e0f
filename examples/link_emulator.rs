//! A packet-level model of a mobile uplink, for tests and benchmarks (docs/link-model.md).
//!
//! Two network namespaces, "dev" (the device) and "srv" (the media server, relay, viewers), each
//! with a TUN interface `cs0` (10.201.0.1/30 in dev, 10.201.0.2/30 in srv, a default route through
//! it). This process holds both TUN file descriptors and moves IP packets between them; per
//! direction it applies a rate limit behind a drop-tail bottleneck queue (its size given in
//! milliseconds at the current rate, like a base station's buffer), a one-way delay with jitter
//! that keeps packets in order, random loss and outages (everything dropped). TCP between the
//! namespaces is real end to end: the sender's send queue and RTT see the bottleneck.
//!
//! Profiles and timelines are data (`PROFILES`, `TIMELINES`); `--timeline` takes a spec like
//! `4g:20,weak:20,4g` (seconds per phase; the last phase lasts, or the whole repeats with
//! `--loop`). Lines on standard input change the model while it runs: `timeline <spec>`
//! (starts the spec now) or `quit`.
//!
//! Output on stdout, one line each: `ready ...` once the interfaces are up, `phase t=.. name=..`
//! at each phase change, and every second `stats t=.. phase=.. up_bytes=.. up_pkts=..
//! up_queue_bytes=.. up_drop_queue=.. up_drop_loss=.. up_drop_outage=.. down_...` (bytes and
//! packets delivered in that second, IP bytes; queue depth at the end of the second; drops in
//! that second). "up" is dev → srv.
//!
//! As root:
//! cargo run --example link_emulator -- --profile 4g --create [--dev-ns cs-dev-1 --srv-ns cs-srv-1]
//! then e.g. `ip netns exec cs-srv-1 <server>` and `ip netns exec cs-dev-1 <device>`; SIGTERM,
//! SIGINT or `quit` end it (and with --create remove the namespaces).

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use nix::libc;

/// One state of the link. Rates are IP bytes (headers included).
#[derive(Clone, Debug, PartialEq)]
struct Profile {
    name: &'static str,
    /// dev → srv rate, kbit/s.
    up_kbps: f64,
    /// srv → dev rate, kbit/s.
    down_kbps: f64,
    /// One-way delay, both directions, ms.
    delay_ms: f64,
    /// Uniform jitter ± this, ms (order kept: a packet never overtakes the one before it).
    jitter_ms: f64,
    /// Random loss, both directions, percent.
    loss_percent: f64,
    /// Bottleneck queue size, as milliseconds at the current rate.
    queue_ms: f64,
    /// Nothing gets through.
    outage: bool,
}

const PROFILES: &[Profile] = &[
    Profile {
        name: "good",
        up_kbps: 20_000.0,
        down_kbps: 20_000.0,
        delay_ms: 20.0,
        jitter_ms: 0.0,
        loss_percent: 0.0,
        queue_ms: 50.0,
        outage: false,
    },
    Profile {
        name: "4g",
        up_kbps: 3_000.0,
        down_kbps: 3_000.0,
        delay_ms: 60.0,
        jitter_ms: 20.0,
        loss_percent: 0.5,
        queue_ms: 200.0,
        outage: false,
    },
    Profile {
        name: "weak",
        up_kbps: 800.0,
        down_kbps: 800.0,
        delay_ms: 120.0,
        jitter_ms: 0.0,
        loss_percent: 2.0,
        queue_ms: 400.0,
        outage: false,
    },
    Profile {
        name: "down",
        up_kbps: 0.0,
        down_kbps: 0.0,
        delay_ms: 0.0,
        jitter_ms: 0.0,
        loss_percent: 100.0,
        queue_ms: 0.0,
        outage: true,
    },
];

/// Named timelines: `name:seconds` phases, the last one lasting.
const TIMELINES: &[(&str, &str)] = &[
    ("narrowing", "4g:20,weak:20,4g"),
    ("outage", "4g:10,down:10,4g"),
];

#[derive(Parser, Debug)]
#[command(about = "Packet-level uplink model between two network namespaces over TUN")]
struct Args {
    /// good | 4g | weak | down | narrowing | outage
    #[arg(long, default_value = "4g")]
    profile: String,
    /// A timeline instead of --profile: `name[:seconds],...`, e.g. `4g:20,weak:20,4g`.
    #[arg(long)]
    timeline: Option<String>,
    /// Repeat the timeline.
    #[arg(long = "loop")]
    repeat: bool,
    /// Overrides for every phase that is not an outage.
    #[arg(long)]
    rate_kbps: Option<f64>,
    #[arg(long)]
    down_rate_kbps: Option<f64>,
    #[arg(long)]
    delay_ms: Option<f64>,
    #[arg(long)]
    jitter_ms: Option<f64>,
    #[arg(long)]
    loss_percent: Option<f64>,
    #[arg(long)]
    queue_ms: Option<f64>,
    /// Namespace of the device side.
    #[arg(long, default_value_t = format!("cs-dev-{}", std::process::id()))]
    dev_ns: String,
    /// Namespace of the server side.
    #[arg(long, default_value_t = format!("cs-srv-{}", std::process::id()))]
    srv_ns: String,
    /// Create both namespaces (they must not exist) and remove them on exit.
    #[arg(long)]
    create: bool,
    #[arg(long, default_value = "10.201.0.1")]
    dev_addr: String,
    #[arg(long, default_value = "10.201.0.2")]
    srv_addr: String,
    /// TCP congestion control as both namespaces' default (else they inherit the machine's).
    /// A namespace may only pick one of net.ipv4.tcp_allowed_congestion_control.
    #[arg(long)]
    cc: Option<String>,
    /// Random seed (loss and jitter).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exit when standard input closes (a test's guard dying takes the link with it).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

fn profile(name: &str) -> Option<Profile> {
    PROFILES.iter().find(|p| p.name == name).cloned()
}

/// Phases with their durations in seconds (None: lasts).
fn parse_timeline(spec: &str, args: &Args) -> Result<Vec<(Profile, Option<f64>)>> {
    let spec = TIMELINES
        .iter()
        .find(|(n, _)| *n == spec)
        .map(|(_, s)| *s)
        .unwrap_or(spec);
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, secs) = match part.split_once(':') {
            Some((n, s)) => (
                n,
                Some(
                    s.parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0)
                        .ok_or_else(|| anyhow!("bad duration in {part:?}"))?,
                ),
            ),
            None => (part, None),
        };
        let mut p = profile(name).ok_or_else(|| {
            anyhow!(
                "unknown profile {name:?} (profiles: {}; timelines: {})",
                PROFILES
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(" "),
                TIMELINES.iter().map(|t| t.0).collect::<Vec<_>>().join(" ")
            )
        })?;
        if !p.outage {
            if let Some(r) = args.rate_kbps {
                p.up_kbps = r;
                p.down_kbps = r;
            }
            if let Some(r) = args.down_rate_kbps {
                p.down_kbps = r;
            }
            if let Some(v) = args.delay_ms {
                p.delay_ms = v;
            }
            if let Some(v) = args.jitter_ms {
                p.jitter_ms = v;
            }
            if let Some(v) = args.loss_percent {
                p.loss_percent = v;
            }
            if let Some(v) = args.queue_ms {
                p.queue_ms = v;
            }
            if p.up_kbps <= 0.0 || p.down_kbps <= 0.0 {
                bail!("rates must be positive");
            }
        }
        out.push((p, secs));
    }
    if out.is_empty() {
        bail!("empty timeline");
    }
    Ok(out)
}

struct Timeline {
    phases: Vec<(Profile, Option<f64>)>,
    start: f64,
    repeat: bool,
}

impl Timeline {
    /// The phase at time `t` (seconds since the emulator started).
    fn at(&self, t: f64) -> (usize, &Profile) {
        let total: Option<f64> = self.phases.iter().map(|p| p.1).sum();
        let mut rel = (t - self.start).max(0.0);
        if self.repeat {
            if let Some(total) = total {
                rel %= total;
            }
        }
        for (i, (p, d)) in self.phases.iter().enumerate() {
            match d {
                Some(d) if rel >= *d => rel -= d,
                _ => return (i, p),
            }
        }
        let last = self.phases.len() - 1;
        (last, &self.phases[last].0)
    }
}

/// xorshift64*: loss and jitter need no more.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default, Clone, Copy)]
struct Stats {
    bytes: u64,
    pkts: u64,
    drop_queue: u64,
    drop_loss: u64,
    drop_outage: u64,
}

struct Pkt {
    tx_done: f64,
    release: f64,
    data: Vec<u8>,
}

/// One direction of the link.
struct Dir {
    up: bool,
    from: RawFd,
    to: RawFd,
    /// When the bottleneck has sent everything queued so far.
    link_free: f64,
    last_release: f64,
    line: VecDeque<Pkt>,
    stats: Stats,
}

impl Dir {
    fn new(up: bool, from: RawFd, to: RawFd) -> Dir {
        Dir {
            up,
            from,
            to,
            link_free: 0.0,
            last_release: 0.0,
            line: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn arrive(&mut self, now: f64, p: &Profile, rng: &mut Rng, data: &[u8]) {
        if p.outage {
            self.stats.drop_outage += 1;
            return;
        }
        let rate = if self.up { p.up_kbps } else { p.down_kbps } * 1000.0;
        let ser = data.len() as f64 * 8.0 / rate;
        let backlog = (self.link_free - now).max(0.0);
        if backlog > 0.0 && backlog + ser > p.queue_ms / 1000.0 {
            self.stats.drop_queue += 1;
            return;
        }
        let tx_done = now.max(self.link_free) + ser;
        self.link_free = tx_done;
        // Lost on the air: it used its share of the link all the same.
        if rng.next() * 100.0 < p.loss_percent {
            self.stats.drop_loss += 1;
            return;
        }
        let jitter = (rng.next() * 2.0 - 1.0) * p.jitter_ms;
        let delay = ((p.delay_ms + jitter) / 1000.0).max(0.0);
        let release = self.last_release.max(tx_done + delay);
        self.last_release = release;
        self.line.push_back(Pkt {
            tx_done,
            release,
            data: data.to_vec(),
        });
    }

    fn release(&mut self, now: f64, p: &Profile) {
        while self.line.front().is_some_and(|k| k.release <= now) {
            let k = self.line.pop_front().unwrap();
            if p.outage {
                self.stats.drop_outage += 1;
                continue;
            }
            // SAFETY: writing a buffer we own to an fd we hold.
            let n = unsafe { libc::write(self.to, k.data.as_ptr().cast(), k.data.len()) };
            if n == k.data.len() as isize {
                self.stats.bytes += k.data.len() as u64;
                self.stats.pkts += 1;
            }
        }
    }

    fn next_release(&self) -> Option<f64> {
        self.line.front().map(|k| k.release)
    }

    /// Bytes waiting at the bottleneck (not yet sent on the link).
    fn queued_bytes(&self, now: f64) -> usize {
        self.line
            .iter()
            .filter(|k| k.tx_done > now)
            .map(|k| k.data.len())
            .sum()
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .context("run ip (iproute2)")?;
    if !st.success() {
        bail!("ip {} failed: {st}", args.join(" "));
    }
    Ok(())
}

fn open_ns(path: &str) -> Result<File> {
    File::open(path).with_context(|| format!("open {path}"))
}

fn setns(f: &File) -> Result<()> {
    // SAFETY: plain syscall on an fd we hold; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a TUN device `name` (IFF_TUN | IFF_NO_PI, non-blocking) in the calling thread's network
/// namespace; it goes away with the descriptor.
fn open_tun(name: &str) -> Result<OwnedFd> {
    let path = CString::new("/dev/net/tun").unwrap();
    // SAFETY: open(2) with a valid C string.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("open /dev/net/tun");
    }
    // SAFETY: fd was just opened and is ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as u16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq (40 bytes) we own.
    if unsafe { libc::ioctl(fd, TUNSETIFF as _, ifr.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(owned)
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    // Per namespace: /proc/sys/net is the namespace of the thread that opens it.
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("write {value:?} to {path}"))
}

/// In `ns`: loopback up, TUN `cs0` with `addr/30`, default route through it.
fn side(ns: &str, addr: &str, cc: Option<&str>) -> Result<OwnedFd> {
    let own = open_ns("/proc/thread-self/ns/net")?;
    setns(&open_ns(&format!("/run/netns/{ns}"))?)?;
    let tun = open_tun("cs0").and_then(|tun| {
        // No IPv6 chatter (router solicitations) on the modelled link.
        write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        if let Some(cc) = cc {
            write_sysctl("net.ipv4.tcp_congestion_control", cc)?;
        }
        Ok(tun)
    });
    setns(&own)?;
    let tun = tun?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", "cs0"])?;
    ip(&["-n", ns, "link", "set", "cs0", "up"])?;
    ip(&["-n", ns, "route", "add", "default", "dev", "cs0"])?;
    Ok(tun)
}

struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let spec = args
        .timeline
        .clone()
        .unwrap_or_else(|| args.profile.clone());
    let mut timeline = Timeline {
        phases: parse_timeline(&spec, &args)?,
        start: 0.0,
        repeat: args.repeat,
    };

    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }

    let mut created = Namespaces { names: Vec::new() };
    if args.create {
        for ns in [&args.dev_ns, &args.srv_ns] {
            ip(&["netns", "add", ns])?;
            created.names.push(ns.clone());
        }
    }
    let dev = side(&args.dev_ns, &args.dev_addr, args.cc.as_deref())?;
    let srv = side(&args.srv_ns, &args.srv_addr, args.cc.as_deref())?;

    let t0 = Instant::now();
    let now = || t0.elapsed().as_secs_f64();
    let mut dirs = [
        Dir::new(true, dev.as_raw_fd(), srv.as_raw_fd()),
        Dir::new(false, srv.as_raw_fd(), dev.as_raw_fd()),
    ];
    let mut rng = Rng(args.seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ready dev_ns={} srv_ns={} dev_addr={} srv_addr={} timeline={spec}",
        args.dev_ns, args.srv_ns, args.dev_addr, args.srv_addr
    )?;
    out.flush()?;

    // SAFETY: stdin stays open for the process's life; non-blocking reads only.
    unsafe {
        let fl = libc::fcntl(0, libc::F_GETFL);
        libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut stdin_open = true;
    let mut stdin_buf = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut last_phase = usize::MAX;
    let mut next_report = 1.0;
    let mut reported = [Stats::default(); 2];

    while !STOP.load(Ordering::SeqCst) {
        let t = now();
        let (pi, p) = timeline.at(t);
        let p = p.clone();
        if pi != last_phase {
            writeln!(out, "phase t={t:.3} name={}", p.name)?;
            out.flush()?;
            last_phase = pi;
        }
        for d in dirs.iter_mut() {
            d.release(t, &p);
        }
        if t >= next_report {
            let mut line = format!("stats t={next_report:.0} phase={}", p.name);
            for (i, d) in dirs.iter().enumerate() {
                let (s, r) = (d.stats, reported[i]);
                let tag = if d.up { "up" } else { "down" };
                line += &format!(
                    " {tag}_bytes={} {tag}_pkts={} {tag}_queue_bytes={} {tag}_drop_queue={} {tag}_drop_loss={} {tag}_drop_outage={}",
                    s.bytes - r.bytes,
                    s.pkts - r.pkts,
                    d.queued_bytes(t),
                    s.drop_queue - r.drop_queue,
                    s.drop_loss - r.drop_loss,
                    s.drop_outage - r.drop_outage
                );
                reported[i] = s;
            }
            writeln!(out, "{line}")?;
            out.flush()?;
            next_report += 1.0;
        }

        let mut wake = next_report.min(t + 0.05);
        for d in &dirs {
            if let Some(r) = d.next_release() {
                wake = wake.min(r);
            }
        }
        let wait = (wake - t).max(0.0);
        let ts = libc::timespec {
            tv_sec: wait.trunc() as libc::time_t,
            tv_nsec: (wait.fract() * 1e9) as libc::c_long,
        };
        let mut fds = [
            libc::pollfd {
                fd: dev.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: srv.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of 3 pollfds; timeout is a valid timespec.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 3, &ts, std::ptr::null()) };
        if n <= 0 {
            continue;
        }
        let t = now();
        let p = timeline.at(t).1.clone();
        for (i, d) in dirs.iter_mut().enumerate() {
            if fds[i].revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: reading into a buffer we own, of its length.
                let n = unsafe { libc::read(d.from, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                d.arrive(t, &p, &mut rng, &buf[..n as usize]);
            }
        }
        if fds[2].revents != 0 {
            // SAFETY: as above.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 || (n < 0 && fds[2].revents & (libc::POLLHUP | libc::POLLERR) != 0) {
                stdin_open = false;
                if args.exit_on_stdin_eof {
                    break;
                }
            } else if n > 0 {
                stdin_buf.extend_from_slice(&buf[..n as usize]);
                while let Some(nl) = stdin_buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = stdin_buf.drain(..=nl).collect();
                    let line = String::from_utf8_lossy(&line).trim().to_string();
                    match line.split_once(' ') {
                        Some(("timeline", spec)) => match parse_timeline(spec, &args) {
                            Ok(phases) => {
                                timeline = Timeline {
                                    phases,
                                    start: now(),
                                    repeat: args.repeat,
                                };
                                last_phase = usize::MAX;
                            }
                            Err(e) => eprintln!("link-emulator: {e:#}"),
                        },
                        _ if line == "quit" => STOP.store(true, Ordering::SeqCst),
                        _ if line.is_empty() => {}
                        _ => eprintln!("link-emulator: unknown command {line:?}"),
                    }
                }
            }
        }
    }
    writeln!(out, "exit t={:.3}", now())?;
    out.flush()?;
    drop((dev, srv));
    drop(created);
    Ok(())
}
