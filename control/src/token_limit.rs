//! The per-client limit on failed bearer-token attempts, so the admin and feed tokens
//! cannot be guessed at the speed of the network.
//!
//! **What counts.** A request to a route behind a token whose `authorization` header
//! matches neither the admin nor the feed token. A request without the header (a probe, a
//! browser) and a real token on the wrong route (the feed token on the admin API) are
//! refused with 401 but not counted: neither is a guess. Successful requests are never
//! counted and never wait.
//!
//! **Algorithm: a fixed window per client.** A client's first failure opens a window of
//! [`WINDOW_SECS`]; each failure in it counts. Once `limit` failures are counted, every
//! request the client makes to a route behind a token is answered 429 `RATE_LIMITED`
//! with `Retry-After` (the seconds left in the window) until the window ends, without its
//! token being looked at: a lockout that let a right guess through would not slow
//! guessing. The next failure after the window opens a new one. So a client gets at most
//! `limit` guesses per window, and a legitimate client behind the same address waits out
//! the window too (the price of not telling a right guess apart).
//!
//! **Who is a client.** The TCP peer address the server sees (`ConnectInfo`): an IPv4
//! address, or an IPv6 `/64` (one subscriber holds a whole `/64`, so counting per
//! address would give each of its 2^64 addresses its own budget). A proxy in front of the
//! control service makes every client one; requests with no peer address (tests through
//! the router without a socket) share one entry.
//!
//! **Memory.** At most [`CAPACITY`] clients are tracked (a few hundred bytes each, a few
//! MB in all). A new client when the table is full evicts the one whose window opened
//! first, so memory stays bounded under any number of attacking addresses; an attacker
//! with more addresses than that can evict its own entries and keep guessing at `limit`
//! per address per window. The limit slows guessing down; the token's 128 bits
//! (`config.rs`) are what keep it out of reach.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

/// How long a window lasts, and so the longest lockout.
pub const WINDOW_SECS: i64 = 60;
/// The most clients tracked at once.
pub const CAPACITY: usize = 16_384;
/// Failed attempts per client per window before it is locked out, unless
/// `GATEHOUSE_TOKEN_FAILURES_PER_MINUTE` says otherwise.
pub const DEFAULT_LIMIT: u32 = 10;

/// A client as the limit counts it: an IPv4 address or an IPv6 `/64`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Client {
    /// No peer address known.
    Unknown,
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Client {
    pub fn of(addr: Option<IpAddr>) -> Client {
        match addr.map(|a| a.to_canonical()) {
            None => Client::Unknown,
            Some(IpAddr::V4(a)) => Client::V4(a.octets()),
            Some(IpAddr::V6(a)) => {
                let mut prefix = [0u8; 8];
                for (p, o) in prefix.iter_mut().zip(a.octets()) {
                    *p = o;
                }
                Client::V6(prefix)
            }
        }
    }
}

impl std::fmt::Display for Client {
    /// `203.0.113.7`, `2001:db8:1:2::/64`, or `unknown`: what the log line shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Unknown => f.write_str("unknown"),
            Client::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            Client::V6(p) => {
                let mut full = [0u8; 16];
                for (f, o) in full.iter_mut().zip(p) {
                    *f = *o;
                }
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    start: i64,
    failures: u32,
}

#[derive(Default)]
struct Table {
    windows: HashMap<Client, Window>,
    /// Clients in the order their windows opened, with the window's start; an item whose
    /// start is no longer its client's is stale and skipped (and dropped when compacted).
    opened: VecDeque<(Client, i64)>,
}

impl Table {
    fn evict_oldest(&mut self) {
        while let Some((client, start)) = self.opened.pop_front() {
            if self.windows.get(&client).is_some_and(|w| w.start == start) {
                self.windows.remove(&client);
                return;
            }
        }
    }

