//! Which attention a layer computes.

/// The attention a layer computes. Every mode is causal and GQA-aware.
///
/// Only full attention exists for now; the sparse modes of Flux Attention (streaming,
/// XAttention, triangle) are added behind this same enum so that model code never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionMode {
    /// Ordinary causal softmax attention over every earlier key.
    #[default]
    Full,
}
