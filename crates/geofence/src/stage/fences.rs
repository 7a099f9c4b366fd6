//! The operator fences file: read, checked, and watched for changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::StageError;
use crate::FenceSet;

/// Loads the operator fences: none without a file.
pub fn load_fences(path: Option<&Path>) -> Result<FenceSet, StageError> {
    let Some(path) = path else {
        return Ok(FenceSet::new(Vec::new()));
    };
    let text = std::fs::read_to_string(path).map_err(|source| StageError::Read {
        path: path.to_owned(),
        source,
    })?;
    FenceSet::from_geojson(&text).map_err(|source| StageError::Fences {
        path: path.to_owned(),
        source,
    })
}

/// The fences file as last read, to notice when it changes.
pub(super) struct FencesFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
}

impl FencesFile {
    /// The file at `path`, as it is now.
    pub(super) fn new(path: PathBuf) -> Self {
        let stamp = stamp(&path);
        FencesFile { path, stamp }
    }

    /// The file's fences when it changed since the last call (an error
    /// when it changed into something unusable), `None` when it did not.
    pub(super) async fn reload(&mut self) -> Option<Result<FenceSet, StageError>> {
        let now = stamp(&self.path);
        if now == self.stamp {
            return None;
        }
        self.stamp = now;
        let path = self.path.clone();
        Some(
            tokio::task::spawn_blocking(move || load_fences(Some(&path)))
                .await
                .unwrap_or_else(|e| Err(StageError::Thread(e.to_string()))),
        )
    }
}

/// The file's identity on disk (modified time and length), to notice a
/// change without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
