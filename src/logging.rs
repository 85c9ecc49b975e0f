//! A small logger for stderr. Under systemd (JOURNAL_STREAM set) each line starts with a
//! syslog priority prefix (`<3>`) that journald turns into the entry's priority, so
//! `journalctl -p warning -u camstream` works without a journald client library.

use std::io::Write;

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