    /// Keeps `opened` within twice the table: stale items go.
    fn compact(&mut self, capacity: usize) {
        if self.opened.len() > capacity.saturating_mul(2) {
            let windows = &self.windows;
            self.opened
                .retain(|(client, start)| windows.get(client).is_some_and(|w| w.start == *start));
        }
    }
}

/// The table of failed attempts; see the module doc.
pub struct FailureLimit {
    table: Mutex<Table>,
    limit: u32,
    capacity: usize,
}

impl FailureLimit {
    /// `limit` failures per client per [`WINDOW_SECS`], at most `capacity` clients.
    pub fn new(limit: u32, capacity: usize) -> FailureLimit {
        FailureLimit {
            table: Mutex::new(Table::default()),
            limit: limit.max(1),
            capacity: capacity.max(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding it; should anything, the counts are still counts.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The seconds until `client` may try again, if it is locked out at `now`.
    pub fn locked(&self, client: Client, now: i64) -> Option<u64> {
        let table = self.table();
        let w = table.windows.get(&client)?;
        let end = w.start.saturating_add(WINDOW_SECS);
        (w.failures >= self.limit && now < end).then(|| u64::try_from(end - now).unwrap_or(1))
    }

    /// Counts one failed attempt of `client` at `now`; returns its failures in the window.
    pub fn fail(&self, client: Client, now: i64) -> u32 {
        let mut table = self.table();
        if let Some(w) = table.windows.get_mut(&client) {
            if now < w.start.saturating_add(WINDOW_SECS) {
                w.failures = w.failures.saturating_add(1);
                return w.failures;
            }
            *w = Window {
                start: now,
                failures: 1,
            };
        } else {
            if table.windows.len() >= self.capacity {
                table.evict_oldest();
            }
            table.windows.insert(
                client,
                Window {
                    start: now,
                    failures: 1,
                },
            );
        }
        table.opened.push_back((client, now));
        table.compact(self.capacity);
        1
    }

    /// Clients tracked now, and the length of the order queue (for the memory tests).
    pub fn sizes(&self) -> (usize, usize) {
        let table = self.table();
        (table.windows.len(), table.opened.len())
    }
}

/// The 429 a locked-out client gets, in the standard shape (the request middleware
/// writes the body), with `Retry-After`.
pub fn too_many(retry_after: u64) -> Response {
    let mut response = crate::error::ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "too many failed token attempts from this client; try again later",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: i64 = 1_767_225_600;

    fn v4(i: u32) -> Client {
        Client::of(Some(IpAddr::from(std::net::Ipv4Addr::from(i))))
    }

    #[test]
    fn ten_failures_lock_a_client_out_until_its_window_ends() {
        let l = FailureLimit::new(10, CAPACITY);
        let c = v4(1);
        for n in 1..=10 {
            assert_eq!(l.locked(c, T), None);
            assert_eq!(l.fail(c, T + 5), n);
        }
        assert_eq!(l.locked(c, T + 5), Some(60));
        assert_eq!(l.locked(c, T + 64), Some(1));
        assert_eq!(l.locked(c, T + 65), None);
        assert_eq!(
            l.locked(v4(2), T + 5),
            None,
            "another client is not affected"
        );
        // A new window starts with the next failure.
        assert_eq!(l.fail(c, T + 65), 1);
        assert_eq!(l.locked(c, T + 65), None);
    }

    #[test]
    fn failures_in_separate_windows_never_add_up() {
        let l = FailureLimit::new(10, CAPACITY);
        let c = v4(1);
        for minute in 0..100 {
            for _ in 0..9 {
                l.fail(c, T + 61 * minute);
            }
            assert_eq!(l.locked(c, T + 61 * minute), None);
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let addr = |s: &str| Client::of(Some(s.parse().unwrap()));
        assert_eq!(addr("2001:db8:1:2::1"), addr("2001:db8:1:2:ffff::9"));
        assert_ne!(addr("2001:db8:1:2::1"), addr("2001:db8:1:3::1"));
        assert_eq!(addr("::ffff:203.0.113.7"), addr("203.0.113.7"));
        assert_eq!(addr("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(addr("203.0.113.7").to_string(), "203.0.113.7");
    }

    #[test]
    fn memory_stays_bounded_under_a_hundred_thousand_addresses() {
        let capacity = 1024;
        let l = FailureLimit::new(3, capacity);
        for i in 0..100_000u32 {
            // Each address fails twice, some seconds apart, then comes back in a later
            // window: every path that adds to the queue.
            let now = T + i64::from(i / 100);
            l.fail(v4(i), now);
            l.fail(v4(i), now);
            if i >= 500 {
                l.fail(v4(i - 500), now + 61);
            }
            let (clients, queue) = l.sizes();
            assert!(clients <= capacity, "{clients} clients at {i}");
            assert!(queue <= 2 * capacity + 1, "{queue} queued at {i}");
        }
        // The newest clients are still tracked: a third failure locks one out.
        let last = v4(99_999);
        l.fail(last, T + 1000);
        assert!(l.locked(last, T + 1000).is_some());
    }

    #[test]
    fn the_client_whose_window_opened_first_is_evicted_first() {
        let l = FailureLimit::new(2, 3);
        for (i, c) in [v4(1), v4(2), v4(3)].into_iter().enumerate() {
            l.fail(c, T + i as i64);
            l.fail(c, T + i as i64);
        }
        l.fail(v4(4), T + 10);
        assert_eq!(l.locked(v4(1), T + 10), None, "evicted");
        assert!(l.locked(v4(2), T + 10).is_some());
        assert!(l.locked(v4(3), T + 10).is_some());
        assert_eq!(l.sizes().0, 3);
    }
}
