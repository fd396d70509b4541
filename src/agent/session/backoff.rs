//! Exponential backoff with jitter.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The ceiling for the next wait: base·2^attempt, capped.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait: uniformly in [ceiling/2, ceiling], so a classroom that
    /// lost its server at the same instant does not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let ceil = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceil / 2;
        let span = (ceil - half).as_millis() as u64;
        half + Duration::from_millis(fastrand::u64(0..=span))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut last_ceiling = Duration::ZERO;
        for _ in 0..20 {
            let c = b.ceiling();
            assert!(c >= last_ceiling);
            let d = b.next_delay();
            assert!(d <= c && d >= c / 2, "{d:?} vs {c:?}");
            last_ceiling = c;
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(250));
    }
}
