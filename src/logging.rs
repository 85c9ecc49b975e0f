//! A small logger for stderr. Under systemd (JOURNAL_STREAM set) each line starts with a
//! syslog priority prefix (`<3>`) that journald turns into the entry's priority, so
//! `journalctl -p warning -u camstream` works without a journald client library.
//!
//! The last warnings and errors are also kept in memory, with their times, for the device's
//! status (`status.rs`), and counted for the metrics.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogLevel;

struct StderrLogger {
    journal: bool,
}

fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if record.level() <= Level::Warn {
            remember(record);
        }
        let line = if self.journal {
            format!("<{}>{}\n", priority(record.level()), record.args())
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!(
                "{}.{:03} {:5} {}\n",
                now.as_secs(),
                now.subsec_millis(),
                record.level(),
                record.args()
            )
        };
        // One write per line so that lines from several threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The last warnings and errors, for the device's status.
static RECENT: Mutex<VecDeque<(SystemTime, Level, String)>> = Mutex::new(VecDeque::new());
/// How many are kept.
const RECENT_MAX: usize = 10;
/// Longest message kept, in bytes.
const RECENT_BYTES: usize = 1024;
static WARNINGS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

fn remember(record: &Record) {
    let counter = if record.level() == Level::Error {
        &ERRORS
    } else {
        &WARNINGS
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let mut message = record.args().to_string();
    if message.len() > RECENT_BYTES {
        let mut cut = RECENT_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    if let Ok(mut recent) = RECENT.lock() {
        if recent.len() == RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back((SystemTime::now(), record.level(), message));
    }
}

/// The last warnings and errors logged (at most 10), oldest first, with their times.
pub fn recent_problems() -> Vec<(SystemTime, Level, String)> {
    RECENT
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

/// (warnings, errors) logged since start.
pub fn problem_counts() -> (u64, u64) {
    (
        WARNINGS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed),
    )
}

pub fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    }
}

/// Installs the logger once; later calls only change the level.
pub fn init(level: LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = log::set_boxed_logger(Box::new(StderrLogger { journal }));
    log::set_max_level(level);
}
