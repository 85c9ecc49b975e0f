//! Recordings from afar, through the same Socket.IO relay and push path as live video.
//!
//! A viewer lists what the card holds (`recordings`) and plays a range of it (`play`): each
//! playback session pushes the recorded files to the media server under a path of its own (128
//! random bits) and the viewer is told where to play (`playback`, then `bridge`), exactly as for
//! live video. Sessions live on the main loop's side: at most `playback.max_sessions` at once,
//! each with its own lease renewed by its viewer's heartbeats, ended by `stop`, by the end of
//! the range or of the recordings (`playback-ended`), by the lease, or when retention deletes a
//! file it plays. Their pipelines run on threads of their own (see `session`).

pub mod request;
pub mod session;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::{Config, UplinkConfig};
use crate::recording::index::{self, SharedIndex};
use crate::signal::Answer;
use request::{Asked, Refusal, Request};

/// Files one session plays at most (its reader keeps each open): with 60 s segments, half an
/// hour. The rest of a longer range is offered in `playback-ended` as `next`.
const MAX_FILES: usize = 32;

/// What a viewer asked to play.
struct Range {
    from_ms: i64,
    to_ms: Option<i64>,
    speed: u32,
}

struct Session {
    viewer: String,
    path: String,
    id: Option<Value>,
    until: Instant,
    handle: session::Handle,
    files: Vec<PathBuf>,
    from_ms: i64,
    to_ms: Option<i64>,
    speed: u32,
    more_from_us: Option<i64>,
    live: bool,
    stopping: bool,
}

struct Inner {
    max_sessions: usize,
    uplink: UplinkConfig,
    index: Option<SharedIndex>,
    answers: mpsc::Sender<Answer>,
    events: mpsc::UnboundedSender<session::Event>,
    sessions: BTreeMap<u64, Session>,
    next: u64,
}

/// The playback sessions. Main-loop thread.
pub struct Playback {
    inner: RefCell<Inner>,
}

impl Playback {
    /// Sets up playback: `index` is None when the device does not record; answers go out
    /// through `answers`. Main-loop thread.
    pub fn start(
        cfg: &Config,
        index: Option<SharedIndex>,
        answers: mpsc::Sender<Answer>,
    ) -> Rc<Self> {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let pb = Rc::new(Self {
            inner: RefCell::new(Inner {
                max_sessions: cfg.playback.max_sessions.get() as usize,
                uplink: cfg.uplink.clone(),
                index: index.clone(),
                answers,
                events: events_tx,
                sessions: BTreeMap::new(),
                next: 1,
            }),
        });
        let ctx = glib::MainContext::default();
        let p = pb.clone();
        ctx.spawn_local(async move {
            while let Some(ev) = events_rx.recv().await {
                p.on_event(ev);
            }
        });
        if let Some(index) = index {
            // Retention's thread tells; the main loop ends the sessions playing the file.
            let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
            index.on_removed(move |p| {
                let _ = tx.send(p.to_path_buf());
            });
            let p = pb.clone();
            ctx.spawn_local(async move {
                while let Some(path) = rx.recv().await {
                    p.on_removed(&path);
                }
            });
        }
        let p = pb.clone();
        glib::timeout_add_local(Duration::from_millis(250), move || {
            p.check_leases();
            glib::ControlFlow::Continue
        });
        pb
    }

    fn send(&self, event: &'static str, args: Vec<Value>, viewer: &str) {
        let answer = Answer {
            event,
            args,
            to: vec![viewer.to_string()],
        };
        if self.inner.borrow().answers.try_send(answer).is_err() {
            log::warn!("playback: cannot answer a viewer now ({event} dropped)");
        }
    }

    fn refuse(&self, viewer: &str, mut r: Refusal, id: &Option<Value>) {
        r.id = id.clone();
        log::info!("playback: {} refused: {}", r.request, r.reason);
        self.send("error", vec![r.to_json()], viewer);
    }

    /// Whether `viewer` has playback sessions; if so their leases now run `until`.
    pub fn renew(&self, viewer: &str, until: Instant) -> bool {
        let mut g = self.inner.borrow_mut();
        let mut any = false;
        for s in g.sessions.values_mut().filter(|s| s.viewer == viewer) {
            s.until = s.until.max(until);
            any = true;
        }
        any
    }

