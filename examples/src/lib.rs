//! Shared command-line pieces of the flux programs.

pub mod dtype_args;
pub mod eval_plots;
pub mod exit;
pub mod logits;
pub mod model_args;
pub mod routing_args;
