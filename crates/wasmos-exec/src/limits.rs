//! Per-task resource limits enforced from inside the store: the memory cap (a wasmtime
//! `ResourceLimiter`) and the CPU-share throttle (a token bucket of metered core time, consulted
//! on every epoch tick).

use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

/// Cores, tables and memories a component may create. Real command components built by
/// wit-component use a handful of each; these caps only stop pathological bundles from
/// allocating host structures without bound.
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;

/// What one table element costs the host: tables live outside linear memory, so without
/// counting them a task could allocate gigabytes of host memory through `table.grow`.
/// Wasmtime stores funcref and externref elements as one pointer each.
const TABLE_ELEMENT_BYTES: u64 = 8;

/// Caps the total size of all linear memories and tables of one store.
///
/// A refused grow fails inside the guest as WebAssembly specifies (`memory.grow` and
/// `table.grow` return -1; a too-large initial memory fails instantiation): a guest that copes
/// with it goes on. The refusal is remembered, so a task that then traps (as Rust's allocator
/// does on a failed allocation) ends with `memory_limit` rather than an unrelated trap.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: u64,
    /// Bytes currently allocated across all memories and tables; they never shrink within a
    /// store.
    total: u64,
    /// Set once a grow was refused because of `limit`: (the total it asked for, the limit).
    pub exceeded: Option<(u64, u64)>,
    /// A burstable task's request and the agent's pool it borrows from past it.
    burst: Option<crate::Burst>,
    /// Borrowed from the pool so far; given back when the store is dropped.
    borrowed: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit,
            total: 0,
            exceeded: None,
            burst: None,
            borrowed: 0,
        }
    }

    /// Memory past `burst.request_bytes` is granted only while `burst.pool` can lend it.
    pub(crate) fn with_burst(limit: u64, burst: Option<crate::Burst>) -> Self {
        MemoryLimiter {
            burst,
            ..MemoryLimiter::new(limit)
        }
    }

    /// The most memory the store held: memories and tables never shrink, so this is the
    /// total.
    pub(crate) fn peak(&self) -> u64 {
        self.total
    }

    fn grow(&mut self, by: u64) -> bool {
        let wanted = self.total.saturating_add(by);
        if wanted > self.limit {
            self.exceeded = Some((wanted, self.limit));
            return false;
        }
        if let Some(burst) = &self.burst {
            let need = wanted
                .saturating_sub(burst.request_bytes)
                .saturating_sub(self.borrowed);
            if need > 0 {
                if !burst.pool.try_borrow(need) {
                    // The agent has nothing more to lend: as far as the task is concerned, its
                    // limit is what it holds.
                    self.exceeded = Some((wanted, self.total.max(burst.request_bytes)));
                    return false;
                }
                self.borrowed += need;
            }
        }
        self.total = wanted;
        true
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(burst) = &self.burst
            && self.borrowed > 0
        {
            burst.pool.release(self.borrowed);
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // The guest's own declared maximum: an ordinary failed grow, not our limit.
            return Ok(false);
        }
        Ok(self.grow(desired.saturating_sub(current) as u64))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the pooling allocator's per-table cap the refusal is the platform's, like
            // the memory limit; below it, it is the guest's own declared maximum.
            if desired > crate::artifact::TABLE_ELEMENTS {
                self.exceeded = Some((
                    (desired as u64).saturating_mul(TABLE_ELEMENT_BYTES),
                    self.limit,
                ));
            }
            return Ok(false);
        }
        let elements = desired.saturating_sub(current) as u64;
        Ok(self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// How much CPU time the bucket may bank while the guest is idle (blocked in a host call): enough
/// to absorb tick jitter, too little to let an idle task later burst far above its share.
const BURST: Duration = Duration::from_millis(100);

/// A single pause is capped so that the bucket is re-evaluated regularly; the task stays
/// cancellable during a pause either way.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Keeps a task's consumption (in whatever unit it is metered, `units_per_core_second` of them
/// making one core-second) at or below its share, averaged over time.
#[derive(Debug)]
pub(crate) struct Throttle {
    rate: f64,
    burst: f64,
    /// Units the task may still burn without pausing; negative when it is ahead of its share.
    tokens: f64,
    last_at: Instant,
    last_consumed: u64,
}

impl Throttle {
    /// `None` when the share is a whole core or more: a guest runs on one thread, so throttling
    /// could only slow it below what it reserved, through calibration error.
    pub(crate) fn new(units_per_core_second: u64, cpu_millis: u64, now: Instant) -> Option<Self> {
        let millis = cpu_millis.max(1);
        if millis >= 1000 {
            return None;
        }
        let rate = units_per_core_second as f64 * millis as f64 / 1000.0;
        Some(Throttle {
            rate,
            burst: rate * BURST.as_secs_f64(),
            tokens: 0.0,
            last_at: now,
            last_consumed: 0,
        })
    }

    /// Accounts for the units `consumed` so far (a running total) at `now`; returns how long the task
    /// must pause to get back within its share.
    pub(crate) fn on_tick(&mut self, consumed: u64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last_at).as_secs_f64();
        self.last_at = now;
        let burned = consumed.saturating_sub(self.last_consumed) as f64;
        self.last_consumed = consumed;
        self.tokens = (self.tokens + self.rate * elapsed).min(self.burst) - burned;
        if self.tokens >= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(-self.tokens / self.rate).min(MAX_PAUSE))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn memory_is_capped_in_total_across_memories_and_tables() {
        let mut l = MemoryLimiter::new(3 * MIB as u64);
        assert!(l.memory_growing(0, 2 * MIB, None).unwrap());
        assert!(l.memory_growing(0, MIB / 2, None).unwrap());
        assert!(l.exceeded.is_none());
        // 64Ki table elements are 512 KiB of host memory: exactly what is left.
        assert!(l.table_growing(0, 65536, None).unwrap());
        assert_eq!(l.peak(), 3 * MIB as u64);
        assert!(!l.table_growing(65536, 65537, None).unwrap());
        assert!(!l.memory_growing(MIB, 2 * MIB, None).unwrap());
        assert_eq!(l.exceeded, Some((4 * MIB as u64, 3 * MIB as u64)));
        // Refused grows do not count.
        assert_eq!(l.peak(), 3 * MIB as u64);
    }

    #[test]
    fn the_guests_own_maximum_is_a_plain_refusal() {
        let mut l = MemoryLimiter::new(100 * MIB as u64);
        assert!(!l.memory_growing(MIB, 2 * MIB, Some(MIB)).unwrap());
        assert!(l.exceeded.is_none());
    }

    #[test]
    fn whole_cores_are_not_throttled() {
        assert!(Throttle::new(1_000_000, 1000, Instant::now()).is_none());
        assert!(Throttle::new(1_000_000, 4000, Instant::now()).is_none());
        assert!(Throttle::new(1_000_000, 0, Instant::now()).is_some());
    }

    #[test]
    fn a_task_ahead_of_its_share_pauses_for_the_excess() {
        let t0 = Instant::now();
        // Half of a 1000-fuel/s core: 500 fuel/s.
        let mut t = Throttle::new(1000, 500, t0).unwrap();
        // 100 ms at full speed burns 100 fuel but earns only 50: pause 100 ms to catch up.
        let pause = t.on_tick(100, t0 + Duration::from_millis(100)).unwrap();
        assert!((pause.as_secs_f64() - 0.1).abs() < 1e-6, "{pause:?}");
        // After that pause, running at half speed keeps it even.
        assert_eq!(t.on_tick(150, t0 + Duration::from_millis(300)), None);
    }

    #[test]
    fn idle_time_banks_only_a_small_burst() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1000, 500, t0).unwrap();
        // Ten idle seconds earn at most 100 ms worth (50 fuel), so burning 200 fuel right after
        // must pause for the 150 fuel beyond that: 300 ms.
        assert_eq!(t.on_tick(0, t0 + Duration::from_secs(10)), None);
        let pause = t
            .on_tick(200, t0 + Duration::from_secs(10) + Duration::from_nanos(1))
            .unwrap();
        assert!((pause.as_secs_f64() - 0.3).abs() < 1e-3, "{pause:?}");
    }
}
