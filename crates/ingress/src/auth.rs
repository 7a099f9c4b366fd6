//! HTTP Basic authentication against an htpasswd file of bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds per check), and a phone
//! sends the same credentials with every request, so a verified
//! `Authorization` header is remembered: the first request of a client pays
//! for bcrypt (on the blocking pool), the rest a hash lookup.
//!
//! Failed attempts are limited: past [`MAX_FAILURES_PER_SECOND`] failures
//! within a second from one source address, or for one user name, the
//! next attempt is refused without running bcrypt ([`AuthFailure::Limited`],
//! 429 with `Retry-After`), so wrong passwords cannot be used to burn the
//! CPU or to guess at bcrypt's pace.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed attempts allowed within one second per source address and per
/// user name; the next is refused unchecked.
pub const MAX_FAILURES_PER_SECOND: usize = 10;

/// Sources and user names tracked at once; past it, those whose failures
/// are all older than a second are forgotten.
const LIMITER_LIMIT: usize = 100_000;

/// Why credentials were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Missing, malformed, unknown user or wrong password: 401.
    Invalid,
    /// Too many failures just now from this address or for this user:
    /// 429, retry after a second.
    Limited,
}

/// Recent failures per source address and per user name.
#[derive(Default)]
struct Failures {
    by_key: HashMap<FailureKey, VecDeque<Instant>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    Source(IpAddr),
    User(String),
}

impl Failures {
    /// Whether `key` failed the allowed number of times in the last second.
    fn limited(&mut self, key: &FailureKey, now: Instant) -> bool {
        let Some(times) = self.by_key.get_mut(key) else {
            return false;
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            times.pop_front();
        }
        times.len() >= MAX_FAILURES_PER_SECOND
    }

    fn record(&mut self, key: FailureKey, now: Instant) {
        if self.by_key.len() >= LIMITER_LIMIT {
            self.by_key.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
            });
        }
        let times = self.by_key.entry(key).or_default();
        if times.len() >= MAX_FAILURES_PER_SECOND {
            times.pop_front();
        }
        times.push_back(now);
    }
}

/// Verified headers kept; past this the cache starts over (a bound, so a
/// flood of distinct valid credentials cannot grow memory).
const CACHE_LIMIT: usize = 100_000;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: Mutex<HashMap<String, String>>,
    failures: Mutex<Failures>,
}

/// An htpasswd file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `user:$2y$...`.
    #[error("htpasswd file {path}, line {line}: expected user:bcrypt-hash ($2a$, $2b$ or $2y$)")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
}

impl Htpasswd {
    /// Reads `user:hash` lines; blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path) -> Result<Self, HtpasswdError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, hash))
                    if !user.is_empty()
                        && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) =>
                {
                    users.insert(user.to_owned(), hash.to_owned());
                }
                _ => {
                    return Err(HtpasswdError::Line {
                        path: shown,
                        line: i + 1,
                    });
                }
            }
        }
        Ok(Self {
            users,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(Failures::default()),
        })
    }

    /// The authenticated user for an `Authorization` header value sent
    /// from `source`, if the credentials are valid and the attempt is not
    /// over the failure limit. May run bcrypt: call from a blocking
    /// context (or use [`authenticate`]).
    pub fn verify(&self, header: &str, source: IpAddr) -> Result<String, AuthFailure> {
        if let Some(user) = self.cached(header) {
            return Ok(user);
        }
        let credentials = otstream_model::identity::basic_credentials(header);
        let keys = [
            Some(FailureKey::Source(source)),
            credentials
                .as_ref()
                .map(|(user, _)| FailureKey::User(user.clone())),
        ];
        let now = Instant::now();
        {
            let mut failures = self
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if keys.iter().flatten().any(|k| failures.limited(k, now)) {
                return Err(AuthFailure::Limited);
            }
        }
        let verified = credentials.and_then(|(user, password)| {
            let hash = self.users.get(&user)?;
            bcrypt::verify(&password, hash)
                .unwrap_or(false)
                .then_some(user)
        });
        let Some(user) = verified else {
            let mut failures = self
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for k in keys.into_iter().flatten() {
                failures.record(k, now);
            }
            return Err(AuthFailure::Invalid);
        };
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(header.to_owned(), user.clone());
        }
        Ok(user)
    }

    /// The user for a header verified before, without bcrypt.
    pub fn cached(&self, header: &str) -> Option<String> {
        self.verified.lock().ok()?.get(header).cloned()
    }
}

/// [`Htpasswd::verify`] from async code: a header verified before is a
/// lookup; otherwise bcrypt runs on the blocking pool, off the reactor.
pub async fn authenticate(
    auth: &Arc<Htpasswd>,
    header: Option<&str>,
    source: IpAddr,
) -> Result<String, AuthFailure> {
    let header = header.ok_or(AuthFailure::Invalid)?;
    if let Some(user) = auth.cached(header) {
        return Ok(user);
    }
    let (auth, header) = (auth.clone(), header.to_owned());
    tokio::task::spawn_blocking(move || auth.verify(&header, source))
        .await
        .unwrap_or(Err(AuthFailure::Invalid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn verifies_bcrypt_and_caches() {
        let dir = std::env::temp_dir().join(format!("otstream-htpasswd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&file, format!("# users\njane:{hash}\n")).unwrap();
        let h = Htpasswd::from_file(&file).unwrap();
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("jane:s3cret")
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("jane:nope")
        );
        let here = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(h.cached(&good), None);
        assert_eq!(h.verify(&good, here).as_deref(), Ok("jane"));
        assert_eq!(h.cached(&good).as_deref(), Some("jane"));
        assert_eq!(h.verify(&bad, here), Err(AuthFailure::Invalid));
        assert_eq!(h.verify("Bearer x", here), Err(AuthFailure::Invalid));
        std::fs::write(&file, "jane:plaintext\n").unwrap();
        assert!(matches!(
            Htpasswd::from_file(&file),
            Err(HtpasswdError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn the_eleventh_failure_in_a_second_is_limited_per_source_and_per_user() {
        let dir = std::env::temp_dir().join(format!("otstream-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&file, format!("jane:{hash}\nbob:{hash}\n")).unwrap();
        let h = Htpasswd::from_file(&file).unwrap();
        let basic = |cred: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(cred)
            )
        };
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let got: Vec<_> = (0..11)
            .map(|i| h.verify(&basic(&format!("jane:wrong{i}")), a))
            .collect();
        assert!(
            got[..10].iter().all(|r| *r == Err(AuthFailure::Invalid)),
            "{got:?}"
        );
        assert_eq!(got[10], Err(AuthFailure::Limited));
        // Limited for that user from anywhere, and for anyone from there,
        // even with the right password; others are not.
        assert_eq!(
            h.verify(&basic("jane:s3cret"), b),
            Err(AuthFailure::Limited)
        );
        assert_eq!(h.verify(&basic("bob:s3cret"), a), Err(AuthFailure::Limited));
        assert_eq!(h.verify(&basic("bob:s3cret"), b).as_deref(), Ok("bob"));
        // A second later, the limit is lifted.
        std::thread::sleep(Duration::from_millis(1_050));
        assert_eq!(h.verify(&basic("jane:s3cret"), a).as_deref(), Ok("jane"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
