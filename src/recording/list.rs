//! `camstream recordings`: what is on the card, for people and (with --json) for programs such
//! as a future remote-playback service.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::recording::mp4;
use crate::recording::naming;
use crate::recording::retention;

#[derive(Debug, Serialize)]
pub struct Entry {
    pub path: String,
    /// UTC start (RFC 3339), or null for files written before the clock was set.
    pub start: Option<String>,
    pub end: Option<String>,
    pub duration_s: Option<f64>,
    pub size: u64,
    pub boot: u32,
    pub segment: u32,
}

pub fn list(dir: &Path, device: &str) -> Result<Vec<Entry>> {
    Ok(retention::scan(dir, device)
        .into_iter()
        .map(|r| {
            let d = mp4::duration(&r.path);
            Entry {
                path: r.path.display().to_string(),
                start: r.name.start.map(naming::rfc3339),
                end: match (r.name.start, d) {
                    (Some(s), Some(d)) => Some(naming::rfc3339(s + d.round() as u64)),
                    _ => None,
                },
                duration_s: d.map(|d| (d * 1000.0).round() / 1000.0),
                size: r.size,
                boot: r.name.id.boot,
                segment: r.name.id.segment,
            }
        })
        .collect())
}

pub fn print(entries: &[Entry], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
        return Ok(());
    }
    println!(
        "{:<21} {:<21} {:>9} {:>11}  path",
        "start", "end", "duration", "size"
    );
    for e in entries {
        println!(
            "{:<21} {:<21} {:>9} {:>11}  {}",
            e.start.as_deref().unwrap_or("(clock unset)"),
            e.end.as_deref().unwrap_or("-"),
            e.duration_s
                .map(|d| format!("{d:.1} s"))
                .unwrap_or_else(|| "?".into()),
            e.size,
            e.path
        );
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    println!("{} recordings, {total} bytes", entries.len());
    Ok(())
}
