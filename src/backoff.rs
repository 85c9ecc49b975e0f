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

/// One retry schedule for one part of the graph: at most one attempt is pending, whatever asks
/// for it (its own failures, viewers' heartbeats, a second error from the same failure). Lives
/// on the main-loop thread.
pub struct Retry {
    backoff: Backoff,
    pending: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Retry {
    pub fn new(max_seconds: i64) -> Self {
        Self {
            backoff: Backoff::new(max_seconds),
            pending: Default::default(),
        }
    }

    /// The part started: a run that lasts resets the back-off.
    pub fn started(&mut self) {
        self.backoff.started();
    }

    /// Whether an attempt is already scheduled: anyone else wanting one waits for it.
    pub fn is_pending(&self) -> bool {
        self.pending.get()
    }

    /// Schedules `attempt` after the next back-off delay and returns the delay, or None when
    /// an attempt is already scheduled (which then stands for this one too).
    pub fn schedule(&mut self, attempt: impl FnOnce() + 'static) -> Option<Duration> {
        if self.pending.replace(true) {
            return None;
        }
        let delay = self.backoff.failed();
        let pending = self.pending.clone();
        glib::timeout_add_local_once(delay, move || {
            pending.set(false);
            attempt();
        });
        Some(delay)
    }
}
