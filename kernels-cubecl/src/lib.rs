//! Fused attention kernels for flux, written in cubecl so that one source serves CUDA and wgpu.
//!
//! [`fused_attention`] takes burn-cubecl tensors and an [`AttentionSpec`] (which keys each query
//! sees, padding, eviction gap) and picks a kernel: FlashAttention-2-style register-level MMA
//! (`mma.sync` + `ldmatrix` + `cp.async`) on CUDA sm_80+, a flash-style kernel on the matrix
//! units (cmma) where only those exist, a plain-arithmetic one everywhere else. Every kernel is tested
//! against `flux_attention::reference`. The launch code needs the `kernels` feature; the call
//! description below is always there.
//!
//! ```
//! use kernels_cubecl::{AttentionSpec, KeyLayout, Visibility};
//!
//! // Triangle attention, head_dim 128: sink 4 + window 128, the last 64 of 1024 prompt
//! // positions dense; a cache that kept 4 sink keys and evicted 100 positions after them.
//! let mut spec = AttentionSpec::new(Visibility::Window { sink: 4, window: 128, dense: 960..1024 }, 128);
//! spec.layout = KeyLayout { kept_sink: 4, dropped: 100 };
//! assert_eq!(spec.layout.position(10), 110);
//! assert_eq!(spec.layout.stored_range(0, 200), 0..100);
//! assert!((spec.scale - 1.0 / 128f32.sqrt()).abs() < 1e-7);
//! ```

#[cfg(feature = "kernels")]
pub mod activation;
#[cfg(feature = "kernels")]
mod backward;
#[cfg(feature = "kernels")]
mod backward_mma;
#[cfg(feature = "cublas")]
pub mod blas;
#[cfg(feature = "kernels")]
mod compilation_cache;
mod error;
#[cfg(feature = "kernels")]
mod launch;
mod linear;
#[cfg(feature = "kernels")]
mod prefill_cmma;
#[cfg(feature = "kernels")]
mod prefill_mma;
#[cfg(feature = "kernels")]
mod prefill_portable;
#[cfg(feature = "kernels")]
pub mod rms_norm;
#[cfg(feature = "kernels")]
pub mod rope;
mod spec;
#[cfg(feature = "kernels")]
mod visibility;
#[cfg(feature = "kernels")]
mod xattention;

#[cfg(feature = "kernels")]
pub use backward::{
    backward_usable, check_backward, fused_attention_backward, fused_attention_with_lse,
};
#[cfg(feature = "kernels")]
pub use compilation_cache::{enable_kernel_cache, kernel_cache_dir};
pub use error::KernelError;
#[cfg(feature = "kernels")]
pub use launch::{
    check_call, choose_kernel, fused_attention, fused_attention_into, fused_attention_routed,
    CallDims, KernelChoice,
};
pub use linear::WeightLayout;
pub use spec::{AttentionSpec, BlockSelection, KeyLayout, Visibility, XAttentionBlocks};
#[cfg(feature = "kernels")]
pub use xattention::host::{check_xattention, xattention_block_scores, xattention_keep};
