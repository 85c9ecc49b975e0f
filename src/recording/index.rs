//! The recordings on the card, kept in memory: built once at start from the card (off the main
//! loop), then kept up to date as files are opened, finished and deleted by retention, so that
//! a viewer's listing or playback never walks the card.
//!
//! Where a file starts in UTC: a file opened by this run knows its start to the millisecond
//! (the wall clock at its first frame's capture). A file found on the card only has its name,
//! rounded to the second; but consecutive segments of one boot follow each other without a gap,
//! each starting where the previous one ended, so every name in such a run narrows down where
//! the run began (each name is its true start ± 0.5 s, minus the durations before it). A run
//! breaks where the names disagree with the durations (the clock was set or stepped).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::recording::naming::{self, SegmentId};

/// Files further apart than this (end of one to start of the next) have a gap between them.
const GAP_US: i64 = 750_000;
/// How far a start time read from a file name can be off: rounding plus the clock's jitter.
const NAME_SLACK_US: i64 = 550_000;
/// How far a start time taken at open can be off.
const OPEN_SLACK_US: i64 = 20_000;
/// Most spans and unsynced files in one answer.
const MAX_LISTED: usize = 1000;

#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub id: SegmentId,
    /// UTC start from the file name, seconds; None before the clock was set.
    pub name_start: Option<u64>,
    /// UTC start to the microsecond, for files this run opened.
    pub start_us: Option<i64>,
    /// Seconds of video: from the MP4 once finished; None while unknown.
    pub duration: Option<f64>,
    /// Being written.
    pub open: bool,
}

/// A recording placed on the UTC timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub path: PathBuf,
    pub id: SegmentId,
    pub start_us: i64,
    /// None while being written, or while its duration is not known yet.
    pub duration_us: Option<i64>,
    pub open: bool,
}

impl Placed {
    /// Its end; a file being written ends now (so far).
    pub fn end_us(&self, now_us: i64) -> i64 {
        match self.duration_us {
            Some(d) => self.start_us + d,
            None if self.open => now_us.max(self.start_us),
            None => self.start_us,
        }
    }
}

/// What a playback session plays: files in order and where each starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub files: Vec<Placed>,
    /// Where to start in the first file, µs from its start (0: from its first frame).
    pub seek_us: i64,
    /// The first file of the range played (of more than fit in one session).
    pub more_from_us: Option<i64>,
}

type Listener = Box<dyn Fn(&Path) + Send>;

#[derive(Default)]
struct Inner {
    files: BTreeMap<(SegmentId, PathBuf), Entry>,
    /// Set while the card is scanned; files deleted meanwhile are not taken from the scan.
    scanning: bool,
    removed_while_scanning: HashSet<PathBuf>,
    built: bool,
}

/// Shared between the streaming thread (files opened), the retention thread (files deleted), the
/// threads reading durations, and the main loop (listings and playback). Every lock is short.
#[derive(Default)]
pub struct Index {
    inner: Mutex<Inner>,
    listeners: Mutex<Vec<Listener>>,
}

pub type SharedIndex = Arc<Index>;

