//! Token-bucket pacing, as a plain struct: the caller asks how long to wait.

use std::time::{Duration, Instant};

/// Allows `rate` events per second on average, with bursts of at most `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` > 0 events per second. The burst is 10 ms worth of events, at least 1.
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = (rate / 100.0).max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: 1.0,
            last: now,
        }
    }

    /// Takes one token if there is one; otherwise says how long until there is.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_paces_to_the_rate_after_the_first_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_ok());
        // Over 10 s of simulated time, exactly ~100 tokens are granted.
        let mut now = t0 + Duration::from_millis(100);
        let mut granted = 0;
        while now < t0 + Duration::from_secs(10) {
            match b.try_take(now) {
                Ok(()) => granted += 1,
                Err(w) => now += w,
            }
        }
        assert!((98..=100).contains(&granted), "{granted}");
    }

    #[test]
    fn idle_time_buys_at_most_a_small_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000.0, t0);
        let later = t0 + Duration::from_secs(60);
        let burst = (0..100).take_while(|_| b.try_take(later).is_ok()).count();
        assert_eq!(burst, 10);
    }
}
