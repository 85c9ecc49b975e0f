//! A development stand-in for the remote media server (MediaMTX in production), for machines
//! where MediaMTX cannot be installed. NOT for production use.
//!
//! - accepts RTSP pushes (ANNOUNCE/RECORD, e.g. from rtspclientsink) on
//!   rtsp://127.0.0.1:<push-port>/channel/<path>, mounts created on demand;
//! - re-serves each pushed stream to RTSP readers on rtsp://127.0.0.1:<read-port>/channel/<path>
//!   (no re-encode: appsink → appsrc, as the device does);
//! - writes HLS (hlssink2, 1 s segments) under <dir>/channel/<path>/index.m3u8 and serves <dir>
//!   over HTTP with CORS on http://127.0.0.1:<http-port>/.
//!
//! - with --tls-cert/--tls-key (PEM), pushes are taken as rtsps:// only, as MediaMTX does with
//!   `rtspEncryption: strict`.
//! - with --whep, serves WebRTC on the HTTP port as MediaMTX does (whep.rs): POST
//!   /channel/<path>/whep, then PATCH/DELETE the session it names. Off by default: the
//!   stand-in's ICE candidates are the machine's interface addresses, which only a test inside
//!   a network namespace of its own may use (with --bind <its address>, only that one is offered).
//!
//! cargo run --example media_standin -- [--push-port 8555] [--read-port 8556] [--http-port 8888]
//!     [--dir /tmp/camstream-media] [--bind 127.0.0.1] [--tls-cert cert.pem --tls-key key.pem]
//!     [--whep]

mod whep;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

/// Readers' appsrcs per pushed path.
type Readers = Arc<Mutex<HashMap<String, Vec<gst_app::AppSrc>>>>;

const MAX_BODY: usize = 64 * 1024;

struct Args {
    bind: String,
    push_port: u16,
    read_port: u16,
    http_port: u16,
    dir: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
    whep: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        bind: "127.0.0.1".into(),
        push_port: 8555,
        read_port: 8556,
        http_port: 8888,
        dir: PathBuf::from("/tmp/camstream-media"),
        tls: None,
        whep: false,
    };
    let (mut cert, mut key) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--whep" {
            a.whep = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--bind" => a.bind = v,
            "--push-port" => a.push_port = v.parse()?,
            "--read-port" => a.read_port = v.parse()?,
            "--http-port" => a.http_port = v.parse()?,
            "--dir" => a.dir = PathBuf::from(v),
            "--tls-cert" => cert = Some(PathBuf::from(v)),
            "--tls-key" => key = Some(PathBuf::from(v)),
            _ => return Err(anyhow!("unknown option {k}")),
        }
    }
    a.tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(anyhow!("--tls-cert and --tls-key go together")),
    };
    Ok(a)
}

/// The id in `rtsp://host:port/channel/<id>[/...]` when it is a safe one, else None.
pub(crate) fn channel_path(uri: &str) -> Option<String> {
    let id = &uri[uri.find("/channel/")? + "/channel/".len()..];
    let id = id.split('/').next()?;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| id.to_string())
}

/// Role of every pusher when TLS is on (the stand-in checks no credentials).
const ANONYMOUS: &str = "anonymous";