    /// A viewer's request, already checked on the signalling thread. True when it started a
    /// playback session for the viewer (`play` or `seek` accepted).
    pub fn request(&self, viewer: String, until: Instant, asked: Asked) -> bool {
        let Asked { request, id } = asked;
        match request {
            Request::Recordings { from_ms, to_ms } => {
                let index = self.inner.borrow().index.clone();
                let Some(index) = index else {
                    self.refuse(
                        &viewer,
                        Refusal::new("recordings", "this device does not record"),
                        &id,
                    );
                    return false;
                };
                let mut answer = index.list(from_ms * 1000, to_ms * 1000, index::now_us());
                if let Some(id) = &id {
                    answer["id"] = id.clone();
                }
                self.send("recordings", vec![answer], &viewer);
                false
            }
            Request::Play {
                from_ms,
                to_ms,
                speed,
            } => {
                let range = Range {
                    from_ms,
                    to_ms,
                    speed,
                };
                match self.play(&viewer, until, range, id.clone()) {
                    Ok(()) => true,
                    Err(r) => {
                        self.refuse(&viewer, r, &id);
                        false
                    }
                }
            }
            Request::Stop { path } => {
                let n = self.stop_matching(&viewer, path.as_deref(), "stopped");
                if n == 0 {
                    self.refuse(
                        &viewer,
                        Refusal::new("stop", "no such playback session"),
                        &id,
                    );
                }
                false
            }
            Request::Seek { path, to_ms } => {
                // Seeking is a new session from the new time, to the same end.
                let found = {
                    let g = self.inner.borrow();
                    g.sessions
                        .iter()
                        .filter(|(_, s)| {
                            s.viewer == viewer
                                && !s.stopping
                                && path.as_deref().is_none_or(|p| p == s.path)
                        })
                        .map(|(k, s)| (*k, s.to_ms, s.speed, s.id.clone()))
                        .next_back()
                };
                let Some((key, old_to, speed, old_id)) = found else {
                    self.refuse(
                        &viewer,
                        Refusal::new("seek", "no such playback session"),
                        &id,
                    );
                    return false;
                };
                if let Some(s) = self.inner.borrow_mut().sessions.get_mut(&key) {
                    s.stopping = true;
                    s.handle.stop("seek");
                }
                let range = Range {
                    from_ms: to_ms,
                    to_ms: old_to.filter(|t| *t > to_ms),
                    speed,
                };
                match self.play(&viewer, until, range, id.clone().or(old_id)) {
                    Ok(()) => true,
                    Err(mut r) => {
                        r.request = "seek".into();
                        self.refuse(&viewer, r, &id);
                        false
                    }
                }
            }
        }
    }

    fn play(
        &self,
        viewer: &str,
        until: Instant,
        range: Range,
        id: Option<Value>,
    ) -> Result<(), Refusal> {
        let Range {
            from_ms,
            to_ms,
            speed,
        } = range;
        let mut g = self.inner.borrow_mut();
        let Some(index) = g.index.clone() else {
            return Err(Refusal::new("play", "this device does not record"));
        };
        let running = g.sessions.values().filter(|s| !s.stopping).count();
        if g.max_sessions == 0 {
            return Err(Refusal::new("play", "playback is off on this device"));
        }
        if running >= g.max_sessions {
            return Err(Refusal::new(
                "play",
                format!(
                    "too many playback sessions (at most {} at once)",
                    g.max_sessions
                ),
            ));
        }
        let now = index::now_us();
        let sel = index
            .select(from_ms * 1000, to_ms.map(|t| t * 1000), MAX_FILES, now)
            .map_err(|e| Refusal::new("play", e))?;
        let path = crate::uplink::random_path()
            .map_err(|e| Refusal::new("play", format!("no random path: {e}")))?;
        // Where each file begins in the stream the reader makes of them.
        let mut map = Vec::with_capacity(sel.files.len());
        let mut offset_us = 0i64;
        for (k, f) in sel.files.iter().enumerate() {
            map.push(((offset_us.max(0) as u64) * 1000, f.start_us));
            let next_start = sel.files.get(k + 1).map(|n| n.start_us);
            offset_us += f
                .duration_us
                .or(next_start.map(|n| n - f.start_us))
                .unwrap_or(0);
        }
        let spec = session::Spec {
            files: sel.files.iter().map(|f| f.path.clone()).collect(),
            map,
            seek_ns: sel.seek_us as u64 * 1000,
            speed,
            to_us: to_ms.map(|t| t * 1000),
            location: g.uplink.url.replace("{path}", &path),
            uplink: g.uplink.clone(),
        };
        let key = g.next;
        g.next += 1;
        log::info!(
            "playback {key}: {} file(s) from {} for viewer {}",
            spec.files.len(),
            index::rfc3339_us(from_ms * 1000),
            if viewer.is_empty() {
                "(anonymous)"
            } else {
                viewer
            }
        );
        let files = spec.files.clone();
        let handle = session::start(key, spec, g.events.clone());
        g.sessions.insert(
            key,
            Session {
                viewer: viewer.to_string(),
                path,
                id,
                until,
                handle,
                files,
                from_ms,
                to_ms,
                speed,
                more_from_us: sel.more_from_us,
                live: false,
                stopping: false,
            },
        );
        Ok(())
    }

