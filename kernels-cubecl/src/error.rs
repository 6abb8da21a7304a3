/// Why a fused attention call was refused. Checked on the host before any launch.
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
}
