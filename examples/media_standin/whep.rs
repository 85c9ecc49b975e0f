//! WHEP (RFC 9725) on the stand-in's HTTP port, with MediaMTX's URL layout:
//!
//! - `POST /channel/<path>/whep` (application/sdp offer) → `201 Created`, the answer SDP with
//!   the stand-in's ICE candidates (gathered before answering), `Location:
//!   /channel/<path>/whep/<session>`; `404` when nothing is pushed on `<path>`, `400` for an
//!   offer without a usable H.264 video section;
//! - `PATCH <location>` (application/trickle-ice-sdpfrag) → `204`, the viewer's candidates;
//! - `DELETE <location>` → `200`, the session's pipeline stopped.
//!
//! Each session is its own pipeline: an appsrc fed with the pushed H.264 of its path (as the
//! RTSP readers are), re-payloaded into `webrtcbin` as one sendonly H.264 transceiver. The
//! `GstWebRTCSessionDescription` boxed type is handled through its C layout (gstreamer-webrtc
//! is not among the dependencies); SDP through gstreamer-sdp.

use std::collections::HashMap;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use glib::translate::{from_glib_full, ToGlibPtr, ToGlibPtrMut};
use gst::prelude::*;
use gst_rtsp::gst_sdp;

use crate::Readers;

/// Pushes in progress per path (a restarted push may overlap the one it replaces).
pub type Live = Arc<Mutex<HashMap<String, usize>>>;

/// What the HTTP server writes back.
pub enum Reply {
    Created { location: String, sdp: String },
    NoContent,
    Ok,
    NotFound,
    BadRequest(String),
    Failed(String),
}

struct Session {
    path: String,
    pipeline: gst::Pipeline,
    webrtc: gst::Element,
}

pub struct Whep {
    readers: Readers,
    live: Live,
    /// Candidates on this address only go in the answers (None: all of them).
    advertise: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
    seq: AtomicU64,
}

/// `GstWebRTCSessionDescription` as laid out in C (gst/webrtc/rtcsessiondescription.h).
#[repr(C)]
struct RawDescription {
    kind: c_int,
    sdp: *mut gst_sdp::ffi::GstSDPMessage,
}

const SDP_TYPE_OFFER: c_int = 1;

fn description_type() -> Result<glib::Type> {
    glib::Type::from_name("GstWebRTCSessionDescription")
        .ok_or_else(|| anyhow!("GstWebRTCSessionDescription is not registered"))
}

/// A `GstWebRTCSessionDescription` value holding a copy of `sdp`.
fn description(kind: c_int, sdp: &gst_sdp::SDPMessage) -> Result<glib::Value> {
    let mut v = glib::Value::from_type(description_type()?);
    let raw = RawDescription {
        kind,
        sdp: sdp.as_ptr() as *mut _,
    };
    // SAFETY: `v` holds the boxed type whose C layout RawDescription mirrors; g_value_set_boxed
    // copies it through the type's copy function (a deep copy of the SDP message), so `raw`
    // and `sdp` stay ours.
    unsafe {
        glib::gobject_ffi::g_value_set_boxed(
            v.to_glib_none_mut().0,
            &raw as *const RawDescription as glib::ffi::gconstpointer,
        );
    }
    Ok(v)
}

/// The SDP text of a `GstWebRTCSessionDescription` value.
fn description_text(v: &glib::Value) -> Option<String> {
    if v.type_() != description_type().ok()? {
        return None;
    }
    // SAFETY: the value's type was checked; the boxed pointer stays valid while `v` lives.
    unsafe {
        let raw = glib::gobject_ffi::g_value_get_boxed(v.to_glib_none().0) as *const RawDescription;
        if raw.is_null() || (*raw).sdp.is_null() {
            return None;
        }
        from_glib_full(gst_sdp::ffi::gst_sdp_message_as_text((*raw).sdp))
    }
}

