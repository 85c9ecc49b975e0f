//! Reading recordings back, for the tests that record.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn mp4_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "mp4") {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    // Names sort by boot then segment number.
    out.sort_by_key(|p| p.file_name().unwrap().to_owned());
    out
}

/// ffprobe's `-show_entries ENTRIES` of the video stream as CSV lines (ffprobe fails on an
/// unreadable file, and so does this).
fn probe_csv(file: &Path, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            entries,
        ])
        .args(["-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Presentation times of every decoded frame.
pub fn frame_times(file: &Path) -> Vec<f64> {
    let mut t: Vec<f64> = probe_csv(file, "frame=pts_time")
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t
}

/// (frames written, files, frames dropped) from the recorder's summary line.
pub fn summary_frames(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("recording: ") && l.contains("frames written in"))
        .unwrap_or_else(|| panic!("no recording summary in:\n{log}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let n = nums.len();
    (nums[n - 3], nums[n - 2], nums[n - 1])
}

/// Presentation times of the keyframes in `file`, from the container's packet flags.
pub fn keyframe_times(file: &Path) -> Vec<f64> {
    let mut t: Vec<f64> = probe_csv(file, "packet=pts_time,flags")
        .lines()
        .filter_map(|l| {
            let (pts, flags) = l.split_once(',')?;
            flags.starts_with('K').then(|| pts.parse().ok()).flatten()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t
}
