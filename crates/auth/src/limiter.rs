//! The login limiter: attempts are counted before bcrypt runs.
//!
//! Every password check that is not a header verified before (a phone
//! repeats its header with every request; those are a lookup) takes a
//! cell from its source's bucket first (an address, an IPv6 /64): past
//! `failures_per_second` a second, the check is refused with 429 and bcrypt
//! does not run. Counting before the check is what makes concurrent
//! guesses count: 400 guesses sent at once get 10 checks, not 400.
//!
//! A user's own bucket guards against guesses spread over many addresses.
//! It is taken only by sources that failed a check in the last minute, so
//! a third party's guesses never lock the account's owner out: the owner,
//! from an address that has not been guessing, is checked as always.
//!
//! Memory is bounded: buckets are kept for known users only (an unknown
//! user name costs nothing), and for at most [`MAX_SOURCES`] addresses
//! (idle buckets are dropped first; past the bound, new addresses share one
//! bucket, so a flood of addresses is limited as one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Sources tracked at once.
pub const MAX_SOURCES: usize = 100_000;

/// How long a failure marks its source as one that guesses.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Where an attempt comes from: an IPv4 address, or an IPv6 /64 (one
/// host's share of a network), or, past the bound, all new sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
    Overflow,
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The buckets, and which sources failed lately.
pub struct Limiter {
    sources: DefaultKeyedRateLimiter<Source>,
    users: DefaultKeyedRateLimiter<String>,
    failed: Mutex<HashMap<Source, Instant>>,
}

/// Refused before checking: 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited;

impl Limiter {
    /// Buckets of `per_second` attempts a second, as many at once.
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate);
        Limiter {
            sources: RateLimiter::keyed(quota),
            users: RateLimiter::keyed(quota),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a cell for a check from `ip` of `user` (`known`: a user of
    /// the file; others have no bucket), or refuses.
    pub fn admit(&self, ip: IpAddr, user: &str, known: bool) -> Result<(), Limited> {
        let source = self.source(ip);
        self.sources.check_key(&source).map_err(|_| Limited)?;
        if known && self.failed_lately(source) {
            self.users
                .check_key(&user.to_owned())
                .map_err(|_| Limited)?;
        }
        Ok(())
    }

    /// Remembers that a check from `ip` failed.
    pub fn failed(&self, ip: IpAddr) {
        let source = self.source(ip);
        let now = Instant::now();
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed.len() >= MAX_SOURCES {
            failed.retain(|_, at| now.duration_since(*at) < FAILURE_MEMORY);
        }
        if failed.len() < MAX_SOURCES || failed.contains_key(&source) {
            failed.insert(source, now);
        } else {
            failed.insert(Source::Overflow, now);
        }
    }

    fn failed_lately(&self, source: Source) -> bool {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lately = |s| {
            failed
                .get(&s)
                .is_some_and(|at| at.elapsed() < FAILURE_MEMORY)
        };
        // Past the bound a new source may have failed without a record of
        // its own: it is taken as one that did.
        lately(source) || (failed.len() >= MAX_SOURCES && !failed.contains_key(&source))
    }

    /// The bucket key of `ip`: its own while there is room.
    fn source(&self, ip: IpAddr) -> Source {
        let source = Source::of(ip);
        if self.sources.len() >= MAX_SOURCES {
            // Full buckets are the only ones worth keeping.
            self.sources.retain_recent();
            if self.sources.len() >= MAX_SOURCES {
                return Source::Overflow;
            }
        }
        source
    }

    /// Sources with a bucket now (for tests and the bound).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_before_the_check_per_source_and_the_owner_is_not_locked_out() {
        let l = Limiter::new(10);
        let guesser = IpAddr::from([10, 0, 0, 1]);
        let owner = IpAddr::from([10, 0, 0, 2]);
        // 400 attempts at once: the first ten are checked.
        let admitted = (0..400)
            .filter(|_| l.admit(guesser, "jane", true).is_ok())
            .count();
        assert_eq!(admitted, 10);
        for _ in 0..10 {
            l.failed(guesser);
        }
        // From another address that has not failed, the owner is checked.
        assert_eq!(l.admit(owner, "jane", true), Ok(()));
        // Guesses from many addresses: each new one gets its check; once
        // it has failed, the user's own bucket applies, and runs out.
        let mut refused = 0;
        for i in 0..30u8 {
            let ip = IpAddr::from([10, 0, 1, i]);
            assert_eq!(l.admit(ip, "jane", true), Ok(()));
            l.failed(ip);
            if l.admit(ip, "jane", true).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 20);
        // Unknown users have no bucket of their own.
        let stranger = IpAddr::from([10, 0, 2, 1]);
        l.failed(stranger);
        assert_eq!(
            l.admit(stranger, "x".repeat(400_000).as_str(), false),
            Ok(())
        );
    }

    #[test]
    fn an_ipv6_network_is_one_source() {
        let l = Limiter::new(2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(l.admit(a, "u", false).is_ok() && l.admit(b, "u", false).is_ok());
        assert_eq!(l.admit(a, "u", false), Err(Limited));
        assert!(l.admit(c, "u", false).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(IpAddr::from([10, 0, 0, 9])));
    }
}