/// Runs a webrtcbin action signal that ends in a promise; its reply.
fn call(webrtc: &gst::Element, signal: &str, arg: &dyn ToValue) -> Result<Option<gst::Structure>> {
    let promise = gst::Promise::new();
    webrtc.emit_by_name::<()>(signal, &[arg, &promise]);
    match promise.wait() {
        gst::PromiseResult::Replied => {}
        r => return Err(anyhow!("{signal}: {r:?}")),
    }
    let reply = promise.get_reply().map(|s| s.to_owned());
    if let Some(e) = reply
        .as_ref()
        .and_then(|s| s.get::<glib::Error>("error").ok())
    {
        return Err(anyhow!("{signal}: {e}"));
    }
    Ok(reply)
}

/// The offer's H.264 payload type to send with, and its profile-level-id: packetization-mode 1,
/// constrained baseline first (what the device encodes by default), then any.
fn pick_h264(offer: &str) -> Option<(u8, String)> {
    let mut h264 = Vec::new();
    let mut fmtp: HashMap<String, String> = HashMap::new();
    let mut video = false;
    for line in offer.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            video = m.starts_with("video ");
        } else if !video {
            continue;
        } else if let Some(r) = line.strip_prefix("a=rtpmap:") {
            let (pt, enc) = r.split_once(' ')?;
            if enc.to_ascii_uppercase().starts_with("H264/90000") {
                h264.push(pt.to_string());
            }
        } else if let Some(f) = line.strip_prefix("a=fmtp:") {
            if let Some((pt, params)) = f.split_once(' ') {
                fmtp.insert(pt.to_string(), params.to_string());
            }
        }
    }
    let param = |pt: &str, key: &str| -> Option<String> {
        fmtp.get(pt)?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == key).then(|| v.to_string())
        })
    };
    let usable: Vec<(u8, String)> = h264
        .iter()
        .filter(|pt| param(pt, "packetization-mode").as_deref() == Some("1"))
        .filter_map(|pt| {
            let profile = param(pt, "profile-level-id").unwrap_or_else(|| "42e01f".into());
            Some((pt.parse().ok()?, profile.to_ascii_lowercase()))
        })
        .collect();
    let rank = |p: &str| match &p[..p.len().min(4)] {
        "42e0" => 0,
        "4200" => 1,
        _ => 2,
    };
    usable.into_iter().min_by_key(|(_, p)| rank(p))
}

