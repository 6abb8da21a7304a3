//! Routing plans: per sequence and per layer, full or sparse attention.

use std::str::FromStr;

use flux_attention::AttentionMode;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RouterError};

/// What one layer computes for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerRoute {
    /// Full attention.
    Full,
    /// The plan's sparse attention mode.
    Sparse,
}

/// Per sequence and per layer, full or sparse attention, and the sparse mode. Produced by the
/// routers at prefill (or forced), kept with the generation state and reused for decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingPlan {
    sparse_mode: AttentionMode,
    /// `routes[sequence][layer]`.
    routes: Vec<Vec<LayerRoute>>,
}

impl RoutingPlan {
    /// A plan from explicit routes (`routes[sequence][layer]`, every sequence with the same
    /// number of layers) and the mode sparse layers run.
    pub fn new(sparse_mode: AttentionMode, routes: Vec<Vec<LayerRoute>>) -> Result<Self> {
        sparse_mode
            .validate()
            .map_err(|e| RouterError::InvalidArgument {
                argument: "sparse_mode",
                message: e.to_string(),
            })?;
        if sparse_mode.is_full() {
            return Err(RouterError::InvalidArgument {
                argument: "sparse_mode",
                message: "the sparse mode of a plan cannot be full attention".into(),
            });
        }
        if let Some(first) = routes.first() {
            if let Some((i, r)) = routes
                .iter()
                .enumerate()
                .find(|(_, r)| r.len() != first.len())
            {
                return Err(RouterError::InvalidArgument {
                    argument: "routes",
                    message: format!(
                        "sequence {i} has {} layers, sequence 0 has {}",
                        r.len(),
                        first.len()
                    ),
                });
            }
        }
        Ok(Self {
            sparse_mode,
            routes,
        })
    }

    /// The same routes for each of `sequences` sequences.
    pub fn uniform(
        sparse_mode: AttentionMode,
        routes: Vec<LayerRoute>,
        sequences: usize,
    ) -> Result<Self> {
        Self::new(sparse_mode, vec![routes; sequences])
    }

    /// The routes of `sequence` for each of `sequences` sequences (one sequence's plan, or a
    /// one-sequence plan spread over a batch). Panics if `sequence` is not in the plan.
    pub fn of_sequence(&self, sequence: usize, sequences: usize) -> Self {
        Self {
            sparse_mode: self.sparse_mode,
            routes: vec![self.routes[sequence].clone(); sequences],
        }
    }

    /// A forced plan for a model of `num_layers` layers and `sequences` sequences.
    pub fn forced(
        forced: &ForcedPlan,
        num_layers: usize,
        sparse_mode: AttentionMode,
        sequences: usize,
    ) -> Result<Self> {
        Self::uniform(sparse_mode, forced.routes(num_layers)?, sequences)
    }

    /// The mode sparse layers run.
    pub fn sparse_mode(&self) -> AttentionMode {
        self.sparse_mode
    }

    /// Sequences described.
    pub fn sequences(&self) -> usize {
        self.routes.len()
    }

    /// Layers described (per sequence).
    pub fn num_layers(&self) -> usize {
        self.routes.first().map_or(0, Vec::len)
    }

    /// The route of `layer` for `sequence`.
    pub fn route(&self, sequence: usize, layer: usize) -> LayerRoute {
        self.routes[sequence][layer]
    }

    /// The attention mode of `layer` for `sequence`.
    pub fn mode(&self, sequence: usize, layer: usize) -> AttentionMode {
        match self.routes[sequence][layer] {
            LayerRoute::Full => AttentionMode::Full,
            LayerRoute::Sparse => self.sparse_mode,
        }
    }

    /// The routes of one sequence.
    pub fn routes(&self, sequence: usize) -> &[LayerRoute] {
        &self.routes[sequence]
    }

    /// Number of `sequence`'s layers that run sparse attention.
    pub fn sparse_layers(&self, sequence: usize) -> usize {
        self.routes[sequence]
            .iter()
            .filter(|&&x| x == LayerRoute::Sparse)
            .count()
    }

