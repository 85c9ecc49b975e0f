//! The in-process RTSP server, fed from the encoded tee without a second encode.
//!
//! Each shared media gets its own appsink branch on the main pipeline and an appsrc in its own
//! media pipeline. The media pipeline runs on the main pipeline's clock and base time (start time
//! NONE), so buffer timestamps cross unchanged and nothing waits: the path adds ~3 ms.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

use crate::branch::{self, Branch};
use crate::config::{RtspConfig, RtspTransport};
use crate::{gop_gate, keyframes, plan};

const MEDIA_LAUNCH: &str =
    "( appsrc name=src is-live=true format=time do-timestamp=false min-latency=0 \
     ! rtph264pay name=pay0 pt=96 config-interval=-1 aggregate-mode=zero-latency )";

struct Shared {
    pipeline: glib::WeakRef<gst::Pipeline>,
    tee: glib::WeakRef<gst::Element>,
    queue_buffers: u32,
    /// Branches feeding prepared media; read on PLAY to request a keyframe.
    branches: Mutex<Vec<Branch>>,
    next_id: AtomicUsize,
    clients: AtomicUsize,
    max_clients: usize,
    /// Set once the device stops: branches then stay linked so end-of-stream reaches their
    /// appsinks (a bin forgets a removed sink's pending EOS and would wait for it).
    stopping: AtomicBool,
}

pub struct RtspServer {
    _server: gst_rtsp_server::RTSPServer,
    _source: glib::SourceId,
    shared: Arc<Shared>,
    pub url: String,
    /// Every address a client can use: the machine's addresses when bound to all of them.
    pub urls: Vec<String>,
}

