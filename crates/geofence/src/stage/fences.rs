//! The operator's files, the fences and the rules: read, checked, and
//! watched for changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::StageError;
use crate::FenceSet;
use crate::rules::Rules;

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

/// Loads the rules: none without a file. `groups` are `[access]`'s.
pub fn load_rules(
    path: Option<&Path>,
    groups: &BTreeMap<String, Vec<String>>,
) -> Result<Rules, StageError> {
    match path {
        None => Ok(Rules::none()),
        Some(path) => Ok(Rules::load(path, groups)?),
    }
}

/// How a watched file is read.
pub type Load<T> = Arc<dyn Fn(&Path) -> Result<T, StageError> + Send + Sync>;

/// A file as last read, to notice when it changes.
pub struct Watched<T> {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    load: Load<T>,
}

impl<T: Send + 'static> Watched<T> {
    /// The file at `path`, as it is now, read by `load` when it changes.
    pub fn new(path: PathBuf, load: Load<T>) -> Self {
        let stamp = stamp(&path);
        Watched { path, stamp, load }
    }

    /// What the file says when it changed since the last call (an error
    /// when it changed into something unusable), `None` when it did not.
    pub async fn reload(&mut self) -> Option<Result<T, StageError>> {
        let now = stamp(&self.path);
        if now == self.stamp {
            return None;
        }
        self.stamp = now;
        let (path, load) = (self.path.clone(), Arc::clone(&self.load));
        Some(
            tokio::task::spawn_blocking(move || load(&path))
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
