//! Recording file names. Every name carries the boot number and the segment number, so files
//! sort into recording order whether or not the clock was set when they were written:
//!
//!   YYYY/MM/DD/<device>_<YYYYMMDDTHHMMSSZ>_<boot>-<segment>.mp4   clock set (UTC start time)
//!   unsynced/<device>_unsynced_<boot>-<segment>.mp4                no RTC, clock not yet set
//!
//! A board without an RTC boots in 1970; its files must not look 56 years old to retention.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Any time before this (2023-11-14) means the clock has not been set since boot.
const CLOCK_SET_AFTER: u64 = 1_700_000_000;

/// How many segment numbers a new file tries before giving up on finding a name not yet taken.
pub const NAME_TRIES: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentId {
    pub boot: u32,
    pub segment: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentName {
    pub id: SegmentId,
    /// UTC start, seconds since the epoch; None for unsynced files.
    pub start: Option<u64>,
}

/// Seconds since the epoch, or None while the clock is unset.
pub fn wall_clock() -> Option<u64> {
    wall_clock_at(std::time::Duration::ZERO)
}

/// Seconds since the epoch `age` ago (rounded to the nearest second), or None while unset.
pub fn wall_clock_at(age: std::time::Duration) -> Option<u64> {
    let then = SystemTime::now().checked_sub(age)?;
    let secs = ((then.duration_since(UNIX_EPOCH).ok()?.as_millis() + 500) / 1000) as u64;
    (secs >= CLOCK_SET_AFTER).then_some(secs)
}

/// (year, month, day, hour, minute, second) in UTC; days-to-civil from H. Hinnant's algorithm.
pub fn utc_fields(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Inverse of `utc_fields` for the date part (days from civil, same source).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_fields(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The path of a segment, relative to the recording directory.
pub fn relative_path(device: &str, name: &SegmentName) -> PathBuf {
    let SegmentId { boot, segment } = name.id;
    match name.start {
        Some(t) => {
            let (y, mo, d, h, mi, s) = utc_fields(t);
            PathBuf::from(format!("{y:04}/{mo:02}/{d:02}")).join(format!(
                "{device}_{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z_{boot:04}-{segment:06}.mp4"
            ))
        }
        None => {
            PathBuf::from("unsynced").join(format!("{device}_unsynced_{boot:04}-{segment:06}.mp4"))
        }
    }
}

fn parse_stamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    u64::try_from(days * 86400 + i64::from(h * 3600 + mi * 60 + sec)).ok()
}

/// Parses a file name written by this device; anything else is None and is never touched.
pub fn parse(device: &str, file_name: &str) -> Option<SegmentName> {
    let rest = file_name.strip_prefix(device)?.strip_prefix('_')?;
    let rest = rest.strip_suffix(".mp4")?;
    let (stamp, seq) = rest.rsplit_once('_')?;
    let (boot, segment) = seq.split_once('-')?;
    if boot.len() < 4
        || segment.len() < 6
        || !boot
            .bytes()
            .chain(segment.bytes())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let id = SegmentId {
        boot: boot.parse().ok()?,
        segment: segment.parse().ok()?,
    };
    let start = if stamp == "unsynced" {
        None
    } else {
        Some(parse_stamp(stamp)?)
    };
    Some(SegmentName { id, start })
}

/// Whether `rel` (relative to the recording directory) sits where this device writes.
pub fn in_layout(rel: &Path) -> bool {
    let parts: Vec<_> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    match parts.as_slice() {
        [dir, _file] => dir == "unsynced",
        [y, m, d, _file] => {
            y.len() == 4
                && m.len() == 2
                && d.len() == 2
                && [y, m, d]
                    .iter()
                    .all(|p| p.bytes().all(|c| c.is_ascii_digit()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = SegmentName {
            id: SegmentId {
                boot: 7,
                segment: 42,
            },
            start: Some(1_795_896_916),
        };
        let p = relative_path("cam01", &n);
        assert_eq!(
            p,
            PathBuf::from("2026/11/28/cam01_20261128T201516Z_0007-000042.mp4")
        );
        assert!(in_layout(&p));
        assert_eq!(
            parse("cam01", p.file_name().unwrap().to_str().unwrap()),
            Some(n)
        );
        let u = SegmentName {
            id: SegmentId {
                boot: 3,
                segment: 1,
            },
            start: None,
        };
        let p = relative_path("cam01", &u);
        assert_eq!(p, PathBuf::from("unsynced/cam01_unsynced_0003-000001.mp4"));
        assert_eq!(
            parse("cam01", p.file_name().unwrap().to_str().unwrap()),
            Some(u)
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn boot_numbers_grow_past_four_digits() {
        for (boot, file) in [
            (9999, "cam01_unsynced_9999-000001.mp4"),
            (10000, "cam01_unsynced_10000-000001.mp4"),
            (u32::MAX, "cam01_unsynced_4294967295-000001.mp4"),
        ] {
            let n = SegmentName {
                id: SegmentId { boot, segment: 1 },
                start: None,
            };
            assert_eq!(relative_path("cam01", &n), Path::new("unsynced").join(file));
            assert_eq!(parse("cam01", file), Some(n));
        }
        // Ordered by number, not by name.
        assert!(
            SegmentId {
                boot: 10000,
                segment: 1
            } > SegmentId {
                boot: 9999,
                segment: 999_999
            }
        );
        // Past u32: not a name of ours.
        assert_eq!(parse("cam01", "cam01_unsynced_4294967296-000001.mp4"), None);
    }

    #[test]
    fn foreign_names_are_rejected() {
        for f in [
            "cam02_20261128T201516Z_0007-000042.mp4",
            "cam01_20261128T201516Z_0007-000042.mkv",
            "cam01_20261328T201516Z_0007-000042.mp4",
            "cam01_x_0007-000042.mp4",
            "cam01_unsynced_7-42.mp4",
            "holiday.mp4",
        ] {
            assert_eq!(parse("cam01", f), None, "{f}");
        }
        assert!(!in_layout(Path::new("cam01_unsynced_0003-000001.mp4")));
        assert!(!in_layout(Path::new(
            "photos/cam01_unsynced_0003-000001.mp4"
        )));
    }
}
