//! The learning-rate schedule of router training: linear warm-up, then cosine decay.

use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;

/// Linear warm-up from 0 over `warmup` iterations to `peak`, then cosine decay to
/// `peak * min_ratio` at `total` iterations (and that value after). Counted in calls to
/// `step`, which burn-train makes once per micro-batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Highest learning rate.
    pub peak: f64,
    /// Iterations of warm-up.
    pub warmup: usize,
    /// Iterations of the whole run.
    pub total: usize,
    /// Final learning rate over the peak.
    pub min_ratio: f64,
    /// Iterations done.
    pub iteration: usize,
}

impl WarmupCosine {
    /// A schedule peaking at `peak` with `warmup_fraction` of `total` iterations of warm-up,
    /// decaying to zero.
    pub fn new(peak: f64, warmup_fraction: f64, total: usize) -> Self {
        Self {
            peak,
            warmup: (warmup_fraction * total as f64).round() as usize,
            total: total.max(1),
            min_ratio: 0.0,
            iteration: 0,
        }
    }

    /// The learning rate at iteration `i` (1-based, as burn-train's first step is 1).
    pub fn at(&self, i: usize) -> f64 {
        if self.warmup > 0 && i <= self.warmup {
            return self.peak * i as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((i - self.warmup) as f64 / span).min(1.0);
        let min = self.peak * self.min_ratio;
        min + (self.peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl LrScheduler for WarmupCosine {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        self.iteration += 1;
        self.at(self.iteration)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.iteration
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.iteration = record;
        self
    }
}