/// Inserts `a=candidate` lines (per m-section index) and end-of-candidates into `sdp`.
fn with_candidates(sdp: &str, candidates: &[(u32, String)]) -> String {
    let mut out = String::new();
    let mut section: Option<u32> = None;
    let close = |out: &mut String, section: Option<u32>| {
        if let Some(i) = section {
            for (_, c) in candidates.iter().filter(|(m, _)| *m == i) {
                out.push_str(&format!("a={c}\r\n"));
            }
            out.push_str("a=end-of-candidates\r\n");
        }
    };
    for line in sdp.lines() {
        if line.starts_with("m=") {
            close(&mut out, section);
            section = Some(section.map_or(0, |i| i + 1));
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    close(&mut out, section);
    out
}

impl Whep {
    pub fn new(readers: Readers, live: Live, advertise: Option<String>) -> Arc<Whep> {
        Arc::new(Whep {
            readers,
            live,
            advertise,
            sessions: Mutex::default(),
            seq: AtomicU64::new(1),
        })
    }

    /// The reply for a WHEP request, or None when `path` is not a WHEP URL.
    pub fn handle(self: &Arc<Self>, method: &str, path: &str, body: &[u8]) -> Option<Reply> {
        let rest = path.strip_prefix("/channel/")?;
        let mut parts = rest.split('/');
        let (id, whep, session) = (parts.next()?, parts.next()?, parts.next());
        if whep != "whep" || parts.next().is_some() {
            return None;
        }
        let id = crate::channel_path(&format!("/channel/{id}"))?;
        Some(match (method, session) {
            ("POST", None) => self.post(&id, body),
            ("PATCH", Some(s)) => self.patch(&id, s, body),
            ("DELETE", Some(s)) => self.delete(&id, s),
            _ => Reply::NotFound,
        })
    }

    fn post(self: &Arc<Self>, id: &str, body: &[u8]) -> Reply {
        let pushing = self
            .live
            .lock()
            .map(|l| l.get(id).copied().unwrap_or(0) > 0)
            .unwrap_or(false);
        if !pushing {
            return Reply::NotFound;
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return Reply::BadRequest("offer is not text".into());
        };
        if !text.trim_start().starts_with("v=0") {
            return Reply::BadRequest("not an SDP offer".into());
        }
        let Ok(offer) = gst_sdp::SDPMessage::parse_buffer(body) else {
            return Reply::BadRequest("unreadable SDP".into());
        };
        if offer.medias_len() == 0 {
            return Reply::BadRequest("offer without media".into());
        }
        let Some((pt, profile)) = pick_h264(text) else {
            return Reply::BadRequest("offer without H.264 (packetization-mode 1) video".into());
        };
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let session = format!("{n:x}{nanos:08x}");
        match self.start(id, &session, &offer, pt, &profile) {
            Ok(sdp) => {
                println!("media-standin: whep session {session} on /channel/{id} (H.264 pt {pt})");
                Reply::Created {
                    location: format!("/channel/{id}/whep/{session}"),
                    sdp,
                }
            }
            Err(e) => {
                self.stop(&session);
                eprintln!("media-standin: whep on /channel/{id}: {e:#}");
                Reply::Failed(format!("{e:#}"))
            }
        }
    }

    /// Builds the session's pipeline, answers `offer`; the answer SDP with our candidates.
    fn start(
        self: &Arc<Self>,
        id: &str,
        session: &str,
        offer: &gst_sdp::SDPMessage,
        pt: u8,
        profile: &str,
    ) -> Result<String> {
        // The payloader names the stream's own profile; the caps are set to the one the offer
        // lists (the browser decodes what it gets), so they match the negotiated codec.
        let rtp = format!(
            "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload={pt},\
             packetization-mode=(string)1,profile-level-id=(string){profile}"
        );
        let pipeline = gst::parse::launch(&format!(
            "appsrc name=src is-live=true format=time do-timestamp=true min-latency=0 \
               leaky-type=downstream max-buffers=60 \
             ! h264parse ! rtph264pay config-interval=-1 aggregate-mode=zero-latency pt={pt} \
             ! capssetter caps=\"{caps}\" ! queue name=out \
             webrtcbin name=webrtc bundle-policy=max-bundle",
            caps = rtp.replace('"', "\\\""),
        ))
        .context("session pipeline")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
        let webrtc = pipeline.by_name("webrtc").context("webrtcbin")?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .context("appsrc")?;
        let pad = webrtc
            .request_pad_simple("sink_%u")
            .context("webrtcbin sink pad")?;
        pipeline
            .by_name("out")
            .and_then(|q| q.static_pad("src"))
            .context("queue")?
            .link(&pad)
            .context("link to webrtcbin")?;
        let transceiver = pad.property::<glib::Object>("transceiver");
        transceiver.set_property_from_str("direction", "sendonly");
        transceiver.set_property("codec-preferences", rtp.parse::<gst::Caps>()?);

        let candidates: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
        let c = candidates.clone();
        webrtc.connect("on-ice-candidate", false, move |v| {
            if let (Ok(m), Ok(cand)) = (v[1].get::<u32>(), v[2].get::<String>()) {
                c.lock().unwrap().push((m, cand));
            }
            None
        });
        let (whep, s, path) = (self.clone(), session.to_string(), id.to_string());
        webrtc.connect_notify(Some("connection-state"), move |w, _| {
            let state = enum_nick(&w.property_value("connection-state"));
            println!("media-standin: whep session {s} on /channel/{path}: {state}");
            if state == "failed" || state == "closed" {
                // Not from webrtcbin's own thread: the pipeline is stopped elsewhere.
                let (whep, s) = (whep.clone(), s.clone());
                std::thread::spawn(move || whep.stop(&s));
            }
        });
        if let Some(bus) = pipeline.bus() {
            let s = session.to_string();
            bus.set_sync_handler(move |_, m| {
                if let gst::MessageView::Error(e) = m.view() {
                    eprintln!("media-standin: whep session {s}: {}", e.error());
                }
                gst::BusSyncReply::Drop
            });
        }
        // Frames are stamped on arrival, as for the RTSP readers: no latency to add.
        pipeline.set_latency(gst::ClockTime::ZERO);
        self.sessions.lock().unwrap().insert(
            session.to_string(),
            Session {
                path: id.to_string(),
                pipeline: pipeline.clone(),
                webrtc: webrtc.clone(),
            },
        );
        pipeline
            .set_state(gst::State::Playing)
            .context("session pipeline to PLAYING")?;

        call(
            &webrtc,
            "set-remote-description",
            &description(SDP_TYPE_OFFER, offer)?,
        )?;
        let reply = call(&webrtc, "create-answer", &None::<gst::Structure>)?
            .context("create-answer: no reply")?;
        let answer = reply
            .value("answer")
            .map_err(|_| anyhow!("create-answer: no answer"))?
            .clone();
        let text = description_text(&answer).context("answer SDP")?;
        if !text.contains("H264") {
            return Err(anyhow!("no H.264 in the answer"));
        }
        call(&webrtc, "set-local-description", &answer)?;
        // Not a trickling server: the answer carries every candidate.
        let t0 = Instant::now();
        while enum_nick(&webrtc.property_value("ice-gathering-state")) != "complete"
            && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut cands = candidates.lock().unwrap().clone();
        if let Some(addr) = &self.advertise {
            let ours: Vec<_> = cands
                .iter()
                .filter(|(_, c)| c.split_whitespace().nth(4) == Some(addr.as_str()))
                .cloned()
                .collect();
            if !ours.is_empty() {
                cands = ours;
            }
        }
        if cands.is_empty() {
            return Err(anyhow!("no ICE candidate gathered"));
        }
        // Frames flow once the answer is out.
        self.readers
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .push(src);
        Ok(with_candidates(&text, &cands))
    }

    fn patch(&self, id: &str, session: &str, body: &[u8]) -> Reply {
        let webrtc = match self.sessions.lock().unwrap().get(session) {
            Some(s) if s.path == id => s.webrtc.clone(),
            _ => return Reply::NotFound,
        };
        let Ok(frag) = std::str::from_utf8(body) else {
            return Reply::BadRequest("fragment is not text".into());
        };
        let mut mline: u32 = 0;
        let mut seen_media = false;
        for line in frag.lines().map(str::trim) {
            if line.starts_with("m=") {
                mline = if seen_media { mline + 1 } else { 0 };
                seen_media = true;
            } else if let Some(c) = line.strip_prefix("a=candidate:") {
                webrtc
                    .emit_by_name::<()>("add-ice-candidate", &[&mline, &format!("candidate:{c}")]);
            }
        }
        Reply::NoContent
    }

    fn delete(&self, id: &str, session: &str) -> Reply {
        match self.sessions.lock().unwrap().get(session) {
            Some(s) if s.path == id => {}
            _ => return Reply::NotFound,
        }
        self.stop(session);
        println!("media-standin: whep session {session} on /channel/{id} deleted");
        Reply::Ok
    }

    /// Stops and forgets a session (its appsrc leaves the readers on its next refused buffer).
    fn stop(&self, session: &str) {
        let s = self.sessions.lock().unwrap().remove(session);
        if let Some(s) = s {
            let _ = s.pipeline.set_state(gst::State::Null);
        }
    }
}

fn enum_nick(v: &glib::Value) -> String {
    glib::EnumClass::with_type(v.type_())
        .and_then(|c| {
            // SAFETY: `v` holds an enum of this class.
            let n = unsafe { glib::gobject_ffi::g_value_get_enum(v.to_glib_none().0) };
            c.value(n).map(|e| e.nick().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_constrained_baseline_packetization_mode_1() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102 104 108\r\n\
                     a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
                     a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
                     a=rtpmap:104 H264/90000\r\n\
                     a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
                     a=rtpmap:108 H264/90000\r\n\
                     a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
        assert_eq!(pick_h264(offer), Some((108, "42e01f".into())));
        assert_eq!(
            pick_h264("v=0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"),
            None
        );
    }

    #[test]
    fn candidates_go_at_the_end_of_their_section() {
        let sdp = "v=0\r\nm=video 9 UDP 96\r\na=mid:0\r\n";
        let out = with_candidates(
            sdp,
            &[(0, "candidate:1 1 UDP 1 198.18.0.1 5000 typ host".into())],
        );
        assert_eq!(
            out,
            "v=0\r\nm=video 9 UDP 96\r\na=mid:0\r\na=candidate:1 1 UDP 1 198.18.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        );
    }
}
