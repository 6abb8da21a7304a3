//! Fused attention kernels for flux, written in cubecl so that one source serves CUDA and wgpu.
//!
//! The crate is empty until the kernel work lands: every backend currently runs the plain
//! tensor-op attention of `flux-attention`, which is the reference these kernels will be
//! tested against.
