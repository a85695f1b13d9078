//! Network bandwidth limits in the WASI sockets layer: a token bucket per direction per task,
//! shared by all of the task's TCP streams, wrapped around the streams `finish-connect` returns.
//!
//! wasmtime-wasi has no hook for socket I/O, so the runner shadows one function of its linker,
//! `wasi:sockets/tcp.[method]tcp-socket.finish-connect`: it calls wasmtime-wasi's own
//! implementation, then swaps the two streams in the resource table for limited ones. Every
//! other socket call is wasmtime-wasi's, unchanged. Tasks cannot listen or accept (see
//! `net.rs`), so connected streams are the only ones a task has.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode;
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
use wasmtime_wasi::p2::pipe::{ClosedInputStream, ClosedOutputStream};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, InputStream, OutputStream, Pollable, StreamError,
    StreamResult, TcpSocket,
};
use wasmtime_wasi::sockets::WasiSocketsView;

/// The instance wasmtime-wasi 48 links `wasi:sockets/tcp` under; guests importing any 0.2.x
/// resolve to it. A wasmtime upgrade that changes it makes the bandwidth test fail, not pass.
const TCP_INSTANCE: &str = "wasi:sockets/tcp@0.2.12";

/// A bucket holds at most this long at the full rate: short bursts pass, and over seconds the
/// rate is exact to within this fraction.
const BURST: Duration = Duration::from_millis(100);

/// But never less than one Ethernet frame, so a tiny rate still moves whole packets.
const MIN_BURST_BYTES: f64 = 1500.0;

/// A blocked stream wakes when this long's worth of tokens has accumulated, not at the first
/// byte: fewer wake-ups and larger writes at high rates.
const WAKE_AFTER: Duration = Duration::from_millis(5);

/// Tokens (bytes) earned at `rate` per second up to a cap. Tokens may go negative: streams
/// sharing a bucket can each be told the same tokens are available, and whatever they take
/// beyond that is a debt the next wait pays, so the long-run rate holds.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second (at least 1).
    pub(crate) fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1) as f64;
        let capacity = (rate * BURST.as_secs_f64()).max(MIN_BURST_BYTES);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
    }

    /// Whole bytes that may pass now.
    pub(crate) fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0) as usize
    }

    pub(crate) fn take(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// How long until enough has accumulated to be worth waking for; zero when it already has.
    pub(crate) fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let wanted = (self.rate * WAKE_AFTER.as_secs_f64()).clamp(1.0, self.capacity);
        if self.tokens >= wanted {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((wanted - self.tokens) / self.rate)
    }
}

/// One task's limits: each direction has its own bucket at the same rate.
#[derive(Debug, Clone)]
pub(crate) struct NetLimit {
    ingress: Shared,
    egress: Shared,
}

type Shared = Arc<Mutex<Bucket>>;

impl NetLimit {
    pub(crate) fn new(bytes_per_second: u64) -> NetLimit {
        let now = Instant::now();
        let bucket = || Arc::new(Mutex::new(Bucket::new(bytes_per_second, now)));
        NetLimit {
            ingress: bucket(),
            egress: bucket(),
        }
    }
}

fn with<R>(bucket: &Shared, f: impl FnOnce(&mut Bucket, Instant) -> R) -> R {
    // A poisoned bucket is still a valid bucket: its fields are plain numbers.
    let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut b, Instant::now())
}

