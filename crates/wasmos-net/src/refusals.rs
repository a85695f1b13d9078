//! Rate-limited log lines for refused connections: a peer that keeps dialling with a bad
//! certificate must not be able to fill the master's log (and its disk) with them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// One line per peer address per this many milliseconds; the rest are counted.
const WINDOW_MS: u64 = 10_000;
/// Peers remembered at once; past it the table starts again (a flood from many addresses
/// then logs at most this many lines per window).
const MAX_PEERS: usize = 4096;

pub struct Refusals {
    start: Instant,
    peers: Mutex<HashMap<IpAddr, (u64, u64)>>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            start: Instant::now(),
            peers: Mutex::default(),
        }
    }
}

impl Refusals {
    /// Whether to log a refusal from `peer` now, and how many were left unlogged since the
    /// last line for it.
    pub fn admit(&self, peer: IpAddr) -> Option<u64> {
        self.admit_at(peer, self.start.elapsed().as_millis() as u64)
    }

    fn admit_at(&self, peer: IpAddr, now_ms: u64) -> Option<u64> {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, (last, _)| now_ms.saturating_sub(*last) < WINDOW_MS);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        match peers.get_mut(&peer) {
            Some((last, skipped)) if now_ms.saturating_sub(*last) < WINDOW_MS => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now_ms;
                Some(std::mem::take(skipped))
            }
            None => {
                peers.insert(peer, (now_ms, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_per_window_and_the_rest_counted() {
        let r = Refusals::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(r.admit_at(a, 0), Some(0));
        for t in 1..100 {
            assert_eq!(r.admit_at(a, t), None);
        }
        // Another peer is not held back by the first.
        assert_eq!(r.admit_at(b, 50), Some(0));
        assert_eq!(r.admit_at(a, WINDOW_MS), Some(99));
        assert_eq!(r.admit_at(a, WINDOW_MS + 1), None);
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let r = Refusals::default();
        for i in 0..(MAX_PEERS as u32 * 3) {
            r.admit_at(IpAddr::from(i.to_be_bytes()), 0);
        }
        assert!(r.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}