    /// Stops the viewer's sessions (only the one at `path`, if given); how many.
    fn stop_matching(&self, viewer: &str, path: Option<&str>, why: &str) -> usize {
        let mut g = self.inner.borrow_mut();
        let mut n = 0;
        for s in g
            .sessions
            .values_mut()
            .filter(|s| s.viewer == viewer && !s.stopping && path.is_none_or(|p| p == s.path))
        {
            s.stopping = true;
            s.handle.stop(why);
            n += 1;
        }
        n
    }

    fn check_leases(&self) {
        let now = Instant::now();
        let mut g = self.inner.borrow_mut();
        for (key, s) in g
            .sessions
            .iter_mut()
            .filter(|(_, s)| s.until <= now && !s.stopping)
        {
            log::info!("playback {key}: no viewer heartbeat within the lease, stopping");
            s.stopping = true;
            s.handle.stop("lease expired");
        }
    }

    fn on_removed(&self, path: &Path) {
        let mut g = self.inner.borrow_mut();
        for (key, s) in g
            .sessions
            .iter_mut()
            .filter(|(_, s)| !s.stopping && s.files.iter().any(|f| f == path))
        {
            log::info!(
                "playback {key}: {} was deleted by retention, ending",
                path.display()
            );
            s.stopping = true;
            s.handle.stop("recording deleted");
        }
    }

    fn on_event(&self, ev: session::Event) {
        match ev {
            session::Event::Live { session, start_us } => {
                let (viewer, path, answer) = {
                    let mut g = self.inner.borrow_mut();
                    let Some(s) = g.sessions.get_mut(&session) else {
                        return;
                    };
                    if s.stopping {
                        return;
                    }
                    s.live = true;
                    let mut answer = json!({
                        "path": s.path,
                        "start": index::rfc3339_us(start_us),
                        "from": index::rfc3339_us(s.from_ms * 1000),
                        "to": s.to_ms.map(|t| index::rfc3339_us(t * 1000)),
                        "speed": s.speed,
                    });
                    if let Some(id) = &s.id {
                        answer["id"] = id.clone();
                    }
                    (s.viewer.clone(), s.path.clone(), answer)
                };
                log::info!(
                    "playback {session}: live at path {path}, first frame {}",
                    index::rfc3339_us(start_us)
                );
                self.send("playback", vec![answer], &viewer);
                self.send("bridge", vec![json!(path)], &viewer);
            }
            session::Event::Ended {
                session,
                reason,
                failed,
            } => {
                let Some(s) = self.inner.borrow_mut().sessions.remove(&session) else {
                    return;
                };
                log::info!("playback {session}: ended ({reason})");
                if failed && !s.live {
                    return self.refuse(&s.viewer, Refusal::new("play", reason), &s.id);
                }
                let mut answer = json!({ "path": s.path, "reason": reason });
                if let Some(id) = &s.id {
                    answer["id"] = id.clone();
                }
                if let (Some(next), "end") = (s.more_from_us, reason.as_str()) {
                    answer["next"] = json!(index::rfc3339_us(next));
                }
                self.send("playback-ended", vec![answer], &s.viewer);
            }
        }
    }
}
