//! Fused attention kernels for flux, written in cubecl so that one source serves CUDA and wgpu.
//!
//! [`fused_attention`] takes burn-cubecl tensors and an [`AttentionSpec`] (which keys each query
//! sees, padding, eviction gap) and picks a kernel: a flash-style kernel on the matrix units
//! where the device has them, a plain-arithmetic one everywhere else. Every kernel is tested
//! against `flux_attention::reference`.

mod error;
#[cfg(feature = "kernels")]
mod launch;
#[cfg(feature = "kernels")]
mod prefill_cmma;
#[cfg(feature = "kernels")]
mod prefill_portable;
mod spec;
#[cfg(feature = "kernels")]
mod visibility;
#[cfg(feature = "kernels")]
mod xattention;

pub use error::KernelError;
#[cfg(feature = "kernels")]
pub use launch::{
    check_call, choose_kernel, fused_attention, fused_attention_into, CallDims, KernelChoice,
};
#[cfg(feature = "kernels")]
pub use xattention::host::{
    check_xattention, xattention_block_scores, xattention_keep, XAttentionBlocks,
};
pub use spec::{AttentionSpec, BlockSelection, KeyLayout, Visibility};