    /// Share of `sequence`'s layers that run sparse attention.
    pub fn sparsity(&self, sequence: usize) -> f64 {
        self.sparse_layers(sequence) as f64 / self.num_layers().max(1) as f64
    }

    /// One character per layer, `F` (full) or `S` (sparse), for `sequence`.
    pub fn layer_string(&self, sequence: usize) -> String {
        self.routes[sequence]
            .iter()
            .map(|r| match r {
                LayerRoute::Full => 'F',
                LayerRoute::Sparse => 'S',
            })
            .collect()
    }
}

/// A plan chosen by hand, for benchmarks and ablations.
#[derive(Debug, Clone, PartialEq)]
pub enum ForcedPlan {
    /// Every layer full.
    AllFull,
    /// Every layer sparse.
    AllSparse,
    /// The first `k` layers sparse.
    FirstSparse(usize),
    /// The last `k` layers sparse.
    LastSparse(usize),
    /// `round(fraction * layers)` sparse layers spread evenly over the depth.
    Fraction(f64),
    /// These layers (0-based) sparse.
    Layers(Vec<usize>),
}

impl ForcedPlan {
    /// The routes of a model of `num_layers` layers.
    pub fn routes(&self, num_layers: usize) -> Result<Vec<LayerRoute>> {
        let mut sparse = vec![false; num_layers];
        let bad = |message: String| RouterError::InvalidArgument {
            argument: "plan",
            message,
        };
        match self {
            Self::AllFull => {}
            Self::AllSparse => sparse.fill(true),
            Self::FirstSparse(k) | Self::LastSparse(k) if *k > num_layers => {
                return Err(bad(format!(
                    "{k} sparse layers asked of a model of {num_layers} layers"
                )))
            }
            Self::FirstSparse(k) => sparse[..*k].fill(true),
            Self::LastSparse(k) => sparse[num_layers - k..].fill(true),
            Self::Fraction(f) => {
                if !(0.0..=1.0).contains(f) {
                    return Err(bad(format!("fraction {f} is outside [0, 1]")));
                }
                let k = (f * num_layers as f64).round() as usize;
                for i in 0..k {
                    // Centres of k equal slices of the depth.
                    sparse[((2 * i + 1) * num_layers) / (2 * k)] = true;
                }
            }
            Self::Layers(list) => {
                for &l in list {
                    if l >= num_layers {
                        return Err(bad(format!(
                            "layer {l} does not exist in a model of {num_layers} layers (0-based)"
                        )));
                    }
                    sparse[l] = true;
                }
            }
        }
        Ok(sparse
            .into_iter()
            .map(|s| {
                if s {
                    LayerRoute::Sparse
                } else {
                    LayerRoute::Full
                }
            })
            .collect())
    }
}

impl FromStr for ForcedPlan {
    type Err = RouterError;

    /// `all-full`, `all-sparse`, `first:K`, `last:K`, `fraction:F` or `layers:3,5,9`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |message: String| RouterError::InvalidArgument {
            argument: "plan",
            message,
        };
        let number = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("`{v}` in `{s}` is not a layer count or index")))
        };
        match s.split_once(':') {
            None if s == "all-full" => Ok(Self::AllFull),
            None if s == "all-sparse" => Ok(Self::AllSparse),
            Some(("first", k)) => Ok(Self::FirstSparse(number(k)?)),
            Some(("last", k)) => Ok(Self::LastSparse(number(k)?)),
            Some(("fraction", f)) => f
                .trim()
                .parse::<f64>()
                .map(Self::Fraction)
                .map_err(|_| bad(format!("`{f}` in `{s}` is not a number"))),
            Some(("layers", list)) => Ok(Self::Layers(
                list.split(',')
                    .filter(|v| !v.trim().is_empty())
                    .map(number)
                    .collect::<Result<_>>()?,
            )),
            _ => Err(bad(format!(
                "unknown plan `{s}`: expected all-full, all-sparse, first:K, last:K, fraction:F or layers:A,B,.."
            ))),
        }
    }
}
