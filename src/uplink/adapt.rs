//! Keeps the uplink within what its link carries: a thread of its own per attached uplink
//! looks at the link every 100 ms (the uplink queue's fill in time, the socket's unacknowledged
//! bytes and round-trip time) and sets the encoder's bitrate the `rate` controller asks for.
//! The encoder is shared with the recording, so the owner's floor (`uplink.min_bitrate_kbps`)
//! bounds how far the recording's quality may go down while a viewer watches over a narrow
//! link; below it the uplink's queue, bounded in time, drops whole GOPs. When the uplink goes
//! the configured bitrate comes back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::rate::{self, Limits, Rate};
use super::tcp;
use crate::profile::Properties;

/// The running encoder's bitrate, set the way its element takes it (`encoders.toml`, `rate`).
#[derive(Clone)]
pub struct EncoderRate {
    element: gst::Element,
    properties: Properties,
}

impl EncoderRate {
    /// None when the encoder's bitrate cannot change while it runs (nothing in `rate`).
    pub fn new(element: gst::Element, properties: Properties) -> Option<Self> {
        (!properties.is_empty()).then_some(Self {
            element,
            properties,
        })
    }

    /// Any thread: GStreamer properties are set under the element's lock.
    pub fn set(&self, kbps: u32) {
        for (k, v) in &self.properties {
            let v = v
                .replace("{bitrate_kbps}", &kbps.to_string())
                .replace("{bitrate_bps}", &(kbps as u64 * 1000).to_string());
            if self.element.find_property(k).is_none() {
                continue;
            }
            self.element.set_property_from_str(k, &v);
        }
    }
}

/// The link as last seen, for status and metrics.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub bitrate_kbps: AtomicU64,
    pub carried_kbps: AtomicU64,
    pub backlog_ms: AtomicU64,
    pub rtt_ms: AtomicU64,
}

/// What one adapter needs. Built on the main loop at attach.
pub struct Spec {
    pub limits: Limits,
    /// The media server's port: the uplink's socket is ours connected to it.
    pub port: u16,
    /// Our sockets to that port when the uplink attached (other pushes): not the uplink's.
    pub before: BTreeSet<u64>,
    /// The uplink's queue, whose fill in time is video not yet handed to the socket.
    pub queue: gst::Element,
    /// None: the rate stays (not adaptive, or the encoder's rate is fixed); the link is still
    /// measured and the socket bounded.
    pub encoder: Option<EncoderRate>,
    /// An encoder of its own: one raw frame in this many reaches it.
    pub keep_every: Option<Arc<AtomicU32>>,
    pub stats: Arc<LinkStats>,
}

/// A running adapter; dropping it stops the thread, which puts the configured bitrate back.
pub struct Adapter {
    stop: Arc<AtomicBool>,
}

impl Drop for Adapter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Our sockets to `port` now (main-loop thread, at attach: a directory listing, no waiting).
pub fn sockets_to(port: u16) -> BTreeSet<u64> {
    tcp::connected_to(port)
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

pub fn start(spec: Spec) -> Adapter {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("uplink-rate".into())
        .spawn(move || run(spec, &flag));
    if let Err(e) = spawned {
        log::warn!("uplink: cannot start the rate adapter: {e}");
    }
    Adapter { stop }
}

/// The adapter's own thread.
fn run(spec: Spec, stop: &AtomicBool) {
    let Spec {
        limits,
        port,
        before,
        queue,
        encoder,
        keep_every,
        stats,
    } = spec;
    let mut rate = Rate::new(limits);
    let mut socket: Option<(u64, i32)> = None;
    // A quarter second at the bitrate, at least 16 kB (the kernel doubles it): what sits there
    // when the link goes away is played out late when it comes back.
    let send_buffer = |kbps: u32| (kbps * 1000 / 8 / 4).max(16 * 1024);
    let mut last_log = Instant::now() - Duration::from_secs(60);
    stats
        .bitrate_kbps
        .store(limits.max_kbps as u64, Ordering::Relaxed);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(rate::PERIOD);
        if socket.is_none() {
            socket = tcp::find_new(port, &before);
            if let Some((_, fd)) = socket {
                if !tcp::cap_send_buffer(fd, send_buffer(rate.kbps())) {
                    log::debug!("uplink: cannot cap the socket's send buffer");
                }
            }
        }
        let Some((_, fd)) = socket else { continue };
        let Some(t) = tcp::sample(fd) else {
            // Closed (the branch is going, or reconnecting): look again.
            socket = None;
            continue;
        };
        let queued_ns: u64 = queue.property("current-level-time");
        let s = rate::Sample {
            queued_ms: queued_ns / 1_000_000,
            unsent_bytes: t.notsent_bytes,
            rtt_us: t.rtt_us,
            acked_bytes: t.acked_bytes,
        };
        let now = Instant::now();
        let change = rate.on_sample(now, &s);
        if let Some(k) = &keep_every {
            let every = rate.keep_every();
            if k.swap(every, Ordering::Relaxed) != every {
                log::info!(
                    "uplink: link carries {} kbit/s at the floor: one frame in {every}",
                    rate.carried_kbps().unwrap_or(0)
                );
            }
        }
        let backlog = rate.backlog_ms(&s);
        let carried = rate.carried_kbps().unwrap_or(0);
        stats.backlog_ms.store(backlog, Ordering::Relaxed);
        stats
            .rtt_ms
            .store(t.rtt_us as u64 / 1000, Ordering::Relaxed);
        stats.carried_kbps.store(carried as u64, Ordering::Relaxed);
        if let Some(kbps) = change {
            stats.bitrate_kbps.store(kbps as u64, Ordering::Relaxed);
            if let Some(e) = &encoder {
                e.set(kbps);
            }
            tcp::cap_send_buffer(fd, send_buffer(kbps));
            // Steps come every few hundred ms on a changing link: one line in a while.
            if now.duration_since(last_log) >= Duration::from_secs(5) || kbps == limits.max_kbps {
                last_log = now;
                log::info!(
                    "uplink: link carries {carried} kbit/s, {backlog} ms waiting, round trip {} ms: bitrate {kbps} kbit/s",
                    t.rtt_us / 1000
                );
            }
        }
    }
    if let Some(e) = &encoder {
        if rate.kbps() != limits.max_kbps {
            e.set(limits.max_kbps);
            log::info!("uplink: gone, bitrate back to {} kbit/s", limits.max_kbps);
        }
    }
}
