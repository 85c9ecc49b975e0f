//! The link model (examples/link_emulator.rs) as a TCP sender in the device's namespace feels it:
//! bulk transfers carry the profile's rate, the round trip is twice the one-way delay, a sender
//! faster than the link sees its send queue and RTT grow, and an outage stops everything for
//! its length, after which the same connection carries on by itself. Root only (namespaces, TUN).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::link::{Link, SRV_ADDR};
use common::vboard::loud;

/// Senders use what device kernels default to (the namespaces inherit this machine's default,
/// which may be another one: BBR here).
const DEVICE_CC: &str = "cubic";

/// TCP payload per IP byte for full segments (1448 bytes of data in 1500 with timestamps).
const PAYLOAD_SHARE: f64 = 1448.0 / 1500.0;

fn skipped(test: &str) -> bool {
    match Link::unavailable() {
        Some(why) => {
            loud(&format!("SKIPPED {test}: {why}"));
            true
        }
        None => false,
    }
}

/// What the kernel says about a TCP socket (struct tcp_info offsets, stable since Linux 4.10).
#[derive(Debug, Clone, Copy)]
struct TcpInfo {
    rtt_ms: f64,
    cwnd: u32,
    total_retrans: u32,
    notsent_bytes: u32,
}

fn tcp_info(s: &TcpStream) -> TcpInfo {
    let mut b = [0u8; 232];
    let mut len = b.len() as nix::libc::socklen_t;
    // SAFETY: getsockopt(TCP_INFO) into a buffer we own, with its length.
    let r = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    let u = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    TcpInfo {
        rtt_ms: u(68) as f64 / 1000.0,
        cwnd: u(80),
        total_retrans: u(100),
        notsent_bytes: u(144),
    }
}

/// Bytes in the socket's send queue, not yet acknowledged (SIOCOUTQ).
fn outq(s: &TcpStream) -> usize {
    let mut v: nix::libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int.
    let r = unsafe { nix::libc::ioctl(s.as_raw_fd(), nix::libc::TIOCOUTQ, &mut v) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    v as usize
}

/// The socket's congestion control (TCP_CONGESTION).
fn congestion_control(s: &TcpStream) -> String {
    let mut b = [0u8; 16];
    let mut len = b.len() as nix::libc::socklen_t;
    // SAFETY: getsockopt(TCP_CONGESTION) into a buffer we own, with its length.
    let r = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_CONGESTION,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_CONGESTION: {}", std::io::Error::last_os_error());
    String::from_utf8_lossy(&b[..len as usize])
        .trim_end_matches('\0')
        .to_string()
}

fn set_congestion_control(s: &TcpStream, cc: &str) {
    // SAFETY: setsockopt(TCP_CONGESTION) from a buffer we own, with its length.
    let r = unsafe {
        nix::libc::setsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as nix::libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "TCP_CONGESTION {cc}: {}",
        std::io::Error::last_os_error()
    );
}

fn listen(link: &Link, port: u16) -> TcpListener {
    link.in_srv(move || TcpListener::bind((SRV_ADDR, port)).expect("bind in srv"))
}

fn connect(link: &Link, port: u16) -> TcpStream {
    link.in_dev(move || TcpStream::connect((SRV_ADDR, port)).expect("connect from dev"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Round trips as TCP connection set-ups from dev to srv (SYN out, SYN-ACK back), ms.
fn connect_rtts(link: &Link, n: usize) -> Vec<f64> {
    let l = listen(link, 5000);
    let acceptor = std::thread::spawn(move || {
        for _ in 0..n {
            if l.accept().is_err() {
                break;
            }
        }
    });
    let rtts = link.in_dev(move || {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let s = TcpStream::connect((SRV_ADDR, 5000)).expect("connect");
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                drop(s);
                std::thread::sleep(Duration::from_millis(100));
                ms
            })
            .collect::<Vec<_>>()
    });
    acceptor.join().unwrap();
    rtts
}

/// `flows` bulk TCP transfers dev → srv while `measure` runs; it reads the payload bytes
/// received so far from the counter it is given.
fn bulk<T>(link: &Link, flows: usize, measure: impl FnOnce(&AtomicU64) -> T) -> T {
    let l = listen(link, 5001);
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let acceptor = std::thread::spawn(move || {
        let mut readers = Vec::new();
        for _ in 0..flows {
            let (mut s, _) = l.accept().expect("accept");
            let r = r.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    r.fetch_add(n as u64, Ordering::Relaxed);
                }
            }));
        }
        for h in readers {
            h.join().unwrap();
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..flows)
        .map(|_| {
            let stop = stop.clone();
            link.thread_in_dev(move || {
                let mut s = TcpStream::connect((SRV_ADDR, 5001)).expect("connect");
                set_congestion_control(&s, DEVICE_CC);
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let buf = vec![0x5au8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match s.write(&buf) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => panic!("sender: {e}"),
                    }
                }
            })
        })
        .collect();
    let result = measure(&received);
    stop.store(true, Ordering::Relaxed);
    for h in senders {
        h.join().unwrap();
    }
    acceptor.join().unwrap();
    result
}

