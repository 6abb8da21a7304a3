//! What to build: seed, sample counts and token budgets.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Smallest token budget a sample may have.
pub const MIN_LENGTH: usize = 512;
/// Largest token budget a sample may have.
pub const MAX_LENGTH: usize = 1 << 20;

/// The builder's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Seed of the whole set; every sample derives its own from it.
    pub seed: u64,
    /// Number of training samples.
    pub train: usize,
    /// Number of validation samples.
    pub valid: usize,
    /// Token budgets; each sample draws one uniformly and fills 70-100% of it.
    pub lengths: Vec<usize>,
}

impl DataConfig {
    /// Checks the lengths (at least one, each in `MIN_LENGTH..=MAX_LENGTH`).
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| ModelError::InvalidArgument {
            argument: "lengths".into(),
            message,
        };
        if self.lengths.is_empty() {
            return Err(bad("no token budget given".into()));
        }
        if let Some(&l) = self
            .lengths
            .iter()
            .find(|&&l| !(MIN_LENGTH..=MAX_LENGTH).contains(&l))
        {
            return Err(bad(format!(
                "{l} is outside {MIN_LENGTH}..={MAX_LENGTH} tokens"
            )));
        }
        Ok(())
    }
}
