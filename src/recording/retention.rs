//! Retention: keeps the card from filling up. Oldest recordings go first (by boot and segment
//! number, which holds with or without a set clock); never the file being written, never a file
//! outside the recording directory or not named as this device names its files.

use std::path::{Path, PathBuf};

use crate::config::FreeSpace;
use crate::recording::naming::{self, SegmentName};

#[derive(Debug, Clone)]
pub struct Recording {
    pub path: PathBuf,
    pub name: SegmentName,
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Total bytes of recordings; 0: no limit.
    pub max_bytes: u64,
    pub min_free: FreeSpace,
    /// Seconds; 0: keep for ever. Only files with a real start time can be aged.
    pub max_age: u64,
    /// Room kept for the segment being written, on top of the limits.
    pub reserve: u64,
}

/// Every recording of `device` under `dir`, oldest first: by boot and segment number as numbers
/// (boot 10000 follows boot 9999), then by path for the same pair. Symlinks are not followed.
pub fn scan(dir: &Path, device: &str) -> Vec<Recording> {
    let mut out = Vec::new();
    walk(dir, dir, device, 0, &mut out);
    out.sort_by(|a, b| a.name.id.cmp(&b.name.id).then_with(|| a.path.cmp(&b.path)));
    out
}

fn walk(root: &Path, dir: &Path, device: &str, depth: u32, out: &mut Vec<Recording>) {
    if depth > 3 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            walk(root, &path, device, depth + 1, out);
        } else if ft.is_file() {
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| naming::parse(device, n))
            else {
                continue;
            };
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            if !naming::in_layout(rel) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(Recording { path, name, size });
        }
    }
}

/// (free bytes for unprivileged writers, total bytes) of the filesystem holding `dir`.
pub fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = s.fragment_size() as u64;
    Some((s.blocks_available() as u64 * frag, s.blocks() as u64 * frag))
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub deleted: Vec<PathBuf>,
    pub freed: u64,
    /// Limits still not met once only the current file was left.
    pub unmet: Option<String>,
}

/// Applies `policy`. `current` is never deleted. `now` is seconds since the epoch, None while
/// the clock is unset (then nothing is deleted for age).
pub fn enforce(
    dir: &Path,
    device: &str,
    policy: &Policy,
    current: Option<&Path>,
    now: Option<u64>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut files: Vec<Recording> = scan(dir, device)
        .into_iter()
        .filter(|r| Some(r.path.as_path()) != current)
        .collect();
    let current_size = current
        .and_then(|c| std::fs::metadata(c).ok())
        .map(|m| m.len())
        .unwrap_or(0);
    let mut total: u64 = files.iter().map(|r| r.size).sum::<u64>() + current_size;
    let mut free = disk_space(dir);

    let too_old = |r: &Recording| match (policy.max_age, r.name.start, now) {
        (0, _, _) | (_, None, _) | (_, _, None) => false,
        (age, Some(start), Some(now)) => now.saturating_sub(start) > age,
    };
    let over_size = |total: u64| policy.max_bytes > 0 && total + policy.reserve > policy.max_bytes;
    // min_free = 0 asks for no deletion for space at all: a full disk then pauses recording
    // and nothing recorded is touched.
    let low_space = |free: Option<(u64, u64)>| match free {
        Some((avail, size)) if policy.min_free.bytes_of(size) > 0 => {
            avail < policy.min_free.bytes_of(size) + policy.reserve
        }
        _ => false,
    };

    while let Some(oldest) = files.first() {
        if !(too_old(oldest) || over_size(total) || low_space(free)) {
            break;
        }
        let r = files.remove(0);
        match std::fs::remove_file(&r.path) {
            Ok(()) => {
                total = total.saturating_sub(r.size);
                out.freed += r.size;
                if let Some((avail, _)) = free.as_mut() {
                    *avail += r.size;
                }
                remove_empty_parents(dir, &r.path);
                out.deleted.push(r.path);
            }
            Err(e) => log::warn!("retention: cannot delete {}: {e}", r.path.display()),
        }
    }
    free = disk_space(dir).or(free);
    if over_size(total) {
        out.unmet = Some(format!(
            "recordings take {total} bytes, over recording.max_bytes {} with nothing left to delete",
            policy.max_bytes
        ));
    } else if low_space(free) {
        out.unmet = Some("free space below recording.min_free with no recording left to delete (other files fill the disk)".into());
    }
    out
}

/// Removes the date directories a deletion left empty, up to (not including) `root`.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::naming::{relative_path, SegmentId};

    fn make(
        dir: &Path,
        device: &str,
        boot: u32,
        seg: u32,
        start: Option<u64>,
        size: usize,
    ) -> PathBuf {
        let n = SegmentName {
            id: SegmentId { boot, segment: seg },
            start,
        };
        let p = dir.join(relative_path(device, &n));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![0u8; size]).unwrap();
        p
    }

    #[test]
    fn oldest_first_never_current_never_foreign() {
        let dir = std::env::temp_dir().join(format!("camstream-ret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = 1_795_896_916;
        let a = make(&dir, "cam", 1, 1, Some(now - 100 * 86400), 1000);
        let b = make(&dir, "cam", 1, 2, Some(now - 100 * 86400 + 60), 1000);
        let u = make(&dir, "cam", 2, 1, None, 1000);
        let c = make(&dir, "cam", 3, 1, Some(now - 60), 1000);
        let cur = make(&dir, "cam", 3, 2, Some(now), 1000);
        let foreign = make(&dir, "other", 0, 0, Some(now - 200 * 86400), 1000);
        std::fs::write(dir.join("notes.mp4"), b"x").unwrap();
        let policy = Policy {
            max_bytes: 3000,
            min_free: FreeSpace::Bytes(0),
            max_age: 30 * 86400,
            reserve: 0,
        };
        let out = enforce(&dir, "cam", &policy, Some(&cur), Some(now));
        assert_eq!(out.deleted, vec![a.clone(), b.clone()]);
        assert!(u.exists() && c.exists() && cur.exists() && foreign.exists());
        assert!(dir.join("notes.mp4").exists());
        // Unsynced files are never aged, but go by size in boot order.
        let policy = Policy {
            max_bytes: 2000,
            ..policy
        };
        let out = enforce(&dir, "cam", &policy, Some(&cur), Some(now));
        assert_eq!(out.deleted, vec![u.clone()]);
        // Only the current file left and still over: reported, current kept.
        let policy = Policy {
            max_bytes: 500,
            ..policy
        };
        let out = enforce(&dir, "cam", &policy, Some(&cur), Some(now));
        assert_eq!(out.deleted, vec![c]);
        assert!(out.unmet.is_some() && cur.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
