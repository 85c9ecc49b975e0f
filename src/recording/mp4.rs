//! Reads the duration of a recording from its MP4 boxes. A cleanly closed file states it in
//! `mvhd`; a file cut short by a power loss does not, so the sample durations of its complete
//! fragments (`moof/traf/trun`) are added up instead, which is also what a player can play.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// Child boxes of a box body: (type, body).
fn children(body: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= body.len() {
        let Some(size) = be32(body, at) else { break };
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&body[at + 4..at + 8]);
        let (header, size) = match size {
            1 => match be64(body, at + 8) {
                Some(s) => (16, s as usize),
                None => break,
            },
            0 => (8, body.len() - at),
            s => (8, s as usize),
        };
        if size < header || at + size > body.len() {
            break;
        }
        out.push((kind, &body[at + header..at + size]));
        at += size;
    }
    out
}

fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(body)
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, b)| b)
}

#[derive(Default)]
struct Movie {
    /// mvhd duration in seconds, when the file was closed cleanly.
    closed_duration: Option<f64>,
    /// Timescale of the (first) track's media.
    track_timescale: u32,
    default_sample_duration: u32,
}

fn parse_moov(body: &[u8]) -> Movie {
    let mut m = Movie::default();
    if let Some(mvhd) = child(body, b"mvhd") {
        let (ts, dur) = if mvhd.first() == Some(&1) {
            (be32(mvhd, 20), be64(mvhd, 24))
        } else {
            (be32(mvhd, 12), be32(mvhd, 16).map(u64::from))
        };
        if let (Some(ts), Some(dur)) = (ts, dur) {
            if ts > 0 && dur > 0 && dur != u64::from(u32::MAX) && dur != u64::MAX {
                m.closed_duration = Some(dur as f64 / f64::from(ts));
            }
        }
    }
    if let Some(mdhd) = child(body, b"trak")
        .and_then(|t| child(t, b"mdia"))
        .and_then(|m| child(m, b"mdhd"))
    {
        let at = if mdhd.first() == Some(&1) { 20 } else { 12 };
        m.track_timescale = be32(mdhd, at).unwrap_or(0);
    }
    if let Some(trex) = child(body, b"mvex").and_then(|x| child(x, b"trex")) {
        m.default_sample_duration = be32(trex, 12).unwrap_or(0);
    }
    m
}

/// Sum of sample durations in one `moof`, in track timescale units.
fn moof_ticks(body: &[u8], default_duration: u32) -> u64 {
    let mut ticks = 0u64;
    for (kind, traf) in children(body) {
        if &kind != b"traf" {
            continue;
        }
        let mut default = default_duration;
        if let Some(tfhd) = child(traf, b"tfhd") {
            let flags = be32(tfhd, 0).unwrap_or(0) & 0x00ff_ffff;
            let mut at = 8; // version/flags, track_ID
            if flags & 0x01 != 0 {
                at += 8; // base-data-offset
            }
            if flags & 0x02 != 0 {
                at += 4; // sample-description-index
            }
            if flags & 0x08 != 0 {
                default = be32(tfhd, at).unwrap_or(default);
            }
        }
        for (k, trun) in children(traf) {
            if &k != b"trun" {
                continue;
            }
            let flags = be32(trun, 0).unwrap_or(0) & 0x00ff_ffff;
            let count = be32(trun, 4).unwrap_or(0) as usize;
            let mut at = 8;
            if flags & 0x01 != 0 {
                at += 4; // data-offset
            }
            if flags & 0x04 != 0 {
                at += 4; // first-sample-flags
            }
            let per_sample = [0x100, 0x200, 0x400, 0x800]
                .iter()
                .filter(|f| flags & **f != 0)
                .count()
                * 4;
            if flags & 0x100 == 0 {
                ticks += default as u64 * count as u64;
                continue;
            }
            for i in 0..count {
                ticks += u64::from(be32(trun, at + i * per_sample).unwrap_or(0));
            }
        }
    }
    ticks
}

/// Playable duration in seconds, or None if the file has no readable movie header.
pub fn duration(path: &Path) -> Option<f64> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut r = BufReader::new(file);
    let mut movie: Option<Movie> = None;
    let mut fragment_ticks = 0u64;
    // A fragment counts once its media data (the mdat after the moof) is complete.
    let mut pending = 0u64;
    let mut pos = 0u64;
    while pos + 8 <= len {
        let mut head = [0u8; 16];
        r.seek(SeekFrom::Start(pos)).ok()?;
        r.read_exact(&mut head[..8]).ok()?;
        let size32 = be32(&head, 0)?;
        let kind = [head[4], head[5], head[6], head[7]];
        let (header, size) = match size32 {
            1 => {
                r.read_exact(&mut head[8..16]).ok()?;
                (16, be64(&head, 8)?)
            }
            0 => (8, len - pos),
            s => (8, u64::from(s)),
        };
        if size < header || pos + size > len {
            break; // a box cut short by the power loss: everything before it counts
        }
        if &kind == b"moov" || &kind == b"moof" {
            // Headers only: small, unlike mdat.
            let mut body = vec![0u8; (size - header).min(64 << 20) as usize];
            r.read_exact(&mut body).ok()?;
            if &kind == b"moov" {
                movie = Some(parse_moov(&body));
            } else if let Some(m) = &movie {
                pending = moof_ticks(&body, m.default_sample_duration);
            }
        } else if &kind == b"mdat" {
            fragment_ticks += std::mem::take(&mut pending);
        }
        pos += size;
    }
    let m = movie?;
    m.closed_duration.or_else(|| {
        (m.track_timescale > 0).then(|| fragment_ticks as f64 / f64::from(m.track_timescale))
    })
}
