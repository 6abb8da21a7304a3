//! Shared command-line pieces of the flux programs.

pub mod routing_args;
