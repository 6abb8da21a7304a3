//! The one error type of flux-models. Every variant names the file, tensor, key or field at fault,
//! on one line: text that comes from a file is shown through [`printable`].

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read. The I/O error is part of the message, not a
    /// separate cause, so that a chain printed with `{:#}` says it once.
    #[error("{}: {error}", shown(.path))]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A JSON file (config.json, tokenizer_config.json, index) is malformed.
    #[error("{}: malformed JSON: {}", shown(.path), printable(.message))]
    Json { path: PathBuf, message: String },
    /// A required field of a config file is missing or has the wrong type.
    #[error("{}: field `{}`: {}", shown(.path), printable(.field), printable(.message))]
    ConfigField {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// The `architectures` / `model_type` (or GGUF `general.architecture`) is not supported.
    #[error("{}: unsupported architecture `{}` (supported: {supported})", shown(.path), printable(.name))]
    UnknownArchitecture {
        path: PathBuf,
        name: String,
        supported: &'static str,
    },
    /// A safetensors file is truncated or its header is malformed.
    #[error("{}: invalid safetensors file: {}", shown(.path), printable(.message))]
    Safetensors { path: PathBuf, message: String },
    /// A tensor the architecture needs is in none of the weight files.
    #[error("{}: missing tensor `{}`", shown(.path), printable(.tensor))]
    MissingTensor { path: PathBuf, tensor: String },
    /// A tensor exists but has the wrong shape for the configuration.
    #[error("{}: tensor `{}` has shape {found:?}, expected {expected:?}", shown(.path), printable(.tensor))]
    TensorShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor is stored in a data type the loader does not read.
    #[error("{}: tensor `{}` has unsupported dtype {}", shown(.path), printable(.tensor), printable(.dtype))]
    TensorDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A GGUF file is malformed (bad magic, unsupported version, truncated, bad metadata).
    #[error("{}: invalid GGUF file: {}", shown(.path), printable(.message))]
    Gguf { path: PathBuf, message: String },
    /// A GGUF tensor uses a quantisation type this crate cannot dequantise.
    #[error("{}: tensor `{}` uses GGUF type {ggml_type}, which flux cannot dequantise (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K): use a file quantised to one of those, or the model's safetensors", shown(.path), printable(.tensor))]
    GgufTensorType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
    },
    /// The tokenizer could not be found, read or built.
    #[error("{}: tokenizer: {}", shown(.path), printable(.message))]
    Tokenizer { path: PathBuf, message: String },
    /// A chat template failed to compile or render.
    #[error("chat template: {}", printable(.message))]
    ChatTemplate { message: String },
    /// An argument given to the library is out of range (names the argument).
    #[error("invalid argument `{argument}`: {message}")]
    InvalidArgument { argument: String, message: String },
    /// A router training data file (`train.bin.gz`, `manifest.json`) is malformed.
    #[error("{}: invalid router data file: {}", shown(.path), printable(.message))]
    RouterData { path: PathBuf, message: String },
    /// A corpus the router training data is built from is missing or malformed.
    #[error("{}: {message}", shown(.path))]
    DataSource { path: PathBuf, message: String },
    /// A line of an evaluation task file is malformed (names the file and the line).
    #[error("{}:{line}: {}", shown(.path), printable(.message))]
    TaskFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Router training cannot start or continue (names the run directory, file or argument).
    #[error("{}: {message}", shown(.path))]
    Training { path: PathBuf, message: String },
    /// A tensor operation of the backend failed.
    #[error("{0}")]
    Attention(#[from] flux_attention::AttentionError),
}

pub use flux_router::printable;

/// A path through [`printable`]: shard names come from index files.
fn shown(path: &std::path::Path) -> String {
    printable(&path.display().to_string()).into_owned()
}

/// Result alias of flux-models.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            error: source,
        }
    }

    /// Shorthand for a malformed GGUF file.
    pub fn gguf(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Gguf {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("it's `a` \"b\" é"), "it's `a` \"b\" é");
        assert_eq!(printable("a\nb\t\u{1b}[2J\r"), "a\\nb\\t\\u{1b}[2J\\r");
        let e = ModelError::TensorShape {
            path: "m.safetensors".into(),
            tensor: "w\n".into(),
            expected: vec![2],
            found: vec![3],
        };
        assert_eq!(
            e.to_string(),
            "m.safetensors: tensor `w\\n` has shape [3], expected [2]"
        );
    }
}