fn record_factory(
    id: &str,
    dir: &Path,
    readers: &Readers,
    live: &whep::Live,
    tls: bool,
) -> gst_rtsp_server::RTSPMediaFactory {
    let out = dir.join("channel").join(id);
    let _ = std::fs::create_dir_all(&out);
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_transport_mode(gst_rtsp_server::RTSPTransportMode::RECORD);
    if tls {
        // With an auth object on the server every factory needs permissions for its clients.
        factory.add_role_from_structure(
            &gst::Structure::builder(ANONYMOUS)
                .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build(),
        );
    }
    factory.set_launch(&format!(
        "( rtph264depay name=depay0 ! h264parse name=parse config-interval=-1 ! tee name=t \
           t. ! queue ! hlssink2 target-duration=1 max-files=10 playlist-length=5 \
                location=\"{seg}\" playlist-location=\"{pl}\" \
           t. ! queue leaky=downstream max-size-buffers=60 ! video/x-h264,stream-format=byte-stream,alignment=au \
              ! appsink name=fwd sync=false )",
        seg = out.join("segment%05d.ts").display(),
        pl = out.join("index.m3u8").display(),
    ));
    factory.set_latency(0);
    // A push that ends (TEARDOWN) sends end-of-stream through the pipeline first, so the HLS
    // writer puts out the frames it still holds, as a media server finishes a recording.
    factory.set_eos_shutdown(true);
    let readers = readers.clone();
    let live = live.clone();
    let id = id.to_string();
    factory.connect_media_configure(move |_, media| {
        let Some(sink) = media
            .element()
            .downcast_ref::<gst::Bin>()
            .and_then(|b| b.by_name("fwd"))
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        else {
            return;
        };
        println!("media-standin: push started on /channel/{id}");
        if let Some(pad) = media
            .element()
            .downcast_ref::<gst::Bin>()
            .and_then(|b| b.by_name("parse"))
            .and_then(|e| e.static_pad("src"))
        {
            keep_time_moving(&pad);
        }
        if let Ok(mut l) = live.lock() {
            *l.entry(id.clone()).or_default() += 1;
        }
        let ended = id.clone();
        let l = live.clone();
        media.connect_unprepared(move |_| {
            if let Ok(mut l) = l.lock() {
                if let Some(n) = l.get_mut(&ended) {
                    *n = n.saturating_sub(1);
                }
            }
            println!("media-standin: push ended on /channel/{ended}")
        });
        let readers = readers.clone();
        let id = id.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let (Some(buf), Some(caps)) = (sample.buffer(), sample.caps()) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    // Readers run on their own clocks: they timestamp on arrival.
                    let mut b = buf.copy();
                    {
                        let b = b.get_mut().expect("fresh copy");
                        b.set_pts(gst::ClockTime::NONE);
                        b.set_dts(gst::ClockTime::NONE);
                    }
                    if let Ok(mut r) = readers.lock() {
                        if let Some(list) = r.get_mut(&id) {
                            list.retain(|src| {
                                if src.caps().is_none() {
                                    src.set_caps(Some(&caps.to_owned()));
                                }
                                match src.push_buffer(b.clone()) {
                                    Ok(_) => true,
                                    Err(e) => {
                                        println!(
                                            "media-standin: reader of /channel/{id} dropped: {e:?}"
                                        );
                                        false
                                    }
                                }
                            });
                        }
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    });
    factory
}

/// A pushed stream's timestamps come from the receiving jitterbuffer, which after a link
/// outage gets the held-back frames in a burst and resets its clock skew: time can step back.
/// hlssink2's splitmuxsink fails the whole push on that ("Queued GOP time is negative"), where
/// a media server carries on. Streaming thread: each buffer's DTS (and PTS) is kept from going
/// back.
fn keep_time_moving(pad: &gst::Pad) {
    let last = std::sync::Mutex::new(gst::ClockTime::ZERO);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(gst::PadProbeData::Buffer(buf)) = info.data.as_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(mut last) = last.lock() else {
            return gst::PadProbeReturn::Ok;
        };
        let b = buf.make_mut();
        let dts = b.dts().or(b.pts());
        if let Some(dts) = dts {
            let dts = dts.max(*last);
            if b.dts().is_some() {
                b.set_dts(dts);
            }
            if b.pts().is_some_and(|p| p < dts) {
                b.set_pts(dts);
            }
            *last = dts;
        }
        gst::PadProbeReturn::Ok
    });
}

