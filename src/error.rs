//! The one error type of the omex library. Every variant names the file (and where it helps, the tensor or
//! field) at fault, so that a user reading the message knows what to fix.

use std::path::PathBuf;

/// Everything that can go wrong in omex, outside the tokenizer (which has its own `TokenizerError`, wrapped here).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file from outside (GGUF, safetensors, an omex record or index) does not parse.
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },

    /// A JSON file is malformed or misses a field.
    #[error("{path}: invalid JSON: {what}")]
    Json { path: PathBuf, what: String },

    /// The files parse but disagree with each other (shapes, offsets, checksums...).
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },

    /// A model or feature the runtime does not support.
    #[error("{0}")]
    Unsupported(String),

    /// Bad arguments from the user (CLI flags, generation options).
    #[error("{0}")]
    Usage(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("GPU: {0}")]
    Gpu(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn parse(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Parse { path: path.into(), what: what.into() }
    }

    pub fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), what: what.into() }
    }

    pub fn json(path: impl Into<PathBuf>, err: serde_json::Error) -> Self {
        Error::Json { path: path.into(), what: err.to_string() }
    }
}
