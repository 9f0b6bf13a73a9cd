//! A budget of log lines: at most so many per window of time, the rest counted and summed
//! up in one line when the next window opens, so that a flood of bad clients cannot flood
//! the log (or the disk behind it).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// At most `per_window` lines per `window`; see [`Window::admit`].
#[derive(Debug)]
pub(crate) struct LogBudget {
    window: Duration,
    state: Mutex<Window>,
}

/// The current window of a [`LogBudget`].
#[derive(Debug)]
pub(crate) struct Window {
    per_window: u32,
    length: Duration,
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    pub(crate) fn new(per_window: u32, window: Duration) -> Self {
        LogBudget {
            window,
            state: Mutex::new(Window {
                per_window,
                length: window,
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// The length of a window.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// The current window, to [`Window::admit`] a line.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Window>, ()> {
        self.state.lock().map_err(|_| ())
    }
}

impl Window {
    /// Whether to log a line now; and the lines left unlogged in the window that just
    /// ended, if one did and some were.
    pub(crate) fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped = 0;
        if now.saturating_duration_since(self.start) >= self.length {
            dropped = std::mem::take(&mut self.suppressed);
            self.start = now;
            self.logged = 0;
        }
        if self.logged < self.per_window {
            self.logged += 1;
            (true, dropped)
        } else {
            self.suppressed += 1;
            (false, dropped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_budget_are_counted_and_reported_once() {
        let budget = LogBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut w = budget.lock().unwrap();
        assert_eq!(w.admit(t0), (true, 0));
        assert_eq!(w.admit(t0), (true, 0));
        assert_eq!(w.admit(t0), (false, 0));
        assert_eq!(w.admit(t0 + Duration::from_secs(1)), (false, 0));
        let next = t0 + Duration::from_secs(10);
        assert_eq!(w.admit(next), (true, 2));
        assert_eq!(w.admit(next), (true, 0));
    }
}
