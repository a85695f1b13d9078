//! Per-task CPU accounting from the thread CPU clock: every poll of a task's future is timed, so
//! the task is charged for what its wasm burns *and* for what host calls made on its behalf burn
//! (a zero-timeout poll loop, huge random or stdin reads), which fuel alone would miss.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

/// `entered_at` when the task's future is not being polled.
const OUTSIDE: u64 = u64::MAX;

/// CPU nanoseconds a task has used. Shared between the poll wrapper ([`CpuMeter::meter`]) and
/// the epoch callback, which reads it mid-poll; both run on the polling thread, so relaxed
/// atomics suffice (the `Arc` only exists because the store data must be `Send`).
#[derive(Debug)]
pub(crate) struct CpuMeter {
    spent_ns: AtomicU64,
    entered_at: AtomicU64,
}

/// The calling thread's CPU time in nanoseconds, or 0 where the clock is unavailable (then
/// nothing is charged rather than the task failing).
fn thread_ns() -> u64 {
    cpu_time::ThreadTime::try_now()
        .map(|t| u64::try_from(t.as_duration().as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl CpuMeter {
    pub(crate) fn new() -> Arc<CpuMeter> {
        Arc::new(CpuMeter {
            spent_ns: AtomicU64::new(0),
            entered_at: AtomicU64::new(OUTSIDE),
        })
    }

    /// CPU used so far, including the poll in progress if called from inside it.
    pub(crate) fn spent_ns(&self) -> u64 {
        let spent = self.spent_ns.load(Ordering::Relaxed);
        match self.entered_at.load(Ordering::Relaxed) {
            OUTSIDE => spent,
            at => spent.saturating_add(thread_ns().saturating_sub(at)),
        }
    }

    /// Runs `fut`, charging this meter with the thread CPU time of each of its polls. Work the
    /// future hands to other threads (wasmtime-wasi's blocking file I/O) is not charged.
    pub(crate) async fn meter<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| {
            self.entered_at.store(thread_ns(), Ordering::Relaxed);
            let result = fut.as_mut().poll(cx);
            let at = self.entered_at.swap(OUTSIDE, Ordering::Relaxed);
            if at != OUTSIDE {
                let used = thread_ns().saturating_sub(at);
                self.spent_ns.fetch_add(used, Ordering::Relaxed);
            }
            match result {
                Poll::Ready(v) => Poll::Ready(v),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn burn(d: Duration) {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < d {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[tokio::test]
    async fn polls_are_charged_and_sleeps_are_not() {
        let meter = CpuMeter::new();
        let m = meter.clone();
        meter
            .meter(async move {
                burn(Duration::from_millis(50));
                let mid = m.spent_ns();
                assert!(mid >= 30_000_000, "mid-poll reading {mid}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                burn(Duration::from_millis(50));
            })
            .await;
        let spent = meter.spent_ns();
        // 100 ms of burning; the 200 ms sleep costs nothing. Generous bounds: the machine is
        // shared, and the thread may be descheduled while burning (which the clock excludes).
        assert!(spent >= 60_000_000, "{spent}");
        assert!(spent < 200_000_000, "{spent}");
    }
}