fn read_factory(id: &str, readers: &Readers) -> gst_rtsp_server::RTSPMediaFactory {
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(
        "( appsrc name=src is-live=true format=time do-timestamp=true min-latency=0 \
           ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 aggregate-mode=zero-latency )",
    );
    factory.set_shared(true);
    factory.set_latency(0);
    let readers = readers.clone();
    let id = id.to_string();
    factory.connect_media_configure(move |_, media| {
        // Buffers are stamped on arrival; a latency the reader pipeline computes for itself
        // would only hold them back (the device's RTSP server does the same).
        if let Some(p) = media
            .element()
            .parent()
            .and_then(|p| p.downcast::<gst::Pipeline>().ok())
        {
            p.set_latency(gst::ClockTime::ZERO);
        }
        if let Some(src) = media
            .element()
            .downcast_ref::<gst::Bin>()
            .and_then(|b| b.by_name("src"))
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        {
            if let Ok(mut r) = readers.lock() {
                r.entry(id.clone()).or_default().push(src);
            }
        }
    });
    factory
}

fn serve_http(listener: TcpListener, root: PathBuf, whep: Option<Arc<whep::Whep>>) {
    for stream in listener.incoming().flatten() {
        let root = root.clone();
        let whep = whep.clone();
        std::thread::spawn(move || {
            let _ = handle_http(stream, &root, whep.as_ref());
        });
    }
}