impl Index {
    pub fn new() -> SharedIndex {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with the path of every file deleted from now on (on the deleting thread).
    pub fn on_removed(&self, f: impl Fn(&Path) + Send + 'static) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Whether the start-up scan has been taken in.
    pub fn is_built(&self) -> bool {
        self.lock().built
    }

    /// A new file is being written (streaming thread). The previous one is finishing: until its
    /// MP4 says how long it is, its length is taken as the time between the two starts.
    pub fn opened(&self, path: PathBuf, id: SegmentId, name_start: Option<u64>, start_us: i64) {
        let mut g = self.lock();
        for e in g.files.values_mut().filter(|e| e.open) {
            e.open = false;
            if e.duration.is_none() && e.id.boot == id.boot {
                if let Some(s) = e.start_us {
                    e.duration = Some((start_us - s).max(0) as f64 / 1e6);
                }
            }
        }
        let precise = name_start.map(|_| start_us);
        g.files.insert(
            (id, path.clone()),
            Entry {
                path,
                id,
                name_start,
                start_us: precise,
                duration: None,
                open: true,
            },
        );
    }

    /// The file is closed and its MP4 says how long it is (None: unreadable, left as it was).
    pub fn finished(&self, path: &Path, duration: Option<f64>) {
        let mut g = self.lock();
        if let Some(e) = g.files.values_mut().find(|e| e.path == path) {
            e.open = false;
            if duration.is_some() {
                e.duration = duration;
            }
        }
    }

    /// The file being written stopped without a successor (recording stopped or failed).
    pub fn stopped(&self) {
        for e in self.lock().files.values_mut() {
            e.open = false;
        }
    }

    /// Retention deleted the file (retention thread).
    pub fn removed(&self, path: &Path) {
        {
            let mut g = self.lock();
            g.files.retain(|_, e| e.path != path);
            if g.scanning {
                g.removed_while_scanning.insert(path.to_path_buf());
            }
        }
        for f in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f(path);
        }
    }

    /// Builds the index from the card: every file of `device` under `dir` with its MP4
    /// duration. Blocks on the card for a while: run it off the main loop, once, at start.
    pub fn build(&self, dir: &Path, device: &str) {
        self.lock().scanning = true;
        let started = std::time::Instant::now();
        let found: Vec<Entry> = crate::recording::retention::scan(dir, device)
            .into_iter()
            .map(|r| Entry {
                duration: crate::recording::mp4::duration(&r.path),
                path: r.path,
                id: r.name.id,
                name_start: r.name.start,
                start_us: None,
                open: false,
            })
            .collect();
        let n = found.len();
        let mut g = self.lock();
        let removed = std::mem::take(&mut g.removed_while_scanning);
        // Files this run opened meanwhile are known better already.
        let known: HashSet<PathBuf> = g.files.values().map(|e| e.path.clone()).collect();
        for e in found {
            if removed.contains(&e.path) || known.contains(&e.path) {
                continue;
            }
            g.files.insert((e.id, e.path.clone()), e);
        }
        g.scanning = false;
        g.built = true;
        drop(g);
        log::info!(
            "recording: {n} recordings on the card indexed in {} ms",
            started.elapsed().as_millis()
        );
    }

    /// Every file with a UTC start placed on the timeline, in recording order, and the files
    /// written before the clock was set.
    pub fn timeline(&self) -> (Vec<Placed>, Vec<Entry>) {
        let g = self.lock();
        let (synced, unsynced): (Vec<&Entry>, Vec<&Entry>) =
            g.files.values().partition(|e| e.name_start.is_some());
        (place(&synced), unsynced.into_iter().cloned().collect())
    }

    /// The answer to `recordings`: spans of continuous recording overlapping `[from, to]`
    /// (their real extent, not clipped), the gaps between them, and the files written before
    /// the clock was set, in recording order.
    pub fn list(&self, from_us: i64, to_us: i64, now_us: i64) -> Value {
        let (placed, unsynced) = self.timeline();
        let spans = spans(&placed, now_us);
        let mut truncated = false;
        let mut out_spans = Vec::new();
        let mut gaps = Vec::new();
        let mut last_end: Option<i64> = None;
        for s in spans
            .iter()
            .filter(|s| s.end_us > from_us && s.start_us <= to_us)
        {
            if out_spans.len() >= MAX_LISTED {
                truncated = true;
                break;
            }
            if let Some(e) = last_end {
                gaps.push(json!({
                    "start": rfc3339_us(e),
                    "end": rfc3339_us(s.start_us),
                    "duration_s": secs(s.start_us - e),
                }));
            }
            let end = if s.open {
                Value::Null
            } else {
                json!(rfc3339_us(s.end_us))
            };
            out_spans.push(json!({
                "start": rfc3339_us(s.start_us),
                "end": end,
                "duration_s": secs(s.end_us - s.start_us),
                "files": s.files,
                "open": s.open,
            }));
            last_end = Some(s.end_us);
        }
        if unsynced.len() > MAX_LISTED {
            truncated = true;
        }
        let unsynced: Vec<Value> = unsynced
            .iter()
            .take(MAX_LISTED)
            .map(|e| {
                json!({
                    "boot": e.id.boot,
                    "segment": e.id.segment,
                    "duration_s": e.duration.map(|d| (d * 1000.0).round() / 1000.0),
                    "open": e.open,
                })
            })
            .collect();
        json!({
            "from": rfc3339_us(from_us),
            "to": rfc3339_us(to_us),
            "spans": out_spans,
            "gaps": gaps,
            "unsynced": unsynced,
            "truncated": truncated,
            "complete": self.is_built(),
        })
    }

    /// The files to play from `from` (to `to`, or the end of the recordings), at most
    /// `max_files`: from the file holding `from`, or the first one after it when `from` falls
    /// in a gap. Err says why there is nothing to play.
    pub fn select(
        &self,
        from_us: i64,
        to_us: Option<i64>,
        max_files: usize,
        now_us: i64,
    ) -> Result<Selection, String> {
        let (placed, _) = self.timeline();
        let first = placed
            .iter()
            .position(|p| p.end_us(now_us) > from_us)
            .ok_or("no recording at or after from")?;
        if to_us.is_some_and(|t| placed[first].start_us >= t) {
            return Err("no recording between from and to".into());
        }
        let mut files: Vec<Placed> = placed[first..]
            .iter()
            .take_while(|p| to_us.is_none_or(|t| p.start_us < t))
            .cloned()
            .collect();
        let more_from_us = (files.len() > max_files).then(|| files[max_files].start_us);
        files.truncate(max_files);
        let seek_us = (from_us - files[0].start_us).max(0);
        Ok(Selection {
            files,
            seek_us,
            more_from_us,
        })
    }
}

/// One span of continuous recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub start_us: i64,
    pub end_us: i64,
    pub files: usize,
    pub open: bool,
}

