//! Fair admission of tenants' requests: each tenant has its own token bucket (GCRA) per kind
//! of request (writes, reads, framework calls), so one tenant's flood waits in its own line,
//! never in front of another tenant's requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a request waits for its turn before it is refused.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// The kinds of request with a bucket of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Writes,
    Reads,
    FrameworkCalls,
}

impl Kind {
    /// The sustained rate per second operators set for this kind.
    fn rate(self, cfg: &crate::TenancyConfig) -> u32 {
        match self {
            Kind::Writes => cfg.tenant_write_rate,
            Kind::Reads => cfg.tenant_read_rate,
            Kind::FrameworkCalls => cfg.tenant_framework_call_rate,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Writes => "writes",
            Kind::Reads => "reads",
            Kind::FrameworkCalls => "framework calls",
        }
    }
}

#[derive(Default)]
pub(crate) struct Admission {
    /// Per tenant and kind: the theoretical arrival time of its next request.
    next: Mutex<HashMap<(Kind, String), Instant>>,
    /// Per tenant: its `logs -f` and `events -f` streams open now.
    follows: Arc<Mutex<HashMap<String, u32>>>,
}

/// One open `logs -f` or `events -f` stream of a tenant; dropping it gives the place back.
pub(crate) struct Follow {
    follows: Arc<Mutex<HashMap<String, u32>>>,
    tenant: String,
}

impl Drop for Follow {
    fn drop(&mut self) {
        let mut open = self.follows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl Admission {
    /// When `tenant`'s next request of `kind` may go, reserving that turn: `Ok(wait)` (zero
    /// within the burst), or `Err` if the wait would exceed [`MAX_WAIT`].
    fn reserve(
        &self,
        kind: Kind,
        tenant: &str,
        rate: u32,
        now: Instant,
    ) -> Result<Duration, Duration> {
        let rate = rate.max(1);
        let interval = Duration::from_secs(1) / rate;
        // A burst of one second's worth passes at once (GCRA's tolerance: one less).
        let burst = interval * (rate - 1);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if next.len() > 10_000 {
            next.retain(|_, t| *t > now);
        }
        let key = (kind, tenant.to_string());
        let tat = next.get(&key).copied().unwrap_or(now).max(now);
        let allowed_at = tat.checked_sub(burst).unwrap_or(now);
        let wait = allowed_at.saturating_duration_since(now);
        if wait > MAX_WAIT {
            return Err(wait);
        }
        next.insert(key, tat + interval);
        Ok(wait)
    }

    /// Waits for `who`'s tenant's turn at requests of `kind`, at the rate `cfg` sets;
    /// refused, saying so, when its line is more than [`MAX_WAIT`] long. Operators, agents
    /// and masters are not limited.
    pub async fn admit_caller(
        &self,
        cfg: &crate::TenancyConfig,
        who: &wasmos_net::Identity,
        kind: Kind,
    ) -> Result<(), String> {
        match crate::policy::tenant(who) {
            Some(tenant) => self.admit(kind, &tenant, kind.rate(cfg)).await,
            None => Ok(()),
        }
    }

    /// As [`Admission::admit_caller`], but waits however long the line, for a stream whose
    /// sender can be held back (a framework's calls): its flood only slows itself.
    pub async fn pace_caller(
        &self,
        cfg: &crate::TenancyConfig,
        who: &wasmos_net::Identity,
        kind: Kind,
    ) {
        while self.admit_caller(cfg, who, kind).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits for `tenant`'s turn, at most `rate` requests of `kind` per second sustained;
    /// refused, saying so, when its line is more than [`MAX_WAIT`] long.
    async fn admit(&self, kind: Kind, tenant: &str, rate: u32) -> Result<(), String> {
        match self.reserve(kind, tenant, rate, Instant::now()) {
            Ok(wait) if wait.is_zero() => Ok(()),
            Ok(wait) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(wait) => Err(format!(
                "tenant {tenant} is over its rate of {rate} {} per second (the next turn is {:.1}s away); slow down and retry",
                kind.noun(),
                wait.as_secs_f64()
            )),
        }
    }

    /// A place for one more `logs -f` stream of `tenant`, if it holds fewer than `limit`.
    pub fn follow(&self, tenant: &str, limit: u32) -> Result<Follow, String> {
        let mut open = self.follows.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(tenant.to_string()).or_default();
        if *n >= limit {
            return Err(format!(
                "tenant {tenant} already follows {limit} logs or event streams (`logs -f`, `events -f`), its limit; end one first"
            ));
        }
        *n += 1;
        Ok(Follow {
            follows: self.follows.clone(),
            tenant: tenant.to_string(),
        })
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
            assert_eq!(a.reserve(Kind::Writes, "evil", 10, now), Ok(Duration::ZERO));
        }
        // Then one per 100 ms.
        assert_eq!(
            a.reserve(Kind::Writes, "evil", 10, now),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            a.reserve(Kind::Writes, "evil", 10, now),
            Ok(Duration::from_millis(200))
        );
        // Nor are the same tenant's reads, nor another tenant.
        assert_eq!(a.reserve(Kind::Reads, "evil", 10, now), Ok(Duration::ZERO));
        assert_eq!(a.reserve(Kind::Writes, "acme", 10, now), Ok(Duration::ZERO));
        // Past five seconds of backlog, refused (and the refused turn is not taken).
        let mut last = Ok(Duration::ZERO);
        for _ in 0..100 {
            last = a.reserve(Kind::Writes, "evil", 10, now);
            if last.is_err() {
                break;
            }
        }
        assert!(last.is_err());
        assert!(a.reserve(Kind::Writes, "evil", 10, now).is_err());
        // Later, turns come back.
        assert!(
            a.reserve(Kind::Writes, "evil", 10, now + Duration::from_secs(7))
                .is_ok()
        );
    }

    #[test]
    fn follows_are_counted_per_tenant_and_given_back() {
        let a = Admission::default();
        let one = a.follow("evil", 2).unwrap();
        let _two = a.follow("evil", 2).unwrap();
        assert!(a.follow("evil", 2).err().unwrap().contains("its limit"));
        assert!(a.follow("acme", 2).is_ok());
        drop(one);
        assert!(a.follow("evil", 2).is_ok());
    }
}