fn handle_http(mut stream: TcpStream, root: &Path, whep: Option<&Arc<whep::Whep>>) -> Result<()> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone()?);
    reader.read_line(&mut line)?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(usize::MAX);
            }
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    // The page comes from another origin (the relay): WHEP's methods, its Content-Type and its
    // Location header must be allowed across origins.
    let cors = "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: *\r\n\
                Access-Control-Allow-Methods: GET, HEAD, POST, PATCH, DELETE, OPTIONS\r\n\
                Access-Control-Expose-Headers: Location\r\n";
    if method == "OPTIONS" {
        write!(
            stream,
            "HTTP/1.1 204 No Content\r\n{cors}Access-Control-Allow-Private-Network: true\r\nContent-Length: 0\r\n\r\n"
        )?;
        return Ok(());
    }
    if matches!(method, "POST" | "PATCH" | "DELETE") {
        if length > MAX_BODY {
            write!(
                stream,
                "HTTP/1.1 413 Content Too Large\r\n{cors}Content-Length: 0\r\n\r\n"
            )?;
            return Ok(());
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let reply = whep.and_then(|w| w.handle(method, path, &body));
        let (status, headers, body) = match reply {
            Some(whep::Reply::Created { location, sdp }) => (
                "201 Created",
                format!("Content-Type: application/sdp\r\nLocation: {location}\r\n"),
                sdp,
            ),
            Some(whep::Reply::NoContent) => ("204 No Content", String::new(), String::new()),
            Some(whep::Reply::Ok) => ("200 OK", String::new(), String::new()),
            Some(whep::Reply::BadRequest(why)) => ("400 Bad Request", String::new(), why),
            Some(whep::Reply::Failed(why)) => ("500 Internal Server Error", String::new(), why),
            Some(whep::Reply::NotFound) | None => ("404 Not Found", String::new(), String::new()),
        };
        write!(
            stream,
            "HTTP/1.1 {status}\r\n{cors}{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let rel = path.trim_start_matches('/');
    let safe = !rel.split('/').any(|c| c == ".." || c.is_empty()) || rel.is_empty();
    let file = root.join(rel);
    match (safe, std::fs::read(&file)) {
        (true, Ok(body)) if file.is_file() => {
            let ctype = match file.extension().and_then(|e| e.to_str()) {
                Some("m3u8") => "application/vnd.apple.mpegurl",
                Some("ts") => "video/mp2t",
                _ => "application/octet-stream",
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\n{cors}Content-Type: {ctype}\r\nCache-Control: no-cache\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            if method != "HEAD" {
                stream.write_all(&body)?;
            }
        }
        _ => write!(
            stream,
            "HTTP/1.1 404 Not Found\r\n{cors}Content-Length: 0\r\n\r\n"
        )?,
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    gst::init()?;
    std::fs::create_dir_all(&args.dir)?;
    let readers: Readers = Arc::default();
    let live: whep::Live = Arc::default();

    let push = gst_rtsp_server::RTSPServer::new();
    push.set_address(&args.bind);
    push.set_service(&args.push_port.to_string());
    let read = gst_rtsp_server::RTSPServer::new();
    read.set_address(&args.bind);
    read.set_service(&args.read_port.to_string());

    let tls = args.tls.is_some();
    if let Some((cert, key)) = &args.tls {
        use gst_rtsp_server::gio;
        let certificate = gio::TlsCertificate::from_files(cert, key)
            .with_context(|| format!("TLS certificate {}", cert.display()))?;
        let auth = gst_rtsp_server::RTSPAuth::new();
        auth.set_tls_certificate(Some(&certificate));
        let mut token = gst_rtsp_server::RTSPToken::builder()
            .field(gst_rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, ANONYMOUS)
            .build();
        auth.set_default_token(Some(&mut token));
        push.set_auth(Some(&auth));
    }
    let push_mounts = push.mount_points().context("mount points")?;
    let read_mounts = read.mount_points().context("mount points")?;
    let dir = args.dir.clone();
    let r = readers.clone();
    let l = live.clone();
    let created: Mutex<std::collections::HashSet<String>> = Mutex::default();
    // Mounts appear on demand: the first request naming /channel/<id> creates both sides.
    let ensure = Arc::new(move |uri: &str| {
        let Some(id) = channel_path(uri) else { return };
        let Ok(mut created) = created.lock() else {
            return;
        };
        if created.insert(id.clone()) {
            let mount = format!("/channel/{id}");
            push_mounts.add_factory(&mount, record_factory(&id, &dir, &r, &l, tls));
            read_mounts.add_factory(&mount, read_factory(&id, &r));
        }
    });
    push.connect_client_connected(move |_, client| {
        let e = ensure.clone();
        client.connect_pre_options_request(move |_, ctx| {
            if let Some(uri) = ctx.uri() {
                e(uri.request_uri().as_str());
            }
            gst_rtsp::RTSPStatusCode::Ok
        });
        let e = ensure.clone();
        client.connect_pre_announce_request(move |_, ctx| {
            if let Some(uri) = ctx.uri() {
                e(uri.request_uri().as_str());
            }
            gst_rtsp::RTSPStatusCode::Ok
        });
    });
    push.attach(None)
        .map_err(|_| anyhow!("cannot listen on {}:{}", args.bind, args.push_port))?;
    read.attach(None)
        .map_err(|_| anyhow!("cannot listen on {}:{}", args.bind, args.read_port))?;

    let http = TcpListener::bind((args.bind.as_str(), args.http_port))
        .with_context(|| format!("cannot listen on {}:{}", args.bind, args.http_port))?;
    let root = args.dir.clone();
    let whep = args.whep.then(|| {
        // Only the bound address's candidates, when it is one interface's.
        let advertise = args
            .bind
            .parse::<std::net::IpAddr>()
            .ok()
            .filter(|a| !a.is_loopback() && !a.is_unspecified())
            .map(|a| a.to_string());
        whep::Whep::new(readers.clone(), live.clone(), advertise)
    });
    std::thread::spawn(move || serve_http(http, root, whep));

    println!(
        "media-standin: push {}://{b}:{}/channel/<path>, read rtsp://{b}:{}/channel/<path>, HLS http://{b}:{}/channel/<path>/index.m3u8{}",
        if tls { "rtsps" } else { "rtsp" },
        args.push_port,
        args.read_port,
        args.http_port,
        if args.whep {
            format!(", WHEP http://{}:{}/channel/<path>/whep", args.bind, args.http_port)
        } else {
            String::new()
        },
        b = args.bind
    );
    glib::MainLoop::new(None, false).run();
    Ok(())
}