/// The payload rate bulk transfers get over `secs` after `warm` seconds, in kbit/s.
fn bulk_kbps(link: &Link, flows: usize, warm: f64, secs: f64) -> f64 {
    bulk(link, flows, |received| {
        std::thread::sleep(Duration::from_secs_f64(warm));
        let (b0, t0) = (received.load(Ordering::Relaxed), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (b1, t1) = (received.load(Ordering::Relaxed), Instant::now());
        (b1 - b0) as f64 * 8.0 / 1000.0 / (t1 - t0).as_secs_f64()
    })
}

/// A profile's rate through bulk TCP (four cubic flows, so that random loss does not leave the
/// link idle: the link's capacity is what is checked, not one flow's loss response) and its
/// round trip, idle.
fn rate_and_rtt(test: &str, profile: &str, kbps: f64, one_way_ms: f64, jitter_ms: f64) {
    if skipped(test) {
        return;
    }
    let link = Link::start(profile);
    let rtts = connect_rtts(&link, 9);
    let rtt = median(rtts.clone());
    let min = rtts.iter().cloned().fold(f64::MAX, f64::min);
    let rate = bulk_kbps(&link, 4, 3.0, 10.0);
    let link_rate = rate / PAYLOAD_SHARE;
    loud(&format!(
        "{profile}: connect RTTs {rtts:.1?} ms (median {rtt:.1}, expected {:.0}); payload {rate:.0} kbit/s \
         = {link_rate:.0} kbit/s of IP packets (profile {kbps:.0})",
        2.0 * one_way_ms
    ));
    assert!(
        (link_rate - kbps).abs() <= 0.15 * kbps,
        "{profile}: {link_rate:.0} kbit/s carried, profile {kbps:.0}"
    );
    assert!(
        rtt >= 2.0 * one_way_ms - jitter_ms - 5.0
            && rtt <= 2.0 * one_way_ms * 1.25 + jitter_ms + 10.0,
        "{profile}: median connect RTT {rtt:.1} ms, one-way delay {one_way_ms} ms"
    );
    assert!(
        min >= 2.0 * (one_way_ms - jitter_ms) - 1.0,
        "{profile}: a round trip of {min:.1} ms is shorter than the model allows"
    );
}

#[test]
fn good_profile_carries_its_rate_with_its_delay() {
    rate_and_rtt("good_profile", "good", 20_000.0, 20.0, 0.0);
}

#[test]
fn fourg_profile_carries_its_rate_with_its_delay() {
    rate_and_rtt("4g_profile", "4g", 3_000.0, 60.0, 20.0);
}

#[test]
fn weak_profile_carries_its_rate_with_its_delay() {
    rate_and_rtt("weak_profile", "weak", 800.0, 120.0, 0.0);
}

/// The link narrows while bulk transfers run: 4g, then (switched at run time through the
/// emulator's standard input) weak for 8 s, then 4g again; the rate follows each phase.
#[test]
fn a_narrowing_link_carries_each_phase_at_its_rate() {
    if skipped("a_narrowing_link_carries_each_phase_at_its_rate") {
        return;
    }
    let link = Link::start("4g");
    let rates = bulk(&link, 4, |received| {
        let at = |t: f64| {
            if let Some(d) = Duration::from_secs_f64(t).checked_sub(link.started.elapsed()) {
                std::thread::sleep(d);
            }
            received.load(Ordering::Relaxed)
        };
        let kbps = |b0: u64, b1: u64, secs: f64| (b1 - b0) as f64 * 8.0 / 1000.0 / secs;
        let (a0, a1) = (at(3.0), at(8.0));
        link.set_timeline("weak:8,4g");
        let (b0, b1) = (at(10.0), at(16.0));
        let (c0, c1) = (at(19.0), at(24.0));
        [kbps(a0, a1, 5.0), kbps(b0, b1, 6.0), kbps(c0, c1, 5.0)]
    });
    let ip = rates.map(|r| r / PAYLOAD_SHARE);
    loud(&format!(
        "narrowing: {:.0} / {:.0} / {:.0} kbit/s of IP packets (4g 3000, weak 800, 4g 3000)",
        ip[0], ip[1], ip[2]
    ));
    for (got, want) in ip.iter().zip([3000.0, 800.0, 3000.0]) {
        assert!(
            (got - want).abs() <= 0.15 * want,
            "{got:.0} kbit/s carried in a phase of {want:.0}: {ip:.0?}"
        );
    }
}

/// A cubic sender (what device kernels default to) writing twice as fast as the 4g link without
/// its random loss: cubic then fills the bottleneck queue. (With the 0.5 % loss a single cubic
/// flow keeps its window near the path's bandwidth-delay product and the queue mostly empty.)
#[test]
fn a_cubic_sender_faster_than_the_link_sees_its_queue_and_rtt_grow() {
    overrun(
        "a_cubic_sender_faster_than_the_link_sees_its_queue_and_rtt_grow",
        "cubic",
        &["--profile", "4g", "--loss-percent", "0"],
    );
}

/// A BBR sender (this machine's default) on the 4g profile as it is, loss included.
#[test]
fn a_bbr_sender_faster_than_the_link_sees_its_queue_and_rtt_grow() {
    overrun(
        "a_bbr_sender_faster_than_the_link_sees_its_queue_and_rtt_grow",
        "bbr",
        &["--profile", "4g"],
    );
}

/// A sender writing twice as fast as the 4g link: the bytes it has handed to TCP pile up in its
/// send queue and its smoothed RTT rises above the idle round trip as the bottleneck fills.
fn overrun(test: &str, cc: &str, link_args: &[&str]) {
    if skipped(test) {
        return;
    }
    let link = Link::start_with(link_args);
    let l = listen(&link, 5002);
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 65536];
        for _ in 0..10 {
            s.read_exact(&mut b[..1]).unwrap();
            s.write_all(&b[..1]).unwrap();
        }
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                break;
            }
        }
    });
    let mut s = connect(&link, 5002);
    set_congestion_control(&s, cc);
    s.set_nodelay(true).unwrap();
    // Idle: ten one-byte echoes, well apart.
    let mut b = [0u8; 1];
    for _ in 0..10 {
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle = tcp_info(&s);
    let idle_outq = outq(&s);
    assert_eq!(congestion_control(&s), cc);
    // 6 Mbit/s in 10 ms writes for 8 s.
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 6_000_000 / 8 / 100];
        let t0 = Instant::now();
        let mut tick = 0u32;
        while t0.elapsed() < Duration::from_secs(8) {
            match w.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("writer: {e}"),
            }
            tick += 1;
            let next = t0 + Duration::from_millis(10) * tick;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    });
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(250));
        samples.push((t0.elapsed().as_secs_f64(), outq(&s), tcp_info(&s)));
    }
    writer.join().unwrap();
    for (t, q, i) in &samples {
        loud(&format!(
            "{cc} t={t:.2} s outq={q} notsent={} rtt={:.1} ms cwnd={} retrans={}",
            i.notsent_bytes, i.rtt_ms, i.cwnd, i.total_retrans
        ));
    }
    loud(&format!(
        "idle: outq={idle_outq} {idle:?}, congestion control {cc}"
    ));
    let peak_outq = samples.iter().map(|s| s.1).max().unwrap();
    let peak_rtt = samples.iter().map(|s| s.2.rtt_ms).fold(0.0, f64::max);
    drop(s);
    server.join().unwrap();
    assert!(
        idle.rtt_ms > 100.0 && idle.rtt_ms < 170.0,
        "idle RTT {:.1} ms, 2 × 60 ms expected",
        idle.rtt_ms
    );
    // 300 kB is 0.8 s of the link's rate waiting in the sender.
    assert!(
        idle_outq == 0 && peak_outq > 300_000,
        "send queue {idle_outq} B idle, at most {peak_outq} B while the link was overrun"
    );
    assert!(
        peak_rtt > idle.rtt_ms + 50.0,
        "RTT {:.1} ms idle, at most {peak_rtt:.1} ms while the link was overrun",
        idle.rtt_ms
    );
}

