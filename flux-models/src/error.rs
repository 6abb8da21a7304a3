//! The one error type of flux-models. Every variant names the file, tensor, key or field at fault.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read. The I/O error is part of the message, not a
    /// separate cause, so that a chain printed with `{:#}` says it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A JSON file (config.json, tokenizer_config.json, index) is malformed.
    #[error("{path}: malformed JSON: {message}")]
    Json { path: PathBuf, message: String },
    /// A required field of a config file is missing or has the wrong type.
    #[error("{path}: field `{field}`: {message}")]
    ConfigField {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// The `architectures` / `model_type` (or GGUF `general.architecture`) is not supported.
    #[error("{path}: unsupported architecture `{name}` (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        name: String,
        supported: &'static str,
    },
    /// A safetensors file is truncated or its header is malformed.
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A tensor the architecture needs is in none of the weight files.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    /// A tensor exists but has the wrong shape for the configuration.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor is stored in a data type the loader does not read.
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}")]
    TensorDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A GGUF file is malformed (bad magic, unsupported version, truncated, bad metadata).
    #[error("{path}: invalid GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    /// A GGUF tensor uses a quantisation type this crate cannot dequantise.
    #[error("{path}: tensor `{tensor}` uses unsupported GGUF type {ggml_type}")]
    GgufTensorType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
    },
    /// The tokenizer could not be found, read or built.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A chat template failed to compile or render.
    #[error("chat template: {message}")]
    ChatTemplate { message: String },
    /// An argument given to the library is out of range (names the argument).
    #[error("invalid argument `{argument}`: {message}")]
    InvalidArgument { argument: String, message: String },
    /// A router training data file (`train.bin.gz`, `manifest.json`) is malformed.
    #[error("{path}: invalid router data file: {message}")]
    RouterData { path: PathBuf, message: String },
    /// A corpus the router training data is built from is missing or malformed.
    #[error("{path}: {message}")]
    DataSource { path: PathBuf, message: String },
    /// A line of an evaluation task file is malformed (names the file and the line).
    #[error("{path}:{line}: {message}")]
    TaskFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Router training cannot start or continue (names the run directory, file or argument).
    #[error("{path}: {message}")]
    Training { path: PathBuf, message: String },
    /// A tensor operation of the backend failed.
    #[error("{0}")]
    Attention(#[from] flux_attention::AttentionError),
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
