//! Errors of flux-router: each names the file, layer, field or argument at fault.

use std::path::PathBuf;

/// Something wrong with a router file, a plan or an argument.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The router file could not be read or written (the I/O error is part of the message, so
    /// a chain printed with `{:#}` says it once).
    #[error("router file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The router file is not a valid flux router safetensors file.
    #[error("router file {path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A tensor of the router file is missing or has the wrong shape.
    #[error("router file {path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// The router file was trained for another model or setting.
    #[error("router file {path} does not fit this model: `{field}` is {file} in the file, {model} for the model")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        file: String,
        model: String,
    },
    /// An argument is out of range.
    #[error("router: argument `{argument}`: {message}")]
    InvalidArgument {
        argument: &'static str,
        message: String,
    },
}

/// Result of flux-router.
pub type Result<T> = std::result::Result<T, RouterError>;
