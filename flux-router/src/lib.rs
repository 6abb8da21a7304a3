//! The Flux Attention Layer Router (one small network per transformer layer that chooses full or
//! sparse attention for that layer from the prompt).
//!
//! The crate is empty until the router work lands; it sits between `flux-attention` and
//! `flux-models` in the dependency order, and knows no model.
