//! How many connections one peer holds on a TCP listener. The bearer token is
//! checked only once a request's headers arrive, so without a cap per peer a single
//! unauthenticated host could fill `--max-connections` with slow connections and keep
//! every other client (the orchestrator) out for as long as it kept at it.
//!
//! A peer is an IPv4 address or an IPv6 /64: a host usually holds a whole /64 and
//! could otherwise take a fresh address for every connection. Loopback peers are not
//! counted: local tunnels and the CLI all arrive from 127.0.0.1, and whoever runs
//! there is already on the host.

use std::collections::hash_map::{Entry, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A flood of refusals must not flood the log: one warning a minute per listener,
/// the rest at debug level.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The connections each peer holds on one listener.
#[derive(Debug)]
pub struct PeerCap {
    max: usize,
    /// Only peers holding at least one connection, so the map is bounded by the
    /// listener's own cap.
    held: Mutex<HashMap<IpAddr, usize>>,
    last_warned: Mutex<Option<Instant>>,
}

/// One connection counted against its peer; dropping it gives the count back, so
/// however the connection ends, its peer does not stay charged for it.
#[derive(Debug)]
pub struct PeerSlot {
    counted: Option<(Arc<PeerCap>, IpAddr)>,
}

impl PeerCap {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
            last_warned: Mutex::new(None),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when its peer already holds
    /// the maximum (logged, rate-limited).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let Some(peer) = peer_of(ip) else {
            return Some(PeerSlot { counted: None });
        };
        let mut held = lock(&self.held);
        let count = held.get(&peer).copied().unwrap_or(0);
        if count >= self.max {
            drop(held);
            self.log_refusal(ip);
            return None;
        }
        held.insert(peer, count + 1);
        Some(PeerSlot {
            counted: Some((Arc::clone(self), peer)),
        })
    }

    fn log_refusal(&self, ip: IpAddr) {
        let mut last = lock(&self.last_warned);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            log::debug!(
                "refused a connection from {ip}: it holds --max-connections-per-peer {}",
                self.max
            );
            return;
        }
        *last = Some(now);
        log::warn!(
            "refused a connection from {ip}: it already holds {} connections to this listener (--max-connections-per-peer); further refusals this minute are logged at debug level",
            self.max
        );
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let Some((cap, peer)) = self.counted.take() else {
            return;
        };
        let mut held = lock(&cap.held);
        if let Entry::Occupied(mut entry) = held.entry(peer) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// The key `ip` is counted under, or `None` for loopback (not counted).
fn peer_of(ip: IpAddr) -> Option<IpAddr> {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d; it is the
    // same peer as a.b.c.d, and loopback as 127.0.0.1 is.
    match ip.to_canonical() {
        ip if ip.is_loopback() => None,
        IpAddr::V4(v4) => Some(IpAddr::V4(v4)),
        IpAddr::V6(v6) => Some(IpAddr::V6(Ipv6Addr::from_bits(
            v6.to_bits() & (u128::MAX << 64),
        ))),
    }
}

/// The counts stay consistent whatever panicked while holding the lock: every
/// change under it is a single insert or remove.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn peers(cap: &PeerCap) -> usize {
        lock(&cap.held).len()
    }

    #[test]
    fn a_peer_at_its_cap_is_refused_and_others_are_not() {
        let cap = PeerCap::new(2);
        let _a = cap.try_acquire(ip("192.0.2.7")).unwrap();
        let _b = cap.try_acquire(ip("192.0.2.7")).unwrap();
        assert!(cap.try_acquire(ip("192.0.2.7")).is_none());
        assert!(cap.try_acquire(ip("192.0.2.8")).is_some());
    }

    #[test]
    fn a_dropped_slot_gives_its_count_back() {
        let cap = PeerCap::new(1);
        let slot = cap.try_acquire(ip("198.51.100.1")).unwrap();
        assert!(cap.try_acquire(ip("198.51.100.1")).is_none());
        drop(slot);
        assert!(cap.try_acquire(ip("198.51.100.1")).is_some());
    }

    #[test]
    fn ipv6_addresses_of_one_64_are_one_peer() {
        let cap = PeerCap::new(2);
        let _a = cap.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = cap
            .try_acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
            .unwrap();
        assert!(cap.try_acquire(ip("2001:db8:1:2:abcd::9")).is_none());
        // The next /64 is another peer.
        assert!(cap.try_acquire(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_peer() {
        let cap = PeerCap::new(2);
        let _a = cap.try_acquire(ip("203.0.113.5")).unwrap();
        let _b = cap.try_acquire(ip("::ffff:203.0.113.5")).unwrap();
        assert!(cap.try_acquire(ip("203.0.113.5")).is_none());
        assert!(cap.try_acquire(ip("::ffff:203.0.113.5")).is_none());
        assert_eq!(peers(&cap), 1);
    }

    #[test]
    fn loopback_is_not_capped_nor_counted() {
        let cap = PeerCap::new(1);
        let held: Vec<_> = [
            "127.0.0.1",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
        ]
        .into_iter()
        .map(|a| cap.try_acquire(ip(a)).expect(a))
        .collect();
        assert_eq!(held.len(), 5);
        assert_eq!(peers(&cap), 0);
    }

    #[test]
    fn a_peer_with_no_connection_left_leaves_the_map() {
        let cap = PeerCap::new(3);
        let a = cap.try_acquire(ip("192.0.2.1")).unwrap();
        let b = cap.try_acquire(ip("192.0.2.1")).unwrap();
        let c = cap.try_acquire(ip("2001:db8::1")).unwrap();
        assert_eq!(peers(&cap), 2);
        drop(a);
        assert_eq!(peers(&cap), 2, "192.0.2.1 still holds one");
        drop(b);
        drop(c);
        assert_eq!(peers(&cap), 0);
        // Refusals add nothing either.
        let cap = PeerCap::new(1);
        let d = cap.try_acquire(ip("192.0.2.2")).unwrap();
        assert!(cap.try_acquire(ip("192.0.2.2")).is_none());
        drop(d);
        assert_eq!(peers(&cap), 0);
    }
}
