/// Why a fused kernel call was refused (checked on the host before any launch) or failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    /// A tensor has the wrong shape, dtype or device.
    #[error("fused attention: tensor `{tensor}` {message}")]
    Tensor {
        /// The tensor at fault (`q`, `k`, `v`).
        tensor: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An argument of the [`crate::AttentionSpec`] is out of range.
    #[error("fused attention: argument `{argument}` {message}")]
    Argument {
        /// The argument at fault.
        argument: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A cuBLASLt linear-layer call was refused or failed (the caller falls back to burn's matmul).
    #[error("cuBLASLt linear layer: {0}")]
    Linear(String),
}
