//! Fair admission of tenants' writes: each tenant has its own token bucket (GCRA), so one
//! tenant's flood waits in its own line, never in front of another tenant's requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a write waits for its turn before it is refused.
const MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(crate) struct Admission {
    /// Per tenant: the theoretical arrival time of its next write.
    next: Mutex<HashMap<String, Instant>>,
}

impl Admission {
    /// When `tenant`'s next write may go, reserving that turn: `Ok(wait)` (zero within the
    /// burst), or `Err` if the wait would exceed [`MAX_WAIT`].
    fn reserve(&self, tenant: &str, rate: u32, now: Instant) -> Result<Duration, Duration> {
        let rate = rate.max(1);
        let interval = Duration::from_secs(1) / rate;
        // A burst of one second's worth passes at once (GCRA's tolerance: one less).
        let burst = interval * (rate - 1);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if next.len() > 10_000 {
            next.retain(|_, t| *t > now);
        }
        let tat = next.get(tenant).copied().unwrap_or(now).max(now);
        let allowed_at = tat.checked_sub(burst).unwrap_or(now);
        let wait = allowed_at.saturating_duration_since(now);
        if wait > MAX_WAIT {
            return Err(wait);
        }
        next.insert(tenant.to_string(), tat + interval);
        Ok(wait)
    }

    /// Waits for `tenant`'s turn to write, at most `rate` writes per second sustained.
    pub async fn admit(&self, tenant: &str, rate: u32) -> Result<(), String> {
        match self.reserve(tenant, rate, Instant::now()) {
            Ok(wait) if wait.is_zero() => Ok(()),
            Ok(wait) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(wait) => Err(format!(
                "tenant {tenant} is over its rate of {rate} writes per second (the next turn is {:.1}s away); slow down and retry",
                wait.as_secs_f64()
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_tenant_waits_in_its_own_line() {
        let a = Admission::default();
        let now = Instant::now();
        // A second's burst passes at once.
        for _ in 0..10 {
            assert_eq!(a.reserve("evil", 10, now), Ok(Duration::ZERO));
        }
        // Then one per 100 ms.
        assert_eq!(a.reserve("evil", 10, now), Ok(Duration::from_millis(100)));
        assert_eq!(a.reserve("evil", 10, now), Ok(Duration::from_millis(200)));
        // Another tenant is not behind it.
        assert_eq!(a.reserve("acme", 10, now), Ok(Duration::ZERO));
        // Past five seconds of backlog, refused (and the refused turn is not taken).
        let mut last = Ok(Duration::ZERO);
        for _ in 0..100 {
            last = a.reserve("evil", 10, now);
            if last.is_err() {
                break;
            }
        }
        assert!(last.is_err());
        assert!(a.reserve("evil", 10, now).is_err());
        // Later, turns come back.
        assert!(a.reserve("evil", 10, now + Duration::from_secs(7)).is_ok());
    }
}
