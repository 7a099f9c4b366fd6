//! HTTP Basic authentication against an htpasswd file of bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds per check), and a phone
//! sends the same credentials with every request, so a verified
//! `Authorization` header is remembered: the first request of a client pays
//! for bcrypt (on the blocking pool), the rest a hash lookup.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Verified headers kept; past this the cache starts over (a bound, so a
/// flood of distinct valid credentials cannot grow memory).
const CACHE_LIMIT: usize = 100_000;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: Mutex<HashMap<String, String>>,
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
        })
    }

    /// The authenticated user for an `Authorization` header value, if the
    /// credentials are valid. May run bcrypt: call from a blocking context.
    pub fn verify(&self, header: &str) -> Option<String> {
        if let Some(user) = self.cached(header) {
            return Some(user);
        }
        let (user, password) = otstream_model::identity::basic_credentials(header)?;
        let hash = self.users.get(&user)?;
        if !bcrypt::verify(&password, hash).unwrap_or(false) {
            return None;
        }
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(header.to_owned(), user.to_owned());
        }
        Some(user.to_owned())
    }

    /// The user for a header verified before, without bcrypt.
    pub fn cached(&self, header: &str) -> Option<String> {
        self.verified.lock().ok()?.get(header).cloned()
    }
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
        assert_eq!(h.cached(&good), None);
        assert_eq!(h.verify(&good).as_deref(), Some("jane"));
        assert_eq!(h.cached(&good).as_deref(), Some("jane"));
        assert_eq!(h.verify(&bad), None);
        assert_eq!(h.verify("Bearer x"), None);
        std::fs::write(&file, "jane:plaintext\n").unwrap();
        assert!(matches!(
            Htpasswd::from_file(&file),
            Err(HtpasswdError::Line { line: 1, .. })
        ));
    }
}
