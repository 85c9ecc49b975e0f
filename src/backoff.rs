//! Retry pacing for parts of the graph that fail and come back (camera, display, recording).

use std::time::{Duration, Instant};

/// Exponential backoff: 1 s, 2 s, 4 s… capped; reset after a run that lasted a while.
pub struct Backoff {
    next: Duration,
    max: Duration,
    started: Option<Instant>,
}

impl Backoff {
    pub fn new(max_seconds: i64) -> Self {
        Self {
            next: Duration::from_secs(1),
            max: Duration::from_secs(max_seconds.max(1) as u64),
            started: None,
        }
    }
    pub fn started(&mut self) {
        self.started = Some(Instant::now());
    }
    /// The delay before the next attempt.
    pub fn failed(&mut self) -> Duration {
        if self
            .started
            .take()
            .is_some_and(|t| t.elapsed() > Duration::from_secs(30))
        {
            self.next = Duration::from_secs(1);
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}
