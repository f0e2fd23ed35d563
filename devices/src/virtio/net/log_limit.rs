//! Rate limiting for warnings a guest can trigger at will (malformed chains, frames
//! that do not fit), so a misbehaving driver cannot flood the VMM's log.

use std::time::{Duration, Instant};

/// Lets one message through per interval and counts the ones held back.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    interval: Duration,
    next_allowed: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_allowed: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a message may be logged now, `n` being how many were held back
    /// since the last one; `None` when this one should be dropped.
    pub(crate) fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next_allowed.is_some_and(|next| now < next) {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.next_allowed = now.checked_add(self.interval);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The usual interval for guest-triggered warnings.
pub(crate) const GUEST_WARNING_INTERVAL: Duration = Duration::from_secs(5);

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(GUEST_WARNING_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_interval_then_reports_what_it_held_back() {
        let mut limiter = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.check(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.check(), Some(2));
        assert_eq!(limiter.check(), None);
    }
}