/// Joins placed files into spans: a file starting within `GAP_US` of the previous one's end
/// continues its span.
pub fn spans(placed: &[Placed], now_us: i64) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for p in placed {
        let end = p.end_us(now_us);
        match out.last_mut() {
            Some(s) if !s.open && (p.start_us - s.end_us).abs() <= GAP_US => {
                s.end_us = end.max(s.end_us);
                s.files += 1;
                s.open = p.open;
            }
            _ => out.push(Span {
                start_us: p.start_us,
                end_us: end,
                files: 1,
                open: p.open,
            }),
        }
    }
    out
}

/// How far off a file's own idea of its start can be: (earliest, latest), µs.
fn own_window(e: &Entry) -> (i64, i64) {
    match (e.start_us, e.name_start) {
        (Some(p), _) => (p - OPEN_SLACK_US, p + OPEN_SLACK_US),
        (None, Some(n)) => {
            let c = n as i64 * 1_000_000;
            (c - NAME_SLACK_US, c + NAME_SLACK_US)
        }
        (None, None) => (0, 0),
    }
}

fn duration_us(e: &Entry) -> Option<i64> {
    e.duration.map(|d| (d * 1e6).round() as i64)
}

/// Places a run of files that follow each other: it starts in the middle of `window`.
fn flush_run(run: &mut Vec<(&Entry, i64)>, window: (i64, i64), out: &mut Vec<Placed>) {
    let t0 = (window.0 + window.1) / 2;
    for (e, off) in run.drain(..) {
        out.push(Placed {
            path: e.path.clone(),
            id: e.id,
            start_us: t0 + off,
            duration_us: if e.open { None } else { duration_us(e) },
            open: e.open,
        });
    }
}

/// Places files with a UTC start on the timeline (see the module's notes).
fn place(entries: &[&Entry]) -> Vec<Placed> {
    let mut out = Vec::with_capacity(entries.len());
    // The run being built: its entries with their offsets from its start, and where it may start.
    let mut run: Vec<(&Entry, i64)> = Vec::new();
    let mut window = (0i64, 0i64);
    for e in entries.iter().copied() {
        let (lo, hi) = own_window(e);
        let follows = run.last().and_then(|&(prev, off)| {
            let consecutive = prev.id.boot == e.id.boot
                && prev.id.segment.checked_add(1) == Some(e.id.segment)
                && !prev.open;
            let d = duration_us(prev)?;
            consecutive.then_some(off + d)
        });
        if let Some(off) = follows {
            let w = (window.0.max(lo - off), window.1.min(hi - off));
            if w.0 <= w.1 {
                window = w;
                run.push((e, off));
                continue;
            }
        }
        flush_run(&mut run, window, &mut out);
        window = (lo, hi);
        run.push((e, 0));
    }
    flush_run(&mut run, window, &mut out);
    out
}