/// Sleeps until `bucket` has tokens worth waking for.
async fn tokens(bucket: &Shared) {
    loop {
        let wait = with(bucket, |b, now| b.wait(now));
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

struct LimitedInput {
    inner: DynInputStream,
    bucket: Shared,
}

#[wasmtime_wasi::async_trait]
impl Pollable for LimitedInput {
    async fn ready(&mut self) {
        tokens(&self.bucket).await;
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for LimitedInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let allowed = with(&self.bucket, |b, now| b.available(now)).min(size);
        if allowed == 0 && size > 0 {
            // Nothing may pass yet: an empty read, as when no data has arrived. The guest then
            // polls, and `ready` waits for tokens.
            return Ok(Bytes::new());
        }
        let data = self.inner.read(allowed)?;
        with(&self.bucket, |b, now| b.take(data.len(), now));
        Ok(data)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

struct LimitedOutput {
    inner: DynOutputStream,
    bucket: Shared,
    /// What the last `check_write` allowed: the inner stream's own permit is larger, and a
    /// guest that wrote past ours would escape the limit.
    permit: usize,
}

#[wasmtime_wasi::async_trait]
impl Pollable for LimitedOutput {
    async fn ready(&mut self) {
        tokens(&self.bucket).await;
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LimitedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len();
        if len > self.permit {
            return Err(StreamError::trap(
                "write exceeded the permit check-write gave (the task's network bandwidth)",
            ));
        }
        self.inner.write(bytes)?;
        self.permit -= len;
        with(&self.bucket, |b, now| b.take(len, now));
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let permit = self.inner.check_write()?;
        self.permit = permit.min(with(&self.bucket, |b, now| b.available(now)));
        Ok(self.permit)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

/// Store data that may carry a bandwidth limit.
pub(crate) trait HasNetLimit: WasiView {
    fn net_limit(&self) -> Option<&NetLimit>;
}

/// Replaces `finish-connect` in `linker` (which already has wasmtime-wasi's) with one that
/// limits the streams of tasks that have a limit.
pub(crate) fn add_to_linker<T: HasNetLimit + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    const FUNC: &str = "[method]tcp-socket.finish-connect";
    // Defining it without shadowing must fail, because wasmtime-wasi's is there: a wasmtime
    // whose WASI moved to another name would otherwise leave tasks the unlimited original.
    if linker
        .instance(TCP_INSTANCE)?
        .func_wrap(FUNC, finish_connect::<T>)
        .is_ok()
    {
        return Err(wasmtime::format_err!(
            "wasmtime-wasi does not link {FUNC} under {TCP_INSTANCE}: the bandwidth limit cannot apply"
        ));
    }
    linker.allow_shadowing(true);
    let defined = linker
        .instance(TCP_INSTANCE)?
        .func_wrap(FUNC, finish_connect::<T>);
    linker.allow_shadowing(false);
    defined
}

type Connected = (Resource<DynInputStream>, Resource<DynOutputStream>);

/// wasmtime-wasi's `finish-connect`, then the two streams swapped for limited ones.
fn finish_connect<T: HasNetLimit>(
    mut store: StoreContextMut<'_, T>,
    (socket,): (Resource<TcpSocket>,),
) -> wasmtime::Result<(Result<Connected, ErrorCode>,)> {
    let data = store.data_mut();
    let streams = match HostTcpSocket::finish_connect(&mut data.sockets(), socket) {
        Ok(streams) => streams,
        Err(e) => return Ok((Err(e.downcast()?),)),
    };
    if let Some(limit) = data.net_limit().cloned() {
        let table = &mut data.ctx().table;
        let input = table.get_mut(&streams.0)?;
        let inner = std::mem::replace(input, Box::new(ClosedInputStream));
        *input = Box::new(LimitedInput {
            inner,
            bucket: limit.ingress,
        });
        let output = table.get_mut(&streams.1)?;
        let inner = std::mem::replace(output, Box::new(ClosedOutputStream));
        *output = Box::new(LimitedOutput {
            inner,
            bucket: limit.egress,
            permit: 0,
        });
    }
    Ok((Ok(streams),))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100_000, t0);
        // 100 ms at 100 kB/s.
        assert_eq!(b.available(t0), 10_000);
        b.take(10_000, t0);
        assert_eq!(b.available(t0), 0);
        assert!(b.wait(t0) > Duration::ZERO);
        let later = t0 + Duration::from_millis(50);
        assert_eq!(b.available(later), 5_000);
        // Never more than the burst, however long it was idle.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 10_000);
    }

    #[test]
    fn a_debt_is_paid_before_more_passes() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        // Two streams were both told 100 kB were available and both took it.
        b.take(100_000, t0);
        b.take(100_000, t0);
        assert_eq!(b.available(t0), 0);
        let wait = b.wait(t0);
        assert!(wait >= Duration::from_millis(100), "{wait:?}");
        assert_eq!(b.available(t0 + Duration::from_millis(99)), 0);
        assert!(b.available(t0 + Duration::from_millis(120)) > 0);
    }

    /// A guest cannot write past what `check-write` allowed it, though the stream beneath
    /// would take it.
    #[tokio::test]
    async fn writes_past_the_permit_trap() {
        let inner = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20);
        let mut out = LimitedOutput {
            inner: Box::new(inner.clone()),
            bucket: NetLimit::new(10_000).egress,
            permit: 0,
        };
        // 100 ms at 10 kB/s, not the pipe's megabyte.
        assert_eq!(out.check_write().unwrap(), 1_500);
        assert!(matches!(
            out.write(Bytes::from(vec![0; 1_501])),
            Err(StreamError::Trap(_))
        ));
        out.write(Bytes::from(vec![0; 1_000])).unwrap();
        assert!(
            out.write(Bytes::from(vec![0; 501])).is_err(),
            "the rest of the permit"
        );
        assert_eq!(inner.contents().len(), 1_000);
        assert_eq!(out.check_write().unwrap(), 500);
    }

    #[test]
    fn tiny_rates_still_move_a_frame() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0, t0);
        assert_eq!(b.available(t0), 1500);
        b.take(1500, t0);
        // One byte per second: a byte's wait.
        assert_eq!(b.wait(t0), Duration::from_secs(1));
    }
}
