//! Training batches: router samples padded into one token tensor.

use std::ops::Range;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use flux_router::TaskCategory;

use crate::router_data::RouterSample;

/// A batch of router-training samples on a device, right-padded to the longest.
#[derive(Debug, Clone)]
pub struct RouterBatch<B: Backend> {
    /// Token ids `[b, n]` (padding positions hold token 0 and are never attended).
    pub tokens: Tensor<B, 2, Int>,
    /// The same ids on the host, per sequence (unpadded).
    pub ids: Vec<Vec<u32>>,
    /// Where each sequence's tokens are: `0..len`.
    pub spans: Vec<Range<usize>>,
    /// What each sequence's router pools: the prompt, `0..answer.start` (what the router sees
    /// at inference, before any answer exists).
    pub pool_spans: Vec<Range<usize>>,
    /// The tokens scored by the LM loss (each predicted from the position before it).
    pub answers: Vec<Range<usize>>,
    /// Task category of each sequence.
    pub categories: Vec<TaskCategory>,
    /// Sparsity target of each sequence.
    pub targets: Vec<f64>,
    /// Where the batch sits in the run.
    pub position: BatchPosition,
}

/// Where a batch sits in a training run: what its step's schedule and noise depend on, so that
/// neither needs a counter (a resumed run, or one of several devices, computes the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchPosition {
    /// The checkpoint interval (burn-train epoch, 0-based).
    pub epoch: usize,
    /// The micro-batch within the epoch, counted on this loader (one device's share).
    pub micro_batch: usize,
    /// The index of the batch's first sample in the run's whole sample stream (unique per
    /// batch over all devices).
    pub first_item: usize,
}

impl<B: Backend> RouterBatch<B> {
    /// Pads `samples` into a batch on `device`.
    pub fn new(samples: &[&RouterSample], device: &B::Device) -> Self {
        let n = samples.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(samples.len() * n);
        for s in samples {
            flat.extend(s.ids.iter().map(|&t| t as i64));
            flat.extend(std::iter::repeat_n(0i64, n - s.ids.len()));
        }
        let tokens = Tensor::from_data(TensorData::new(flat, [samples.len(), n]), device);
        Self {
            tokens,
            ids: samples.iter().map(|s| s.ids.clone()).collect(),
            spans: samples.iter().map(|s| 0..s.ids.len()).collect(),
            pool_spans: samples.iter().map(|s| 0..s.answer.start).collect(),
            answers: samples.iter().map(|s| s.answer.clone()).collect(),
            categories: samples.iter().map(|s| s.category).collect(),
            targets: samples.iter().map(|s| s.target).collect(),
            position: BatchPosition::default(),
        }
    }

    /// The batch, placed at `position`.
    pub fn at(mut self, position: BatchPosition) -> Self {
        self.position = position;
        self
    }

    /// Sequences in the batch.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Tokens in the batch, padding excluded.
    pub fn num_tokens(&self) -> usize {
        self.spans.iter().map(Range::len).sum()
    }
}
