//! The Layer Router of one transformer layer.

use std::ops::Range;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{backend::Backend, Tensor};

use burn::tensor::FloatDType;
use flux_attention::{accumulation_dtype, linear, silu, FluxBackend, LinearBackend, WeightLayout};

use crate::error::{Result, RouterError};

/// Logit index of full attention in the router's output.
pub const FULL_LOGIT: usize = 0;
/// Logit index of sparse attention in the router's output.
pub const SPARSE_LOGIT: usize = 1;

/// Shape and initialisation of a [`LayerRouter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerRouterConfig {
    /// Width `d` of the pooled query state (the model's head_dim).
    pub head_dim: usize,
    /// Tokens pooled at each end of the context span (P).
    pub pool_tokens: usize,
    /// Initial bias of the full-attention logit, so that training starts all-FA.
    pub full_bias: f32,
}

impl LayerRouterConfig {
    /// The reference setting for `head_dim`: P = 150, FA bias 4.5.
    pub fn new(head_dim: usize) -> Self {
        Self {
            head_dim,
            pool_tokens: 150,
            full_bias: 4.5,
        }
    }

    /// A router with fresh weights: burn's default initialisation, last layer zero weights and
    /// the FA bias.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerRouter<B> {
        let d = self.head_dim;
        let linear = |i, o| {
            let l: Linear<B> = LinearConfig::new(i, o).init(device);
            // burn initialises parameters lazily, and every clone of a lazy parameter draws its
            // own values: draw them now so that clones share the router's weights.
            let _ = l.weight.val();
            if let Some(b) = &l.bias {
                let _ = b.val();
            }
            l
        };
        let mut last: Linear<B> = linear(d, 2);
        last.weight = Param::from_tensor(Tensor::zeros([d, 2], device));
        last.bias = Some(Param::from_tensor(Tensor::from_floats(
            [self.full_bias, 0.0],
            device,
        )));
        LayerRouter {
            encoder_in: linear(d, 8 * d),
            encoder_out: linear(8 * d, 2 * d),
            head_in: linear(2 * d, 4 * d),
            head_mid: linear(4 * d, d),
            head_out: last,
            head_dim: d,
            pool_tokens: self.pool_tokens,
        }
    }
}

/// One layer's router: pools the layer's pre-RoPE query states over the first and last P tokens
/// of the context span and over heads, then
/// `Linear(d, 8d) -> SiLU -> Linear(8d, 2d)` (context encoder) and
/// `Linear(2d, 4d) -> SiLU -> Linear(4d, d) -> SiLU -> Linear(d, 2)` (head): logits [FA, SA].
#[derive(Module, Debug)]
pub struct LayerRouter<B: Backend> {
    pub(crate) encoder_in: Linear<B>,
    pub(crate) encoder_out: Linear<B>,
    pub(crate) head_in: Linear<B>,
    pub(crate) head_mid: Linear<B>,
    pub(crate) head_out: Linear<B>,
    pub(crate) head_dim: usize,
    pub(crate) pool_tokens: usize,
}

impl<B: Backend> LayerRouter<B> {
    /// Width of the pooled query state.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The dtype of the router's weights (and so of the query states it reads).
    pub fn dtype(&self) -> burn::tensor::DType {
        self.encoder_in.weight.val().dtype()
    }

    /// Tokens pooled at each end of the span.
    pub fn pool_tokens(&self) -> usize {
        self.pool_tokens
    }

    /// The same router for standardised inputs: afterwards it computes on `pooled` what it
    /// computed before on `(pooled - mean) / std` (folded into the first layer, so the file
    /// format and the inference path do not change).
    ///
    /// Pooled query states share a large common part across prompts; training on the raw
    /// values moves every prompt's logits together, so that routing barely depends on the
    /// input. `mean` and `std` (`[head_dim]`, every `std` positive and finite) are statistics
    /// of the pooled states over training prompts.
    pub fn standardize_inputs(mut self, mean: Tensor<B, 1>, std: Tensor<B, 1>) -> Result<Self> {
        let d = self.head_dim;
        for (name, t) in [("mean", &mean), ("std", &std)] {
            if t.dims() != [d] {
                return Err(RouterError::InvalidArgument {
                    argument: "standardize_inputs",
                    message: format!("{name} has shape {:?}, the router expects [{d}]", t.dims()),
                });
            }
        }
        let bad_std = std
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| RouterError::InvalidArgument {
                argument: "standardize_inputs",
                message: format!("std: {e:?}"),
            })?
            .into_iter()
            .find(|s| !(s.is_finite() && *s > 0.0));
        if let Some(s) = bad_std {
            return Err(RouterError::InvalidArgument {
                argument: "standardize_inputs",
                message: format!("std holds {s}: every entry must be positive and finite"),
            });
        }
        // W x' + b with x' = (x - m) / s  ==  (W / s) x + (b - W (m / s)); burn keeps W as [in, out].
        let inv = std.recip();
        let w = self.encoder_in.weight.val();
        let folded_w = w.clone() * inv.clone().reshape([d, 1]);
        let shift = (mean * inv).reshape([1, d]).matmul(w).reshape([8 * d]);
        let b = match &self.encoder_in.bias {
            Some(b) => b.val() - shift,
            None => shift.neg(),
        };
        // Detached: parameters must be leaves of any later graph.
        self.encoder_in.weight = Param::from_tensor(folded_w.detach());
        self.encoder_in.bias = Some(Param::from_tensor(b.detach()));
        Ok(self)
    }
}

