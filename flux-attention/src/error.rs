//! Errors of flux-attention: each names the tensor or argument at fault.

/// A shape or argument given to the attention entry point is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttentionError {
    /// A tensor does not have the shape the others imply.
    #[error("attention: tensor `{tensor}` has shape {found:?}, expected {expected}")]
    Shape {
        tensor: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    /// An argument is out of range.
    #[error("attention: argument `{argument}`: {message}")]
    InvalidArgument {
        argument: &'static str,
        message: String,
    },
}
