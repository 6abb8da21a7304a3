//! Which attention a layer computes.

use serde::{Deserialize, Serialize};

use crate::error::AttentionError;

/// The attention a layer computes. Every mode is causal and GQA-aware.
///
/// A query at absolute position `i` sees key `j <= i` when:
/// - `Full`: always;
/// - `Streaming { sink, window }`: `j < sink` or `i - j < window`;
/// - `Triangle { sink, window, last_queries }`: as `Streaming`, except that the last
///   `last_queries` positions of the prompt see every earlier key (they carry the question);
///   decode steps after the prompt are `Streaming`;
/// - `XAttention { block, stride, threshold }`: at prefill, the key blocks (of `block` tokens)
///   chosen per query block and head by strided anti-diagonal scoring (see
///   [`crate::xattention`]); at decode, every key (as the reference method does).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttentionMode {
    /// Ordinary causal softmax attention over every earlier key.
    #[default]
    Full,
    /// Attention sink plus sliding window.
    Streaming {
        /// Leading tokens every query sees.
        sink: usize,
        /// Most recent tokens (the query's own included) every query sees.
        window: usize,
    },
    /// Block-sparse prefill with key blocks chosen from an anti-diagonal estimate.
    #[serde(rename = "xattention")]
    XAttention {
        /// Block size in tokens (query and key blocks).
        block: usize,
        /// Anti-diagonal stride of the estimate; divides `block`.
        stride: usize,
        /// Share of each query block's estimated attention mass the kept key blocks reach.
        threshold: f64,
    },
    /// Streaming for every query except the last `last_queries` of the prompt, which are dense.
    Triangle {
        /// Leading tokens every query sees.
        sink: usize,
        /// Most recent tokens every query sees.
        window: usize,
        /// Trailing prompt queries that attend densely.
        last_queries: usize,
    },
}

impl AttentionMode {
    /// `Streaming` with the reference training script's sink 128 and window 2048.
    pub const fn streaming() -> Self {
        Self::Streaming {
            sink: 128,
            window: 2048,
        }
    }

    /// `XAttention` with the reference defaults: blocks of 128, stride 16, threshold 0.9.
    pub const fn xattention() -> Self {
        Self::XAttention {
            block: 128,
            stride: 16,
            threshold: 0.9,
        }
    }

    /// `Triangle` with sink 128, window 2048 and the last 128 prompt queries dense.
    pub const fn triangle() -> Self {
        Self::Triangle {
            sink: 128,
            window: 2048,
            last_queries: 128,
        }
    }

    /// Whether this is full attention.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full)
    }

    /// Short name: `full`, `streaming`, `xattention` or `triangle`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Streaming { .. } => "streaming",
            Self::XAttention { .. } => "xattention",
            Self::Triangle { .. } => "triangle",
        }
    }

    /// The sink and window a decode step of this mode reads, or `None` when it reads every key.
    pub fn decode_window(&self) -> Option<(usize, usize)> {
        match *self {
            Self::Streaming { sink, window } | Self::Triangle { sink, window, .. } => {
                Some((sink, window))
            }
            Self::Full | Self::XAttention { .. } => None,
        }
    }

    /// Checks every parameter; the error names the one out of range.
    pub fn validate(&self) -> Result<(), AttentionError> {
        let bad = |argument: &'static str, message: String| {
            Err(AttentionError::InvalidArgument { argument, message })
        };
        match *self {
            Self::Full => Ok(()),
            Self::Streaming { window, .. } | Self::Triangle { window, .. } if window == 0 => bad(
                "window",
                format!("{} window must be at least 1 token", self.name()),
            ),
            Self::Streaming { .. } | Self::Triangle { .. } => Ok(()),
            Self::XAttention {
                block,
                stride,
                threshold,
            } => {
                if block == 0 {
                    bad("block", "xattention block must be at least 1 token".into())
                } else if stride == 0 || block % stride != 0 {
                    bad(
                        "stride",
                        format!("xattention stride {stride} must be positive and divide the block {block}"),
                    )
                } else if !(threshold > 0.0 && threshold <= 1.0) {
                    bad(
                        "threshold",
                        format!("xattention threshold {threshold} must be in (0, 1]"),
                    )
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl std::fmt::Display for AttentionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Full => write!(f, "full"),
            Self::Streaming { sink, window } => {
                write!(f, "streaming(sink {sink}, window {window})")
            }
            Self::XAttention {
                block,
                stride,
                threshold,
            } => write!(
                f,
                "xattention(block {block}, stride {stride}, threshold {threshold})"
            ),
            Self::Triangle {
                sink,
                window,
                last_queries,
            } => write!(
                f,
                "triangle(sink {sink}, window {window}, last {last_queries} queries dense)"
            ),
        }
    }
}