impl<B: FluxBackend> LayerRouter<B> {
    /// Logits `[b, 2]` (full, sparse) from query states `q` `[b, heads, n, d]` (after q_proj and
    /// q_norm, before RoPE). `spans[i]` is the token range of sequence `i` that holds its
    /// context (padding excluded); `None` means every token.
    /// `q` may be in any float dtype: the pooled state is cast to the router's.
    pub fn forward(&self, q: Tensor<B, 4>, spans: Option<&[Range<usize>]>) -> Result<Tensor<B, 2>> {
        let pooled = pool_query_states(q, spans, self.pool_tokens, self.head_dim)?;
        Ok(self.forward_pooled(pooled.cast(FloatDType::from(self.dtype()))))
    }

    /// Logits `[b, 2]` from pooled states `[b, d]`.
    pub fn forward_pooled(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = apply(&self.encoder_out, silu(apply(&self.encoder_in, pooled)));
        let x = silu(apply(&self.head_in, x));
        let x = silu(apply(&self.head_mid, x));
        apply(&self.head_out, x)
    }
}

/// `layer(x)` through flux's linear entry point: at inference on CUDA a cuBLASLt product
/// (burn's small matmuls cost a router far more than its arithmetic); with tracked parameters
/// (training) burn's matmul, recorded for the backward pass.
fn apply<B: FluxBackend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    // burn keeps the weight as [in, out].
    linear(
        x,
        layer.weight.val(),
        layer.bias.as_ref().map(Param::val),
        WeightLayout::InOut,
    )
}

/// Mean of the first and last `p` tokens of each sequence's span (all of it when shorter than
/// `2p`), then mean over heads: `[b, heads, n, d]` -> `[b, d]`, in f32 for half-precision `q`
/// (in `q`'s dtype otherwise).
pub fn pool_query_states<B: LinearBackend>(
    q: Tensor<B, 4>,
    spans: Option<&[Range<usize>]>,
    p: usize,
    head_dim: usize,
) -> Result<Tensor<B, 2>> {
    let [b, _, n, d] = q.dims();
    if d != head_dim {
        return Err(RouterError::InvalidArgument {
            argument: "q",
            message: format!("query states have head_dim {d}, the router expects {head_dim}"),
        });
    }
    if p == 0 {
        return Err(RouterError::InvalidArgument {
            argument: "pool_tokens",
            message: "the router must pool at least one token at each end".into(),
        });
    }
    let whole = vec![0..n; b];
    let spans = spans.unwrap_or(&whole);
    if spans.len() != b {
        return Err(RouterError::InvalidArgument {
            argument: "spans",
            message: format!("{} spans for a batch of {b} sequences", spans.len()),
        });
    }
    let mut rows = Vec::with_capacity(b);
    for (i, span) in spans.iter().enumerate() {
        if span.is_empty() || span.end > n {
            return Err(RouterError::InvalidArgument {
                argument: "spans",
                message: format!("span {span:?} of sequence {i} is empty or outside {n} tokens"),
            });
        }
        let seq = q.clone().narrow(0, i, 1);
        let heads = seq.dims()[1];
        let tokens = if span.len() <= 2 * p {
            seq.narrow(2, span.start, span.len())
        } else {
            Tensor::cat(
                vec![
                    seq.clone().narrow(2, span.start, p),
                    seq.narrow(2, span.end - p, p),
                ],
                2,
            )
        };
        // Only the pooled tokens are widened; every head has as many, so one mean over heads
        // and tokens is the mean of the per-head means. The mean is a product with a row of
        // 1 / count: a reduction along the rows would give each of the d outputs one thread
        // walking thousands of rows on the GPU, a GEMM splits that work.
        let count = heads * tokens.dims()[2];
        let wide = accumulation_dtype(tokens.dtype());
        let tokens = tokens.cast(wide).reshape([count, d]);
        let weights = Tensor::<B, 2>::full(
            [1, count],
            1.0 / count as f64,
            (&q.device(), burn::tensor::DType::from(wide)),
        );
        rows.push(linear(weights, tokens, None, WeightLayout::InOut));
    }
    Ok(Tensor::cat(rows, 0))
}
