//! Guest stdout and stderr: WASI output streams that count bytes against the task's per-stream
//! output cap and forward chunks, in the order written, to the agent's output channel. Past the
//! cap a stream is either truncated (the guest goes on; one marker line says so) or the write
//! stops the task, as the task's policy says.
//!
//! Writes never block the guest on the channel: they are queued, and the queue drains into the
//! channel opportunistically on every write and, with back-pressure, whenever WASI waits for the
//! stream to become ready (which `blocking-write-and-flush` does after each write). A slow
//! consumer therefore slows the guest down instead of growing the queue without bound, and never
//! blocks a runtime thread.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmos_proto::OutputStream as Stream;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Largest write WASI is invited to make at once, and the most queued output before the guest
/// has to wait for the consumer.
const CHUNK: usize = 64 * 1024;

/// The write that crossed the cap under the `stop` policy; it stops the task.
#[derive(Debug, thiserror::Error)]
#[error("task wrote more than its {limit}-byte output limit")]
pub(crate) struct OutputLimitExceeded {
    pub limit: u64,
}

fn index(which: Stream) -> usize {
    match which {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn name(which: Stream) -> &'static str {
    match which {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

#[derive(Debug)]
struct State {
    /// Cap of each stream.
    limit: u64,
    /// Past the cap: drop the rest (true) or stop the task (false).
    truncate: bool,
    written: [u64; 2],
    truncated: [bool; 2],
    exceeded: bool,
    queue: VecDeque<(Stream, Vec<u8>)>,
    queued_bytes: usize,
}

/// The output of one task, shared by its stdout and stderr and by every stream handle the guest
/// opens on them.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    state: Arc<Mutex<State>>,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
}

impl Output {
    pub(crate) fn new(tx: mpsc::Sender<(Stream, Vec<u8>)>, limit: u64, truncate: bool) -> Self {
        Output {
            state: Arc::new(Mutex::new(State {
                limit,
                truncate,
                written: [0; 2],
                truncated: [false; 2],
                exceeded: false,
                queue: VecDeque::new(),
                queued_bytes: 0,
            })),
            tx,
        }
    }

    pub(crate) fn stream(&self, which: Stream) -> CapturedStream {
        CapturedStream {
            output: self.clone(),
            which,
        }
    }

    /// True once the task has tried to write past its limit under the `stop` policy.
    pub(crate) fn exceeded(&self) -> bool {
        self.lock().exceeded
    }

    /// The streams that were cut short under the `truncate` policy.
    pub(crate) fn truncated(&self) -> Vec<&'static str> {
        let s = self.lock();
        [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .filter(|w| s.truncated[index(*w)])
            .map(name)
            .collect()
    }

    pub(crate) fn limit(&self) -> u64 {
        self.lock().limit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and the state stays consistent if it did.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts and queues `data`; past the stream's limit, queues only what fits and then either
    /// drops the rest (noting the truncation once) or refuses it.
    fn accept(&self, which: Stream, data: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut s = self.lock();
        if s.exceeded {
            return Err(OutputLimitExceeded { limit: s.limit });
        }
        let i = index(which);
        let room = s.limit.saturating_sub(s.written[i]);
        let len = data.len() as u64;
        let (take, over) = if len > room {
            (room as usize, true)
        } else {
            (data.len(), false)
        };
        if take > 0 {
            s.written[i] += take as u64;
            s.queued_bytes += take;
            s.queue.push_back((which, data[..take].to_vec()));
        }
        let over = over && !s.truncate;
        if len > room && s.truncate && !s.truncated[i] {
            s.truncated[i] = true;
            let marker = format!(
                "\n[wasmos: {} truncated after {} bytes]\n",
                name(which),
                s.limit
            );
            s.queued_bytes += marker.len();
            s.queue.push_back((which, marker.into_bytes()));
        }
        if over {
            s.exceeded = true;
        }
        drop(s);
        self.try_drain();
        if over {
            Err(OutputLimitExceeded {
                limit: self.limit(),
            })
        } else {
            Ok(())
        }
    }

    /// Moves queued chunks into the channel while it has room; drops them if nobody listens.
    fn try_drain(&self) {
        let mut s = self.lock();
        while let Some(front) = s.queue.front() {
            let len = front.1.len();
            match self.tx.try_reserve() {
                Ok(permit) => {
                    if let Some(chunk) = s.queue.pop_front() {
                        permit.send(chunk);
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => return,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    s.queue.clear();
                    s.queued_bytes = 0;
                    return;
                }
            }
            s.queued_bytes -= len;
        }
    }

    /// Waits until every queued chunk is in the channel (or the receiver is gone). Cancel-safe:
    /// a chunk leaves the queue only together with a reserved channel slot.
    pub(crate) async fn drain(&self) {
        loop {
            if self.lock().queue.is_empty() {
                return;
            }
            let Ok(permit) = self.tx.reserve().await else {
                let mut s = self.lock();
                s.queue.clear();
                s.queued_bytes = 0;
                return;
            };
            let mut s = self.lock();
            if let Some(chunk) = s.queue.pop_front() {
                s.queued_bytes -= chunk.1.len();
                permit.send(chunk);
            }
        }
    }

    fn room(&self) -> usize {
        CHUNK.saturating_sub(self.lock().queued_bytes)
    }
}

/// One of the task's two output streams, as handed to `WasiCtxBuilder::stdout`/`stderr`.
pub(crate) struct CapturedStream {
    output: Output,
    which: Stream,
}

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(WasiStream {
            output: self.output.clone(),
            which: self.which,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(WasiStream {
            output: self.output.clone(),
            which: self.which,
        })
    }
}

/// A stream handle the guest holds.
struct WasiStream {
    output: Output,
    which: Stream,
}

impl OutputStream for WasiStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output
            .accept(self.which, &bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Completion of a flush is observed through `ready`, which drains the queue.
        self.output.try_drain();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.output.try_drain();
        Ok(self.output.room())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for WasiStream {
    async fn ready(&mut self) {
        self.output.drain().await;
    }
}

/// Only used by WASI implementations other than p2 (which this runner does not link); writes
/// are queued without back-pressure, still under the cap.
impl tokio::io::AsyncWrite for WasiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.output
                .accept(self.which, buf)
                .map(|()| buf.len())
                .map_err(io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.output.try_drain();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_in_order_and_stops_at_the_cap() {
        let (tx, mut rx) = mpsc::channel(16);
        let out = Output::new(tx, 10, false);
        let mut stdout = out.stream(Stream::Stdout).p2_stream();
        let mut stderr = out.stream(Stream::Stderr).p2_stream();
        stdout.write(Bytes::from_static(b"hello ")).unwrap();
        stderr.write(Bytes::from_static(b"ab")).unwrap();
        assert!(!out.exceeded());
        let err = stdout.write(Bytes::from_static(b"world!")).unwrap_err();
        assert!(matches!(err, StreamError::Trap(_)));
        assert!(out.exceeded());
        // Anything after the cap is refused outright.
        assert!(stderr.write(Bytes::from_static(b"x")).is_err());
        out.drain().await;
        drop(out);
        drop(stdout);
        drop(stderr);
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.push(chunk);
        }
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, b"hello ".to_vec()),
                (Stream::Stderr, b"ab".to_vec()),
                (Stream::Stdout, b"worl".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn truncation_caps_each_stream_says_so_once_and_lets_the_guest_go_on() {
        let (tx, mut rx) = mpsc::channel(16);
        let out = Output::new(tx, 4, true);
        let mut stdout = out.stream(Stream::Stdout).p2_stream();
        let mut stderr = out.stream(Stream::Stderr).p2_stream();
        stdout.write(Bytes::from_static(b"abcdef")).unwrap();
        stdout.write(Bytes::from_static(b"more")).unwrap();
        stderr.write(Bytes::from_static(b"xy")).unwrap();
        assert!(!out.exceeded());
        assert_eq!(out.truncated(), vec!["stdout"]);
        out.drain().await;
        drop((out, stdout, stderr));
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.push(chunk);
        }
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, b"abcd".to_vec()),
                (
                    Stream::Stdout,
                    b"\n[wasmos: stdout truncated after 4 bytes]\n".to_vec()
                ),
                (Stream::Stderr, b"xy".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_full_channel_applies_back_pressure_without_losing_output() {
        let (tx, mut rx) = mpsc::channel(1);
        let out = Output::new(tx, u64::MAX, false);
        let mut s = out.stream(Stream::Stdout).p2_stream();
        s.write(Bytes::from(vec![1u8; CHUNK / 2])).unwrap();
        s.write(Bytes::from(vec![2u8; CHUNK / 2])).unwrap();
        // One chunk fits in the channel, the other waits in the queue and fills it.
        assert_eq!(s.check_write().unwrap(), CHUNK / 2);
        let reader = tokio::spawn(async move {
            let mut total = 0;
            while let Some((_, data)) = rx.recv().await {
                total += data.len();
            }
            total
        });
        s.ready().await;
        assert_eq!(s.check_write().unwrap(), CHUNK);
        drop(s);
        drop(out);
        assert_eq!(reader.await.unwrap(), CHUNK);
    }

    #[tokio::test]
    async fn output_is_dropped_when_nobody_listens() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let out = Output::new(tx, 100, false);
        let mut s = out.stream(Stream::Stdout).p2_stream();
        s.write(Bytes::from_static(b"into the void")).unwrap();
        s.ready().await;
        assert_eq!(s.check_write().unwrap(), CHUNK);
    }
}
