//! What a viewer may ask of the recordings, as read off the Socket.IO wire: checked here, on the
//! signalling thread, so that nothing malformed ever reaches the main loop.
//!
//! - `recordings {"from": T, "to": T}`: the recordings between two times;
//! - `play {"from": T, "to": T (optional), "speed": 1 (optional)}`: a playback session, at real
//!   time or `speed` times faster (a whole number up to `MAX_SPEED`);
//! - `stop {"path": P (optional)}`: ends that session, or every session of the viewer;
//! - `seek {"path": P (optional), "to": T}`: the session again from another time.
//!
//! A time T is RFC 3339 (`2026-12-03T16:40:00Z`, fractions and offsets allowed) or seconds since
//! the epoch (a number). Any request may carry `"id"` (a short string or a number), echoed in
//! its answers so that a viewer on a relay that shows it everyone's answers can find its own.

use std::time::Instant;

use serde_json::{json, Value};

/// Longest time range a `recordings` request may cover.
pub const MAX_RANGE_MS: i64 = 31 * 86_400_000;
/// Times further ahead than this are refused: nothing can be recorded there yet.
const MAX_AHEAD_MS: i64 = 86_400_000;
/// Fastest playback: each session then sends this many times the recording's bitrate.
pub const MAX_SPEED: u32 = 8;
/// The events a viewer sends about recordings.
pub const EVENTS: [&str; 4] = ["recordings", "play", "stop", "seek"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Recordings {
        from_ms: i64,
        to_ms: i64,
    },
    Play {
        from_ms: i64,
        to_ms: Option<i64>,
        speed: u32,
    },
    Stop {
        path: Option<String>,
    },
    Seek {
        path: Option<String>,
        to_ms: i64,
    },
}

/// A request with what identifies it to the viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub request: Request,
    /// The viewer's `"id"`, echoed in the answers.
    pub id: Option<Value>,
}

/// Why a request was refused: answered as `error {"request": ..., "reason": ..., "id": ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub request: String,
    pub reason: String,
    pub id: Option<Value>,
}

impl Refusal {
    pub fn new(request: &str, reason: impl Into<String>) -> Self {
        Self {
            request: request.to_string(),
            reason: reason.into(),
            id: None,
        }
    }

    /// The `error` event's argument.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "request": self.request, "reason": self.reason });
        if let Some(id) = &self.id {
            v["id"] = id.clone();
        }
        v
    }
}

