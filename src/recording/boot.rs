//! The boot number: the first half of every recording's name, one more at each daemon start.
//!
//! Retention deletes the lowest (boot, segment) first and `unsynced/` names carry nothing but
//! these two numbers, so the boot number must only ever grow. The counter kept in
//! `<dir>/.camstream-boot` therefore never wraps (it is a u32, and names grow past four digits:
//! `10000` comes after `9999` because names are compared as numbers), and it is never trusted on
//! its own: the next boot is one more than the larger of the counter and the highest boot number
//! of this device's recordings on the card. A counter that is corrupt, empty, missing or restored
//! from an old backup then cannot restart numbering below footage already there, which would
//! make retention delete the newest recordings first and let new `unsynced/` files take the
//! names of old ones. Running out of numbers is an error, never a wrap.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::recording::retention;

/// The counter's file name in the recording directory.
pub const COUNTER: &str = ".camstream-boot";

/// What the counter file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Missing,
    /// Present but not a number (the reason, for the log).
    Corrupt(String),
    Value(u32),
}

/// Reads the counter file; only an I/O error other than its absence is an error.
pub fn read_counter(dir: &Path) -> Result<Stored> {
    let path = dir.join(COUNTER);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    Ok(if text.is_empty() {
        Stored::Corrupt("it is empty".into())
    } else {
        match text.parse::<u32>() {
            Ok(n) => Stored::Value(n),
            Err(_) => Stored::Corrupt(format!("{:?} is not a boot number", truncate(text, 40))),
        }
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The highest boot number among `device`'s recordings under `dir`; None when there are none.
pub fn highest_on_card(dir: &Path, device: &str) -> Option<u32> {
    retention::scan(dir, device)
        .iter()
        .map(|r| r.name.id.boot)
        .max()
}

/// One more than the larger of the counter and the card; an error rather than a wrap.
pub fn following(stored: &Stored, on_card: Option<u32>) -> Result<u32> {
    let counter = match stored {
        Stored::Value(n) => Some(*n),
        _ => None,
    };
    let last = counter.max(on_card).unwrap_or(0);
    last.checked_add(1).ok_or_else(|| {
        anyhow!(
            "the boot number has reached {last}, the largest there is: move the recordings and \
             {COUNTER} off the card to start again from 1"
        )
    })
}

/// Reads, increments and durably stores the boot counter kept in the recording directory
/// (written to a temporary file, flushed, renamed over the counter, and the directory flushed
/// so that the rename survives a power cut).
pub fn next_boot(dir: &Path, device: &str) -> Result<u32> {
    let stored = read_counter(dir)?;
    let on_card = highest_on_card(dir, device);
    let boot = following(&stored, on_card)?;
    match (&stored, on_card) {
        (Stored::Corrupt(why), Some(high)) => log::warn!(
            "recording: {} is corrupt ({why}); recovered boot number {high} from the recordings \
             on the card, this run is boot {boot}",
            dir.join(COUNTER).display()
        ),
        (Stored::Corrupt(why), None) => log::warn!(
            "recording: {} is corrupt ({why}) and there are no recordings on the card; this run \
             is boot {boot}",
            dir.join(COUNTER).display()
        ),
        (Stored::Missing, Some(high)) => log::warn!(
            "recording: {} is missing; recovered boot number {high} from the recordings on the \
             card, this run is boot {boot}",
            dir.join(COUNTER).display()
        ),
        (Stored::Value(n), Some(high)) if high > *n => log::warn!(
            "recording: {} says boot {n} but the card holds recordings of boot {high}; this run \
             is boot {boot}",
            dir.join(COUNTER).display()
        ),
        _ => {}
    }
    store(dir, boot)?;
    Ok(boot)
}

fn store(dir: &Path, boot: u32) -> Result<()> {
    let path = dir.join(COUNTER);
    let tmp = dir.join(format!("{COUNTER}.tmp"));
    std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{boot}\n").as_bytes())?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("recording directory {} is not writable", dir.display()))?;
    // Some filesystems cannot flush a directory: that must not stop recording.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("recording: cannot flush {}: {e}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, AtomicU64};
    use std::sync::{mpsc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::recording::naming::{self, relative_path, SegmentId, SegmentName};
    use crate::recording::Shared;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("camstream-boot-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn make(dir: &Path, device: &str, boot: u32, segment: u32, start: Option<u64>) -> PathBuf {
        let n = SegmentName {
            id: SegmentId { boot, segment },
            start,
        };
        let p = dir.join(relative_path(device, &n));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{boot}-{segment}")).unwrap();
        p
    }

    fn counter(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(COUNTER)).unwrap()
    }

    #[test]
    fn counter_grows_past_9999_and_sorts_after_it() {
        let dir = temp_dir("wrap");
        std::fs::write(dir.join(COUNTER), "9999\n").unwrap();
        let old = make(&dir, "cam", 9999, 1, None);
        let dated = make(&dir, "cam", 9999, 2, Some(1_795_896_916));
        assert_eq!(next_boot(&dir, "cam").unwrap(), 10000);
        assert_eq!(counter(&dir), "10000\n");
        assert!(!dir.join(format!("{COUNTER}.tmp")).exists());
        let new = make(&dir, "cam", 10000, 1, None);
        assert!(new.ends_with("unsynced/cam_unsynced_10000-000001.mp4"));
        // By name, "cam_unsynced_10000" comes before "cam_unsynced_9999"; by number it is newer.
        let order: Vec<_> = retention::scan(&dir, "cam")
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(order, vec![old, dated, new]);
        assert_eq!(next_boot(&dir, "cam").unwrap(), 10001);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_counter_is_recovered_from_the_card() {
        let dir = temp_dir("corrupt");
        std::fs::write(dir.join(COUNTER), "garbage").unwrap();
        make(&dir, "cam", 41, 3, None);
        make(&dir, "cam", 40, 9, Some(1_795_896_916));
        // Another device's higher numbers are not ours.
        make(&dir, "other", 900, 1, None);
        assert_eq!(next_boot(&dir, "cam").unwrap(), 42);
        assert_eq!(counter(&dir), "42\n");
        assert_eq!(next_boot(&dir, "cam").unwrap(), 43);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_or_missing_counter_continues_after_the_card() {
        let dir = temp_dir("missing");
        make(&dir, "cam", 7, 1, Some(1_795_896_916));
        make(&dir, "cam", 12, 1, None);
        assert_eq!(next_boot(&dir, "cam").unwrap(), 13);
        std::fs::write(dir.join(COUNTER), "").unwrap();
        assert_eq!(next_boot(&dir, "cam").unwrap(), 13);
        // A counter behind the card (restored from an old copy) is overruled by the card.
        std::fs::write(dir.join(COUNTER), "3\n").unwrap();
        assert_eq!(next_boot(&dir, "cam").unwrap(), 13);
        // One ahead of the card (footage deleted) is kept.
        std::fs::write(dir.join(COUNTER), "20\n").unwrap();
        assert_eq!(next_boot(&dir, "cam").unwrap(), 21);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_directory_starts_at_1() {
        let dir = temp_dir("empty");
        assert_eq!(next_boot(&dir, "cam").unwrap(), 1);
        assert_eq!(counter(&dir), "1\n");
        assert_eq!(next_boot(&dir, "cam").unwrap(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn running_out_of_numbers_is_an_error_not_a_wrap() {
        let dir = temp_dir("overflow");
        std::fs::write(dir.join(COUNTER), format!("{}\n", u32::MAX)).unwrap();
        let e = next_boot(&dir, "cam").unwrap_err().to_string();
        assert!(e.contains("4294967295"), "{e}");
        assert_eq!(counter(&dir), format!("{}\n", u32::MAX));
        // The same from a file on the card.
        std::fs::write(dir.join(COUNTER), "1\n").unwrap();
        make(&dir, "cam", u32::MAX, 1, None);
        assert!(next_boot(&dir, "cam").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn shared(dir: &Path, boot: u32) -> (Shared, mpsc::Receiver<Option<PathBuf>>) {
        let (tx, rx) = mpsc::channel();
        let s = Shared {
            device: "cam".into(),
            dir: dir.to_path_buf(),
            boot: AtomicU32::new(boot),
            next_segment: AtomicU32::new(1),
            current: Mutex::new(None),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            files: AtomicU64::new(0),
            retention: tx,
            index: crate::recording::index::Index::new(),
        };
        (s, rx)
    }

    /// Every name `open_segment` could pick for `segments` of boot 5 in the seconds around now,
    /// created with known contents.
    fn occupy(dir: &Path, segments: std::ops::RangeInclusive<u32>) -> Vec<(PathBuf, Vec<u8>)> {
        let now = naming::wall_clock();
        let starts: Vec<Option<u64>> = match now {
            Some(t) => (t - 2..=t + 5).map(Some).collect(),
            None => vec![None],
        };
        let mut out = Vec::new();
        for start in starts {
            for seg in segments.clone() {
                let p = make(dir, "cam", 5, seg, start);
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    #[test]
    fn a_segment_never_takes_the_name_of_an_existing_file() {
        let dir = temp_dir("taken");
        let taken = occupy(&dir, 1..=3);
        let (s, _rx) = shared(&dir, 5);
        let p = s.open_segment(Duration::ZERO);
        let name = naming::parse("cam", p.file_name().unwrap().to_str().unwrap()).unwrap();
        assert_eq!(
            name.id,
            SegmentId {
                boot: 5,
                segment: 4
            },
            "{}",
            p.display()
        );
        assert!(!p.exists());
        let p = s.open_segment(Duration::ZERO);
        assert!(
            p.to_string_lossy().ends_with("_0005-000005.mp4"),
            "{}",
            p.display()
        );
        for (p, bytes) in taken {
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "{}", p.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_free_name_gives_one_that_cannot_be_written() {
        let dir = temp_dir("full");
        let taken = occupy(&dir, 1..=naming::NAME_TRIES);
        let (s, _rx) = shared(&dir, 5);
        let p = s.open_segment(Duration::ZERO);
        assert_eq!(p, PathBuf::new());
        assert!(s.current.lock().unwrap().is_none());
        // The next file starts after the names tried.
        let p = s.open_segment(Duration::ZERO);
        let name = naming::parse("cam", p.file_name().unwrap().to_str().unwrap()).unwrap();
        assert_eq!(name.id.segment, naming::NAME_TRIES + 1);
        for (p, bytes) in taken {
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "{}", p.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
