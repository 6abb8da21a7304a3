//! The Gumbel-softmax temperature schedule.

use serde::{Deserialize, Serialize};

/// Cosine annealing of the temperature from `start` to `end` over the first `anneal_fraction` of
/// `total_steps`, then `end`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TemperatureSchedule {
    /// Temperature at step 0.
    pub start: f64,
    /// Temperature from the end of annealing on.
    pub end: f64,
    /// Share of the steps spent annealing.
    pub anneal_fraction: f64,
    /// Steps of the whole training run.
    pub total_steps: usize,
}

impl TemperatureSchedule {
    /// The reference schedule: 1.5 -> 1.0 over the first 60 % of `total_steps`.
    pub fn new(total_steps: usize) -> Self {
        Self {
            start: 1.5,
            end: 1.0,
            anneal_fraction: 0.6,
            total_steps,
        }
    }

    /// Temperature at `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        let anneal_steps = self.anneal_fraction * self.total_steps as f64;
        if anneal_steps <= 0.0 || step as f64 >= anneal_steps {
            return self.end;
        }
        let progress = step as f64 / anneal_steps;
        self.end + (self.start - self.end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
