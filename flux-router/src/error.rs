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
    #[error("router file {path}: {}", printable(.message))]
    Format { path: PathBuf, message: String },
    /// A tensor of the router file is missing or has the wrong shape.
    #[error("router file {path}: tensor `{}`: {}", printable(.tensor), printable(.message))]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// The router file was trained for another model or setting.
    #[error("router file {path} does not fit this model: `{field}` is {} in the file, {model} for the model", printable(.file))]
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

/// `text` with its control characters (newlines, tabs, terminal escapes) written as escapes, so
/// that a name or message taken from a file keeps an error on one line and cannot drive the
/// terminal. Everything else, quotes included, is left as it is.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Result of flux-router.
pub type Result<T> = std::result::Result<T, RouterError>;
