//! The revocation list: ids of tokens and share links no longer
//! accepted, one a line. Every process reads the file again when it
//! changes (looked at, at most once a second, when a token is used), so a
//! revocation reaches every API process within a second or two of the
//! file reaching its disk.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// How often the file's modification time is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Ids in the list at most; the rest of a longer file is ignored (and
/// said so).
pub const MAX_REVOKED: usize = 100_000;

/// The list, and when its file was last read.
pub struct Revoked {
    path: Option<PathBuf>,
    state: RwLock<State>,
}

struct State {
    ids: HashSet<String>,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Revoked {
    /// The list in `path` (none: nothing is revoked). A file that cannot
    /// be read leaves the list as it was (and is said so), never empty.
    pub fn new(path: Option<PathBuf>) -> Self {
        let r = Revoked {
            path,
            state: RwLock::new(State {
                ids: HashSet::new(),
                modified: None,
                checked: None,
            }),
        };
        r.refresh(true);
        r
    }

    /// Whether `id` is revoked.
    pub fn contains(&self, id: &str) -> bool {
        self.refresh(false);
        self.state
            .read()
            .map(|s| s.ids.contains(id))
            // A poisoned lock: refuse rather than accept.
            .unwrap_or(true)
    }

    fn refresh(&self, now: bool) {
        let Some(path) = &self.path else { return };
        {
            let Ok(s) = self.state.read() else { return };
            if !now && s.checked.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
                return;
            }
        }
        let Ok(mut s) = self.state.write() else {
            return;
        };
        s.checked = Some(Instant::now());
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == s.modified {
            return;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let ids: HashSet<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .take(MAX_REVOKED)
                    .map(str::to_owned)
                    .collect();
                if ids.len() == MAX_REVOKED {
                    tracing::warn!(path = %path.display(), "the revocation list holds {MAX_REVOKED} ids or more; the rest are not read");
                }
                tracing::info!(path = %path.display(), revoked = ids.len(), "revocation list read");
                s.ids = ids;
                s.modified = modified;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the revocation list; keeping the one in use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_and_read_again_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("revoked.txt");
        std::fs::write(&file, "# revoked\nold-token\n\n").unwrap();
        let r = Revoked::new(Some(file.clone()));
        assert!(r.contains("old-token") && !r.contains("ha"));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, "old-token\nha\n").unwrap();
        // Looked at again once a second has passed since the last look.
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert!(r.contains("ha"));
        assert!(!Revoked::new(None).contains("ha"));
    }
}