impl RtspServer {
    /// Starts listening. Runs on the main-loop thread, whose context serves the clients.
    pub fn start(cfg: &RtspConfig, pipeline: &gst::Pipeline, tee: &gst::Element) -> Result<Self> {
        let shared = Arc::new(Shared {
            pipeline: pipeline.downgrade(),
            tee: tee.downgrade(),
            queue_buffers: cfg.queue_buffers.u32(),
            branches: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            max_clients: cfg.max_clients.get() as usize,
            stopping: AtomicBool::new(false),
        });

        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address(&cfg.bind.to_string());
        server.set_service(&cfg.port.to_string());

        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(MEDIA_LAUNCH);
        factory.set_shared(true);
        let mut protocols = gst_rtsp::RTSPLowerTrans::empty();
        for t in &cfg.transports {
            protocols |= match t {
                RtspTransport::Tcp => gst_rtsp::RTSPLowerTrans::TCP,
                RtspTransport::Udp => gst_rtsp::RTSPLowerTrans::UDP,
            };
        }
        factory.set_protocols(protocols);

        if !cfg.user.is_empty() {
            let auth = gst_rtsp_server::RTSPAuth::new();
            let token = gst_rtsp_server::RTSPToken::builder()
                .field(gst_rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
                .build();
            auth.add_digest(&cfg.user, &cfg.password, &token);
            auth.set_supported_methods(gst_rtsp::RTSPAuthMethod::Digest);
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(
                &gst::Structure::builder("viewer")
                    .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                    .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                    .build(),
            );
        }

        let s = shared.clone();
        factory.connect_media_configure(move |_, media| {
            if let Err(e) = configure_media(&s, media) {
                log::error!("RTSP: cannot feed new media: {e:#}");
            }
        });

        let s = shared.clone();
        let session_timeout = cfg.session_timeout_seconds.u32();
        server.connect_client_connected(move |_, client| {
            // The timeout is announced in the session header, so clients know how often to
            // show they are alive. A connection left without a session (its client vanished
            // and its session expired) is closed after as long again, which frees its place
            // among max_clients.
            client.connect_new_session(move |_, session| session.set_timeout(session_timeout));
            client.set_post_session_timeout(i32::try_from(session_timeout).unwrap_or(i32::MAX));
            let n = s.clients.fetch_add(1, Ordering::SeqCst) + 1;
            let s2 = s.clone();
            client.connect_closed(move |_| {
                s2.clients.fetch_sub(1, Ordering::SeqCst);
            });
            if s.max_clients > 0 && n > s.max_clients {
                log::warn!("RTSP: refusing client: {} clients already", s.max_clients);
                let client = client.clone();
                glib::idle_add_once(move || client.close());
                return;
            }
            // A late joiner on a shared media would otherwise wait up to a GOP for its first
            // picture. play-request fires once the client's transport is in place. The
            // encoder's gate grants at most one client request per keyframe interval.
            let s3 = s.clone();
            client.connect_play_request(move |_, _| {
                if let Ok(branches) = s3.branches.lock() {
                    for b in branches.iter() {
                        if let Some(pad) = b.bin.static_pad("sink") {
                            keyframes::request_for_client(&pad);
                        }
                    }
                }
            });
        });

        server
            .mount_points()
            .ok_or_else(|| anyhow!("RTSP server has no mount points"))?
            .add_factory(cfg.mount.as_str(), factory);
        let source = server.attach(None).map_err(|_| {
            anyhow!(
                "cannot listen for RTSP on {}:{} (port in use or address not local?)",
                cfg.bind,
                cfg.port
            )
        })?;
        if let Some(pool) = server.session_pool() {
            expire_sessions(&pool);
        }
        let host = match cfg.bind {
            std::net::IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        let url = format!(
            "rtsp://{host}:{}{}",
            server.bound_port(),
            cfg.mount.as_str()
        );
        if let Some(w) = open_to_everyone(cfg) {
            log::warn!("{w}");
        }
        let urls = client_addresses(cfg.bind)
            .iter()
            .map(|h| format!("rtsp://{h}:{}{}", server.bound_port(), cfg.mount.as_str()))
            .collect();
        Ok(Self {
            _server: server,
            _source: source,
            shared,
            url,
            urls,
        })
    }

    /// Whether a bus message source belongs to one of the RTSP feeding branches.
    pub fn owns(&self, obj: &gst::Object) -> bool {
        self.shared
            .branches
            .lock()
            .map(|b| b.iter().any(|b| branch::contains(&b.bin, obj)))
            .unwrap_or(false)
    }

    pub fn set_stopping(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }

    /// (sessions, connected clients), for the device's status. Main-loop thread.
    pub fn sessions(&self) -> (u32, usize) {
        let sessions = self._server.session_pool().map_or(0, |p| p.n_sessions());
        (sessions, self.shared.clients.load(Ordering::SeqCst))
    }
}

/// The warning for a server anyone who reaches the device can watch: every address, no
/// credentials. Logged at every start and printed by `camstream probe`.
pub fn open_to_everyone(cfg: &RtspConfig) -> Option<String> {
    (cfg.enabled && cfg.bind.is_unspecified() && cfg.user.is_empty()).then(|| {
        format!(
            "RTSP OPEN TO EVERYONE: listening on all addresses ({}:{}) without credentials: \
             anyone who can reach this device (the whole LAN; the internet when a modem gives it \
             a public address) can watch. Set rtsp.user and rtsp.password, or bind rtsp.bind \
             to the one address viewers use",
            cfg.bind, cfg.port
        )
    })
}

/// Tears down, every second on the main loop, the sessions whose clients have shown no sign of
/// life for their timeout: gst-rtsp-server only expires sessions when asked. A UDP client that
/// vanishes without TEARDOWN (unplugged, out of range) would otherwise keep its session, the
/// media and the branch feeding it for ever. Requests naming the session (GET_PARAMETER or
/// OPTIONS keep-alives), RTCP receiver reports and, over TCP, data the client accepts all keep
/// a session alive.
fn expire_sessions(pool: &gst_rtsp_server::RTSPSessionPool) {
    let pool = pool.downgrade();
    glib::timeout_add_seconds_local(1, move || {
        let Some(pool) = pool.upgrade() else {
            return glib::ControlFlow::Break;
        };
        let now = glib::monotonic_time();
        pool.filter(Some(&mut |_, session| {
            if !session.is_expired_usec(now) {
                return gst_rtsp_server::RTSPFilterResult::Keep;
            }
            log::info!(
                "RTSP: session {} expired: nothing from its client for {} s",
                session.sessionid().unwrap_or_default(),
                session.timeout() + session.extra_timeout()
            );
            gst_rtsp_server::RTSPFilterResult::Remove
        }));
        glib::ControlFlow::Continue
    });
}

/// Runs in the thread serving the client whose DESCRIBE created the media (the main loop).
fn configure_media(shared: &Arc<Shared>, media: &gst_rtsp_server::RTSPMedia) -> Result<()> {
    let pipeline = shared
        .pipeline
        .upgrade()
        .ok_or_else(|| anyhow!("main pipeline is gone"))?;
    let tee = shared
        .tee
        .upgrade()
        .ok_or_else(|| anyhow!("encoded tee is gone"))?;
    let element = media.element();
    let appsrc = element
        .downcast_ref::<gst::Bin>()
        .and_then(|b| b.by_name("src"))
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| anyhow!("media has no appsrc"))?;
    // Not leaky: the callback below drops instead, whole GOPs (`gop_gate`).
    appsrc.set_max_buffers(u64::from(shared.queue_buffers));
    // Encoders offset their timestamps (x264enc by 1000 h) and compensate in the segment: the
    // samples' segment must cross with them or every buffer would be 1000 h late.
    appsrc.set_handle_segment_change(true);
    if let Some(caps) = tee.static_pad("sink").and_then(|p| p.current_caps()) {
        appsrc.set_caps(Some(&caps));
    }

    // One time domain for both pipelines: same clock, same base time, and start time NONE so
    // the media pipeline never recomputes its base time.
    if let Some(clock) = pipeline.clock() {
        media.set_clock(Some(&clock));
    }
    if let Some(media_pipeline) = element
        .parent()
        .and_then(|p| p.downcast::<gst::Pipeline>().ok())
    {
        media_pipeline.set_start_time(gst::ClockTime::NONE);
        // Buffers arrive already late by capture and encode time; a latency the media pipeline
        // computes for itself would only hold them back further.
        media_pipeline.set_latency(gst::ClockTime::ZERO);
        if let Some(base) = pipeline.base_time() {
            media_pipeline.set_base_time(base);
        }
    }

    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let bin = branch::bin_from_description(
        &format!("rtsp{id}"),
        &plan::rtsp_branch_description(shared.queue_buffers),
    )?;
    let appsink = bin
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| anyhow!("RTSP branch has no appsink"))?;
    let started = AtomicBool::new(false);
    let gate = gop_gate::Gate::default();
    let max_buffers = u64::from(shared.queue_buffers);
    let src = appsrc.downgrade();
    let src_eos = appsrc.downgrade();
    // Streaming thread of the branch queue. Delta frames before the first IDR are useless to a
    // new client and would show as grey smears, so they are dropped.
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                if !started.load(Ordering::Relaxed) {
                    if buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                        return Ok(gst::FlowSuccess::Ok);
                    }
                    started.store(true, Ordering::Relaxed);
                }
                let Some(src) = src.upgrade() else {
                    return Err(gst::FlowError::Flushing);
                };
                // The media fell behind (a client that stopped reading): drop, and go on only
                // from a keyframe.
                if src.current_level_buffers() >= max_buffers {
                    if gate.dropped() {
                        if let Some(pad) = sink.static_pad("sink") {
                            keyframes::request_for_client(&pad);
                        }
                    }
                    return Ok(gst::FlowSuccess::Ok);
                }
                if !gate.pass(buffer) {
                    return Ok(gst::FlowSuccess::Ok);
                }
                // A media shutting down answers FLUSHING; the branch is detached shortly.
                match src.push_sample(&sample) {
                    Ok(_) | Err(gst::FlowError::Flushing) => Ok(gst::FlowSuccess::Ok),
                    Err(e) => Err(e),
                }
            })
            .eos(move |_| {
                if let Some(src) = src_eos.upgrade() {
                    let _ = src.end_of_stream();
                }
            })
            .build(),
    );

    // The client that made the media asks for its keyframe like any other (through the gate).
    let branch = branch::attach(&pipeline, &tee, bin, false).context("attaching RTSP branch")?;
    if let Some(pad) = branch.bin.static_pad("sink") {
        keyframes::request_for_client(&pad);
    }
    log::info!("RTSP: media prepared, branch {} attached", branch.name);
    if let Ok(mut b) = shared.branches.lock() {
        b.push(branch.clone());
    }

    // Any thread (the media's own): hand the removal to the main loop via an IDLE probe.
    let weak = Arc::downgrade(shared);
    let once = Mutex::new(Some(branch));
    media.connect_unprepared(move |_| {
        let Some(branch) = once.lock().ok().and_then(|mut o| o.take()) else {
            return;
        };
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut b) = shared.branches.lock() {
            b.retain(|x| x.name != branch.name);
        }
        if let (Some(p), Some(t)) = (shared.pipeline.upgrade(), shared.tee.upgrade()) {
            log::info!("RTSP: media released, detaching {}", branch.name);
            branch::detach(&p, &t, branch);
        }
    });
    Ok(())
}

/// The addresses clients can reach a server bound to `bind` at: `bind` itself, or, for the
/// unspecified address, every address of the machine's interfaces that are up (loopback last).
fn client_addresses(bind: std::net::IpAddr) -> Vec<String> {
    let show = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    if !bind.is_unspecified() {
        return vec![show(bind)];
    }
    let mut out: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|ifs| {
            ifs.filter(|i| i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
                .filter_map(|i| {
                    let a = i.address?;
                    let ip = if let Some(v4) = a.as_sockaddr_in() {
                        std::net::IpAddr::V4(v4.ip())
                    } else {
                        let v6 = a.as_sockaddr_in6()?.ip();
                        // Link-local addresses need a zone a URL cannot carry well.
                        if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                            return None;
                        }
                        std::net::IpAddr::V6(v6)
                    };
                    (bind.is_ipv6() || ip.is_ipv4()).then_some(ip)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|a| (a.is_loopback(), a.is_ipv6()));
    out.dedup();
    out.into_iter().map(show).collect()
}
