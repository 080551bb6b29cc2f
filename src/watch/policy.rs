//! When a capture may happen: at most so many per hour per target, and none during the
//! cool-down after the last one. A capture asked for by hand is never held back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::Policy;

const HOUR: Duration = Duration::from_secs(3600);

/// The captures of one target over the last hour.
#[derive(Debug, Default)]
pub struct Limiter {
    times: VecDeque<Instant>,
}

impl Limiter {
    /// Whether a capture may start now; Err says why not.
    pub fn check(&mut self, now: Instant, p: &Policy) -> Result<(), String> {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            self.times.pop_front();
        }
        if let Some(last) = self.times.back() {
            let since = now.saturating_duration_since(*last);
            if since < p.cooldown {
                return Err(format!(
                    "cool-down: the last capture was {:.0} s ago ({:.0} s to wait)",
                    since.as_secs_f64(),
                    (p.cooldown - since).as_secs_f64()
                ));
            }
        }
        if self.times.len() as u32 >= p.max_per_hour {
            return Err(format!(
                "rate limit: {} captures in the last hour (at most {})",
                self.times.len(),
                p.max_per_hour
            ));
        }
        Ok(())
    }

    /// Counts a capture made at `now`.
    pub fn record(&mut self, now: Instant) {
        self.times.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(per_hour: u32, cooldown: u64) -> Policy {
        Policy {
            budget: Duration::from_secs(60),
            sample_max_stop: Duration::from_millis(500),
            command_budget: Duration::from_secs(60),
            leave_stopped: false,
            max_per_hour: per_hour,
            cooldown: Duration::from_secs(cooldown),
            max_hit_stop: 0.1,
        }
    }

    #[test]
    fn cooldown_then_hourly_limit() {
        let p = policy(2, 600);
        let t0 = Instant::now();
        let mut l = Limiter::default();
        assert!(l.check(t0, &p).is_ok());
        l.record(t0);
        let e = l.check(t0 + Duration::from_secs(10), &p).unwrap_err();
        assert!(e.starts_with("cool-down"), "{e}");
        assert!(l.check(t0 + Duration::from_secs(600), &p).is_ok());
        l.record(t0 + Duration::from_secs(600));
        let e = l.check(t0 + Duration::from_secs(1300), &p).unwrap_err();
        assert!(e.starts_with("rate limit"), "{e}");
        // An hour after the first, one slot is free again.
        assert!(l.check(t0 + HOUR, &p).is_ok());
    }

    #[test]
    fn zero_per_hour_never_captures() {
        let mut l = Limiter::default();
        assert!(l.check(Instant::now(), &policy(0, 0)).is_err());
    }
}
