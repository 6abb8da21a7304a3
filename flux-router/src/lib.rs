//! The Flux Attention Layer Router: one small network per transformer layer that chooses, from
//! the prompt, full or sparse attention for that whole layer. This crate knows no model: it
//! takes a layer's pre-RoPE query states and gives logits, decisions and plans.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Distribution, Tensor};
//! use flux_router::{argmax_decisions, LayerRouterConfig};
//!
//! let device = Default::default();
//! let router = LayerRouterConfig::new(64).init::<NdArray>(&device);
//! // Query states of one layer: 2 sequences, 4 heads, 500 tokens, head_dim 64.
//! let q = Tensor::<NdArray, 4>::random([2, 4, 500, 64], Distribution::Default, &device);
//! let logits = router.forward(q, None).unwrap();
//! // A fresh router starts all-FA (zero last layer, FA bias 4.5).
//! assert_eq!(argmax_decisions(logits), vec![true, true]);
//! ```

mod atomic_file;
mod decision;
mod error;
mod objective;
mod plan;
mod router;
mod router_set;
mod schedule;

pub use atomic_file::write_atomically;
pub use decision::{argmax_decisions, full_flags, GumbelSoftmax, SoftDecision};
pub use error::{printable, Result, RouterError};
pub use flux_attention::silu;
pub use objective::{sparsity_of, SparsityObjective, TaskCategory};
pub use plan::{ForcedPlan, LayerRoute, RoutingPlan};
pub use router::{pool_query_states, LayerRouter, LayerRouterConfig, FULL_LOGIT, SPARSE_LOGIT};
pub use router_set::{RouterMeta, RouterSet};
/// Storage types of router files ([`RouterSet::save_as`]).
pub use safetensors::Dtype;
pub use schedule::TemperatureSchedule;
