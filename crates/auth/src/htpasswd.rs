//! The htpasswd file: `user:bcrypt-hash` lines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

/// Users and their bcrypt hashes.
#[derive(Debug, Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, Arc<str>>,
}

impl Htpasswd {
    /// Reads `user:hash` lines; blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path) -> Result<Self, HtpasswdError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|line| HtpasswdError::Line { path: shown, line })
    }

    /// Parses the file's text; the 1-based number of the first bad line.
    pub fn parse(text: &str) -> Result<Self, usize> {
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
                    users.insert(user.to_owned(), Arc::from(hash));
                }
                _ => return Err(i + 1),
            }
        }
        Ok(Self { users })
    }

    /// The hash of `user`, if it is one.
    pub fn hash(&self, user: &str) -> Option<&Arc<str>> {
        self.users.get(user)
    }

    /// The highest bcrypt cost among the users (10 with none): what an
    /// unknown user's check costs too, so that it takes as long.
    pub fn max_cost(&self) -> u32 {
        self.users
            .values()
            .filter_map(|h| h.get(4..6)?.parse().ok())
            .max()
            .unwrap_or(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_costs() {
        let h = Htpasswd::parse(
            "# users\n\njane:$2y$05$abcdefghijklmnopqrstuu5sYB9d2ZfUtqWOdN4rFlZjJLyN7fHVe\nbob:$2b$12$x\n",
        )
        .unwrap();
        assert!(h.hash("jane").is_some() && h.hash("bob").is_some() && h.hash("eve").is_none());
        assert_eq!(h.max_cost(), 12);
        assert_eq!(
            Htpasswd::parse("ok:$2y$04$x\njane:plaintext\n").unwrap_err(),
            2
        );
        assert_eq!(Htpasswd::default().max_cost(), 10);
    }
}
