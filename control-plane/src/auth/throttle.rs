//! Login throttling: exponential back-off per source address and per user name.
//!
//! Every failed login counts against its source (IPv4 address, or IPv6 /64: one host's
//! addresses) and against the user name it tried. After `free_failures` failures, the next
//! attempt must wait `1 s × 2^(extra failures)`, capped at `max_backoff`; attempts made while a
//! key must wait are refused *before* the password is hashed, so they cost nothing. Counts are
//! forgotten after a quiet `max_backoff`.
//!
//! The per-user limit must not let an attacker shut a user out: a source that logged in as that
//! user successfully before (a *known source*, remembered for [`KNOWN_SOURCE_TTL`]) is not held
//! back by the user's count — only by its own address's. So the right password keeps working
//! from the places the user logs in from, while guesses from anywhere else are slowed down
//! however many addresses the attacker spreads them over.
//!
//! Memory is bounded: each table holds at most `max_entries` keys; when full, keys not currently
//! held back are dropped first, and if that is not enough a new key is not tracked (the bounded
//! hashing pool still caps the cost of its attempts).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a successful login makes its source known for that user.
pub const KNOWN_SOURCE_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Throttle settings (from `[auth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed before back-off starts.
    pub free_failures: u32,
    /// Longest back-off; also how long a quiet key's count is kept.
    pub max_backoff: Duration,
    /// Keys per table.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 5,
            max_backoff: Duration::from_secs(15 * 60),
            max_entries: 100_000,
        }
    }
}

/// Which limit refused an attempt (for logs and metrics), and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Source(Duration),
    User(Duration),
}

impl Held {
    pub fn retry_after(self) -> Duration {
        match self {
            Held::Source(d) | Held::User(d) => d,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

#[derive(Debug, Default)]
struct Tables {
    sources: HashMap<IpAddr, Failures>,
    users: HashMap<String, Failures>,
    known: HashMap<(String, IpAddr), Instant>,
}

/// The throttle of one process. Split gateways each keep their own (the limits then apply per
/// gateway replica; documented).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    tables: Mutex<Tables>,
}

/// The key an address counts under: IPv6 hosts get a /64, so hopping addresses within it is
/// no escape.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        LoginThrottle {
            config,
            tables: Mutex::new(Tables::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May `user` try a password from `ip` now?
    pub fn check(&self, user: &str, ip: IpAddr, now: Instant) -> Result<(), Held> {
        let src = source_key(ip);
        let t = self.lock();
        if let Some(f) = t.sources.get(&src)
            && f.until > now
        {
            return Err(Held::Source(f.until - now));
        }
        if let Some(f) = t.users.get(user)
            && f.until > now
        {
            let known = t
                .known
                .get(&(user.to_owned(), src))
                .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_SOURCE_TTL);
            if !known {
                return Err(Held::User(f.until - now));
            }
        }
        Ok(())
    }

    /// Records a failed attempt.
    pub fn failed(&self, user: &str, ip: IpAddr, now: Instant) {
        let src = source_key(ip);
        let cfg = self.config;
        let mut t = self.lock();
        bump(&mut t.sources, src, now, &cfg);
        bump(&mut t.users, user.to_owned(), now, &cfg);
    }

    /// Records a successful login: its source becomes known for the user. The counts are left
    /// as they are, so a success cannot reset the back-off an attack built up.
    pub fn succeeded(&self, user: &str, ip: IpAddr, now: Instant) {
        let src = source_key(ip);
        let max = self.config.max_entries;
        let mut t = self.lock();
        let key = (user.to_owned(), src);
        if t.known.len() >= max && !t.known.contains_key(&key) {
            t.known
                .retain(|_, at| now.saturating_duration_since(*at) < KNOWN_SOURCE_TTL);
            if t.known.len() >= max {
                return;
            }
        }
        t.known.insert(key, now);
    }

    /// Forgets what is known about `user` (deleted users, or a password reset by an admin: the
    /// sources an attacker may have logged in from are not trusted any more).
    pub fn forget_user(&self, user: &str) {
        let mut t = self.lock();
        t.users.remove(user);
        t.known.retain(|(u, _), _| u != user);
    }

    /// Keys tracked now, per table (sources, users, known sources).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let t = self.lock();
        (t.sources.len(), t.users.len(), t.known.len())
    }
}

fn bump<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Failures>,
    key: K,
    now: Instant,
    cfg: &ThrottleConfig,
) {
    if !map.contains_key(&key) && map.len() >= cfg.max_entries {
        map.retain(|_, f| f.until > now);
        if map.len() >= cfg.max_entries {
            return;
        }
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
        until: now,
    });
    if now.saturating_duration_since(f.last) >= cfg.max_backoff {
        f.count = 0;
    }
    f.count = f.count.saturating_add(1);
    f.last = now;
    if f.count > cfg.free_failures {
        let extra = (f.count - cfg.free_failures - 1).min(30);
        let wait = Duration::from_secs(1u64 << extra).min(cfg.max_backoff);
        f.until = now + wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            free_failures: 3,
            max_backoff: Duration::from_secs(60),
            max_entries: 8,
        })
    }

    #[test]
    fn back_off_starts_after_the_free_failures_and_doubles() {
        let t = throttle();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(t.check("bob", a, now), Ok(()));
            t.failed("bob", a, now);
        }
        assert_eq!(t.check("bob", a, now), Ok(()), "three free failures");
        t.failed("bob", a, now);
        assert_eq!(
            t.check("bob", a, now),
            Err(Held::Source(Duration::from_secs(1)))
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(t.check("bob", a, later), Ok(()));
        t.failed("bob", a, later);
        assert_eq!(
            t.check("bob", a, later),
            Err(Held::Source(Duration::from_secs(2)))
        );
        // Capped at max_backoff.
        for _ in 0..40 {
            t.failed("bob", a, later);
        }
        assert_eq!(
            t.check("bob", a, later),
            Err(Held::Source(Duration::from_secs(60)))
        );
    }

    #[test]
    fn a_user_under_attack_still_logs_in_from_a_known_source() {
        let t = throttle();
        let now = Instant::now();
        let (home, attacker, elsewhere) = (ip("192.0.2.1"), ip("198.51.100.7"), ip("203.0.113.9"));
        t.succeeded("alice", home, now);
        // Guesses spread over many addresses hold the user name back...
        for i in 0..10 {
            t.failed("alice", ip(&format!("198.51.100.{}", 10 + i)), now);
        }
        t.failed("alice", attacker, now);
        assert!(matches!(
            t.check("alice", elsewhere, now),
            Err(Held::User(_))
        ));
        // ...but not from where alice logged in before, nor other users from anywhere.
        assert_eq!(t.check("alice", home, now), Ok(()));
        assert_eq!(t.check("carol", elsewhere, now), Ok(()));
        t.forget_user("alice");
        assert_eq!(t.check("alice", elsewhere, now), Ok(()));
    }

    #[test]
    fn counts_are_forgotten_after_a_quiet_period() {
        let t = throttle();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            t.failed("bob", a, now);
        }
        assert!(t.check("bob", a, now).is_err());
        let later = now + Duration::from_secs(61);
        assert_eq!(t.check("bob", a, later), Ok(()));
        t.failed("bob", a, later);
        assert_eq!(t.check("bob", a, later), Ok(()), "the count restarted");
    }

    #[test]
    fn ipv6_hosts_count_per_64_and_mapped_v4_as_v4() {
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa::1")),
            source_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            source_key(ip("2001:db8:1:2::1")),
            source_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn tables_are_bounded() {
        let t = throttle();
        let now = Instant::now();
        for i in 0..100 {
            let a = ip(&format!("10.0.0.{i}"));
            t.failed(&format!("user{i}"), a, now);
            t.succeeded(&format!("user{i}"), a, now);
        }
        let (s, u, k) = t.sizes();
        assert!(s <= 8 && u <= 8 && k <= 8, "{s} {u} {k}");
    }
}
