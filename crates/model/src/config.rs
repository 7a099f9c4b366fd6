//! The one error every configuration section's check returns: which key
//! is wrong and a sentence saying what it must be.

/// A configuration value that cannot be used. Its message names the key
/// (`sink.max_batch_rows must be at least 1`), so it reads the same
/// whether it comes from the file, the environment or a flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The key at fault, as written in the file (`sink.max_batch_rows`).
    pub key: &'static str,
    /// What is wrong, naming the key.
    pub message: String,
}

impl ConfigError {
    /// `key` is wrong: `message` says how.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            key,
            message: message.into(),
        }
    }
}
