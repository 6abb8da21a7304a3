//! Shared command-line pieces of the flux programs.

pub mod eval_plots;
pub mod exit;
pub mod routing_args;