/// `outage`: 4g for 10 s, then 10 s with nothing getting through, then 4g. A 1 Mbit/s stream
/// started before it sees nothing arrive during it, and the same connection delivers again
/// afterwards without anyone doing anything.
#[test]
fn an_outage_stops_everything_and_the_transfer_resumes_after_it() {
    if skipped("an_outage_stops_everything_and_the_transfer_resumes_after_it") {
        return;
    }
    let link = Link::start("outage");
    let start = link.started;
    let l = listen(&link, 5003);
    let arrivals: Arc<Mutex<Vec<(f64, usize)>>> = Arc::default();
    let a = arrivals.clone();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = vec![0u8; 65536];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                break;
            }
            a.lock().unwrap().push((start.elapsed().as_secs_f64(), n));
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let sender = link.thread_in_dev(move || {
        let mut s = TcpStream::connect((SRV_ADDR, 5003)).expect("connect");
        set_congestion_control(&s, DEVICE_CC);
        s.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let chunk = vec![0u8; 1_000_000 / 8 / 10];
        let mut errors = Vec::new();
        while !st.load(Ordering::Relaxed) {
            match s.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => errors.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        errors
    });
    // Until well after the outage (RTO backoff can leave the sender quiet for ~10 s after it).
    let deadline = Duration::from_secs(50);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let after: usize = arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > 20.0)
            .map(|(_, n)| n)
            .sum();
        if after > 200_000 || start.elapsed() > deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let errors = sender.join().unwrap();
    receiver.join().unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    let sum = |from: f64, to: f64| -> usize {
        arrivals
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, n)| n)
            .sum()
    };
    let before = sum(1.0, 10.0);
    let during = sum(10.3, 19.9);
    let resumed_at = arrivals.iter().find(|(t, _)| *t >= 20.0).map(|(t, _)| *t);
    loud(&format!(
        "before the outage {before} B in 9 s, during {during} B, first bytes after it at {resumed_at:?} s, \
         after it {} B; sender errors {errors:?}",
        sum(20.0, 1e9)
    ));
    assert!(
        before > 700_000,
        "only {before} B arrived before the outage"
    );
    assert_eq!(during, 0, "bytes arrived during the outage");
    assert!(errors.is_empty(), "the sender saw errors: {errors:?}");
    let resumed_at = resumed_at.expect("nothing arrived after the outage");
    assert!(
        resumed_at < 20.0 + 25.0,
        "the transfer came back only at {resumed_at:.1} s"
    );
    assert!(
        sum(20.0, 1e9) > 200_000,
        "the transfer did not carry on after the outage"
    );
}