pub fn is_request(event: &str) -> bool {
    EVENTS.contains(&event)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Milliseconds since the epoch of an RFC 3339 date-time (`2026-12-03T16:40:00.250Z`,
/// `...+01:00`); None for anything else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 || !s.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(i64::from(y), mo) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut ms = 0i64;
    if b[at] == b'.' {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: further digits are read and ignored.
        let frac = &s[at + 1..at + 1 + digits.min(3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - digits.min(3) as u32);
        at += 1 + digits;
    }
    let offset_min: i64 = match &s[at..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let oh = num(at + 1..at + 3)?;
            let om = num(at + 4..at + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let v = i64::from(oh * 60 + om);
            if &rest[..1] == "-" {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let days = crate::recording::naming::days_from_civil(i64::from(y), mo, d);
    let secs = days * 86400 + i64::from(h * 3600 + mi * 60 + sec.min(59)) - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// A time from the wire: RFC 3339 or seconds since the epoch. `Err` says what is wrong.
pub fn parse_time(v: &Value, now_ms: i64) -> Result<i64, String> {
    let ms = match v {
        Value::String(s) => {
            parse_rfc3339(s).ok_or("not an RFC 3339 time (e.g. 2026-12-03T16:40:00Z)")?
        }
        Value::Number(n) => {
            let s = n
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or("not a number of seconds")?;
            if !(0.0..=1e11).contains(&s) {
                return Err("seconds since the epoch out of range".into());
            }
            (s * 1000.0).round() as i64
        }
        _ => return Err("a time is an RFC 3339 string or seconds since the epoch".into()),
    };
    if ms < 0 {
        return Err("before 1970".into());
    }
    if ms > now_ms + MAX_AHEAD_MS {
        return Err("more than a day ahead of the device's clock".into());
    }
    Ok(ms)
}

/// A session path as the device makes them (`uplink.path`): letters, digits, '-', '_'.
fn parse_path(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err("path: not a session path".into()),
    }
}

/// Reads one request: `name` is the event, `args` its arguments (the first an object; the
/// routing argument camstream-signal adds may follow). `oversized`: the payload was over the
/// size looked at, and is refused unread.
pub fn parse(name: &str, args: &[Value], oversized: bool, now_ms: i64) -> Result<Asked, Refusal> {
    let obj = args.first().and_then(|a| a.as_object());
    let id = obj.and_then(|o| o.get("id")).and_then(|v| match v {
        Value::String(s) if s.len() <= 64 => Some(v.clone()),
        Value::Number(_) => Some(v.clone()),
        _ => None,
    });
    let refuse = |reason: String| Refusal {
        request: name.to_string(),
        reason,
        id: id.clone(),
    };
    if oversized {
        return Err(refuse("payload too large".into()));
    }
    let empty = serde_json::Map::new();
    let o = match (obj, name) {
        (Some(o), _) => o,
        // `stop` alone ends every session of the viewer.
        (None, "stop") if matches!(args.first(), None | Some(Value::Null)) => &empty,
        (None, "stop") if args.first().is_some_and(|a| a.get("viewer").is_some()) => &empty,
        _ => {
            return Err(refuse(
                "expected an object such as {\"from\": ..., \"to\": ...}".into(),
            ))
        }
    };
    let time = |key: &str| -> Result<Option<i64>, Refusal> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => parse_time(v, now_ms)
                .map(Some)
                .map_err(|e| refuse(format!("{key}: {e}"))),
        }
    };
    let required = |key: &str| -> Result<i64, Refusal> {
        time(key)?.ok_or_else(|| refuse(format!("{key}: missing")))
    };
    let request = match name {
        "recordings" => {
            let (from_ms, to_ms) = (required("from")?, required("to")?);
            if from_ms > to_ms {
                return Err(refuse("from is after to".into()));
            }
            if to_ms - from_ms > MAX_RANGE_MS {
                return Err(refuse(format!(
                    "range over {} days",
                    MAX_RANGE_MS / 86_400_000
                )));
            }
            Request::Recordings { from_ms, to_ms }
        }
        "play" => {
            let from_ms = required("from")?;
            let to_ms = time("to")?;
            if to_ms.is_some_and(|t| t <= from_ms) {
                return Err(refuse("to is not after from".into()));
            }
            let speed = match o.get("speed") {
                None | Some(Value::Null) => 1,
                Some(v) => match v.as_f64() {
                    Some(s) if s.fract() == 0.0 && (1.0..=f64::from(MAX_SPEED)).contains(&s) => {
                        s as u32
                    }
                    _ => {
                        return Err(refuse(format!(
                            "speed: a whole number from 1 (real time) to {MAX_SPEED}"
                        )))
                    }
                },
            };
            Request::Play {
                from_ms,
                to_ms,
                speed,
            }
        }
        "stop" => Request::Stop {
            path: parse_path(o.get("path")).map_err(refuse)?,
        },
        "seek" => Request::Seek {
            path: parse_path(o.get("path")).map_err(refuse)?,
            to_ms: required("to")?,
        },
        _ => return Err(refuse("unknown request".into())),
    };
    Ok(Asked { request, id })
}

/// Requests per viewer: a burst, then a steady rate. Over it a viewer is told once per second
/// and further requests are dropped unanswered, so a flood gets no flood back.
pub struct Limiter {
    buckets: std::collections::HashMap<String, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    told: Option<Instant>,
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Refuse it, saying so.
    Refuse,
    /// Drop it silently (the viewer was told a moment ago).
    Drop,
}

const BURST: f64 = 10.0;
const PER_SECOND: f64 = 5.0;
const MAX_BUCKETS: usize = 256;

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    pub fn new() -> Self {
        Self {
            buckets: Default::default(),
        }
    }

    pub fn check(&mut self, viewer: &str, now: Instant) -> Verdict {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(viewer) {
            // Forget the fullest (the quietest) viewer: it has nothing to lose.
            if let Some(k) = self
                .buckets
                .iter()
                .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                .map(|(k, _)| k.clone())
            {
                self.buckets.remove(&k);
            }
        }
        let b = self.buckets.entry(viewer.to_string()).or_insert(Bucket {
            tokens: BURST,
            at: now,
            told: None,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * PER_SECOND).min(BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Go;
        }
        match b.told {
            Some(t) if now.saturating_duration_since(t).as_secs_f64() < 1.0 => Verdict::Drop,
            _ => {
                b.told = Some(now);
                Verdict::Refuse
            }
        }
    }
}

/// The signalling thread's limiter: one for the process, as there is one relay connection.
static LIMITER: std::sync::Mutex<Option<Limiter>> = std::sync::Mutex::new(None);

/// Whether `viewer` may make another request now (see `Limiter`).
pub fn limit(viewer: &str, now: Instant) -> Verdict {
    let mut l = LIMITER.lock().unwrap_or_else(|e| e.into_inner());
    l.get_or_insert_with(Limiter::new).check(viewer, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: i64 = 1_796_300_000_000;

    #[test]
    fn times_in_both_forms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-28T20:15:16Z"),
            Some(1_795_896_916_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T20:15:16.25Z"),
            Some(1_795_896_916_250)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T21:15:16.123456+01:00"),
            Some(1_795_896_916_123)
        );
        for bad in [
            "2026-11-28",
            "2026-13-28T20:15:16Z",
            "2026-02-29T20:15:16Z",
            "2026-11-28T24:15:16Z",
            "2026-11-28T20:15:16",
            "2026-11-28T20:15:16.Z",
            "2026-11-28T20:15:16+1:00",
            "x026-11-28T20:15:16Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            parse_time(&json!(1_795_896_916.5), NOW),
            Ok(1_795_896_916_500)
        );
        assert!(parse_time(&json!(-1), NOW).is_err());
        assert!(parse_time(&json!(NOW), NOW).is_err(), "milliseconds");
        assert!(parse_time(&json!(true), NOW).is_err());
        assert!(parse_time(&json!("2099-01-01T00:00:00Z"), NOW).is_err());
    }

    #[test]
    fn requests_and_refusals() {
        let ok = parse(
            "recordings",
            &[
                json!({"from": 1_796_000_000, "to": "2026-12-03T10:00:00Z", "id": 7}),
                json!({"viewer": "v"}),
            ],
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(ok.id, Some(json!(7)));
        assert!(matches!(ok.request, Request::Recordings { .. }));
        let refused = |name: &str, v: Value| parse(name, &[v], false, NOW).unwrap_err().reason;
        assert_eq!(
            refused(
                "recordings",
                json!({"from": 1_796_000_000, "to": 1_795_000_000})
            ),
            "from is after to"
        );
        assert!(refused(
            "recordings",
            json!({"from": 1_700_000_000, "to": 1_796_000_000})
        )
        .starts_with("range over"));
        assert!(refused("recordings", json!({"from": "yesterday", "to": 1})).starts_with("from:"));
        assert_eq!(
            refused("recordings", json!("x")),
            "expected an object such as {\"from\": ..., \"to\": ...}"
        );
        assert_eq!(refused("play", json!({"to": 1})), "from: missing");
        assert!(refused("play", json!({"from": 1_796_000_000, "speed": 16})).starts_with("speed"));
        assert!(refused("play", json!({"from": 1_796_000_000, "speed": 1.5})).starts_with("speed"));
        assert!(matches!(
            parse(
                "play",
                &[json!({"from": 1_796_000_000, "speed": 4})],
                false,
                NOW
            )
            .unwrap()
            .request,
            Request::Play { speed: 4, .. }
        ));
        assert!(refused("stop", json!({"path": "../x"})).starts_with("path"));
        let e = parse("play", &[json!({"id": "a"})], true, NOW).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.id),
            ("payload too large", Some(json!("a")))
        );
        assert_eq!(
            parse("stop", &[], false, NOW).unwrap().request,
            Request::Stop { path: None }
        );
    }

    #[test]
    fn a_flood_is_told_once_a_second() {
        let mut l = Limiter::new();
        let t = Instant::now();
        let verdicts: Vec<_> = (0..20).map(|_| l.check("v", t)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Go).count(), 10);
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Refuse).count(),
            1
        );
        assert_eq!(l.check("other", t), Verdict::Go);
        assert_eq!(l.check("v", t + Duration::from_millis(400)), Verdict::Go);
        assert_eq!(l.check("v", t + Duration::from_millis(1100)), Verdict::Go);
    }
}