fn secs(us: i64) -> f64 {
    (us as f64 / 1000.0).round() / 1000.0
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339_us(us: i64) -> String {
    let ms = us.div_euclid(1000).max(0) as u64;
    let base = naming::rfc3339(ms / 1000);
    format!("{}.{:03}Z", base.trim_end_matches('Z'), ms % 1000)
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    crate::stamp::now_us() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(boot: u32, segment: u32, name: u64, dur: f64) -> Entry {
        Entry {
            path: PathBuf::from(format!("{boot}-{segment}.mp4")),
            id: SegmentId { boot, segment },
            name_start: Some(name),
            start_us: None,
            duration: Some(dur),
            open: false,
        }
    }

    #[test]
    fn names_of_a_run_narrow_down_its_start() {
        // True start 1000.3 s; segments of 2.1 s named by their rounded starts.
        let t0 = 1000.3;
        let es: Vec<Entry> = (0..6)
            .map(|k| {
                let start = t0 + 2.1 * k as f64;
                entry(1, k + 1, start.round() as u64, 2.1)
            })
            .collect();
        let refs: Vec<&Entry> = es.iter().collect();
        let placed = place(&refs);
        let err = (placed[0].start_us as f64 / 1e6 - t0).abs();
        assert!(err < 0.15, "first start off by {err} s");
        for w in placed.windows(2) {
            assert_eq!(w[0].start_us + w[0].duration_us.unwrap(), w[1].start_us);
        }
        assert_eq!(spans(&placed, 0).len(), 1);
    }

    #[test]
    fn a_new_boot_or_a_clock_step_starts_a_new_span() {
        let es = [
            entry(1, 1, 1000, 2.0),
            entry(1, 2, 1002, 2.0),
            // The clock stepped an hour ahead between these.
            entry(1, 3, 4604, 2.0),
            // Next boot, after a pause.
            entry(2, 1, 4700, 2.0),
        ];
        let refs: Vec<&Entry> = es.iter().collect();
        let s = spans(&place(&refs), 0);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].files, 2);
    }

    #[test]
    fn listing_and_selection() {
        let idx = Index::new();
        let base = 1_796_000_000u64;
        for k in 0..3u32 {
            let start = (base as i64 + 2 * k as i64) * 1_000_000;
            idx.opened(
                PathBuf::from(format!("f{k}.mp4")),
                SegmentId {
                    boot: 5,
                    segment: k + 1,
                },
                Some(base + 2 * k as u64),
                start,
            );
        }
        idx.finished(Path::new("f0.mp4"), Some(2.0));
        let now = (base as i64 + 5) * 1_000_000;
        let v = idx.list(0, now, now);
        assert_eq!(v["spans"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["spans"][0]["open"], json!(true));
        assert_eq!(v["spans"][0]["end"], Value::Null);
        assert_eq!(v["spans"][0]["files"], json!(3));
        let from = (base as i64 + 3) * 1_000_000;
        let sel = idx.select(from, Some(from + 500_000), 10, now).unwrap();
        assert_eq!(sel.files.len(), 1);
        assert_eq!(sel.files[0].path, PathBuf::from("f1.mp4"));
        assert_eq!(sel.seek_us, 1_000_000);
        let sel = idx.select(from, None, 1, now).unwrap();
        assert_eq!(sel.more_from_us, Some((base as i64 + 4) * 1_000_000));
        let sel = idx.select(now - 200_000, None, 10, now).unwrap();
        assert!(sel.files[0].open, "the file being written");
        assert!(idx.select(now + 10_000_000, None, 10, now).is_err());
        idx.removed(Path::new("f1.mp4"));
        let v = idx.list(0, now, now);
        assert_eq!(v["spans"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(v["gaps"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(
            rfc3339_us(1_795_896_916_250_000),
            "2026-11-28T20:15:16.250Z"
        );
    }
}
