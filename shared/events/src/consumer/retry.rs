//! The retry policy: one attempt budget and one backoff per consumer.

use std::time::Duration;

/// How often and how patiently a failing event is retried.
///
/// There is exactly one budget: `max_attempts` counts every delivery of the
/// event, as the broker counts them where it can (JetStream's delivery
/// count), so in-process retries never multiply with broker redeliveries.
///
/// ```
/// use std::time::Duration;
/// use events::consumer::RetryPolicy;
///
/// let policy = RetryPolicy::exponential()
///     .max_attempts(5)
///     .initial_delay(Duration::from_millis(200))
///     .max_delay(Duration::from_secs(30));
/// assert_eq!(policy.get_max_attempts(), 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: bool,
}

impl RetryPolicy {
    /// Exponential backoff with full jitter: 5 attempts, 100 ms doubling up
    /// to 30 s.
    pub fn exponential() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
        }
    }

    /// No retries: the first failure dead-letters the event.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::exponential()
        }
    }

    /// Total attempts, the first one included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The delay before the second attempt.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest delay between attempts.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The factor the delay grows by per attempt (at least 1).
    pub fn multiplier(mut self, factor: f64) -> Self {
        self.multiplier = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Whether delays are randomized (between half and all of the computed
    /// delay), so that failing consumers do not retry in lockstep.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Total attempts allowed.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether attempt `attempt` (1-based) may be followed by another.
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay after failed attempt `attempt` (1-based), before jitter is
    /// applied: `initial * multiplier^(attempt-1)`, capped at `max_delay`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay to wait after failed attempt `attempt`: the base delay, with
    /// jitter if enabled. Never shorter than half the base delay.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        if !self.jitter || base.is_zero() {
            return base;
        }
        // Half fixed, half random: a floor the tests (and users) can rely on.
        let random = (uuid::Uuid::now_v7().as_u128() & 0xFFFF) as f64 / 65_535.0;
        base / 2 + base.mul_f64(0.5 * random)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::exponential()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = RetryPolicy::exponential()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(false);
        let delays: Vec<_> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_base_delay() {
        let p = RetryPolicy::exponential().initial_delay(Duration::from_millis(400));
        for attempt in 1..5 {
            let base = p.base_delay(attempt);
            for _ in 0..50 {
                let d = p.delay(attempt);
                assert!(d >= base / 2 && d <= base, "{d:?} vs {base:?}");
            }
        }
    }

    #[test]
    fn the_attempt_budget_counts_the_first_attempt() {
        let p = RetryPolicy::exponential().max_attempts(3);
        assert!(p.allows_another(1));
        assert!(p.allows_another(2));
        assert!(!p.allows_another(3));
        assert!(!RetryPolicy::none().allows_another(1));
        assert_eq!(
            RetryPolicy::exponential()
                .max_attempts(0)
                .get_max_attempts(),
            1
        );
    }
}
