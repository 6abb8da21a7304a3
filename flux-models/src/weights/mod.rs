//! Weight files. One loader per format yields named f32 tensors under Hugging Face names; the
//! model's loader maps those names to its fields.

mod gguf;
mod safetensors;

pub use self::gguf::{config_from_gguf, GgufWeights};
pub use self::safetensors::SafetensorsWeights;

use std::path::{Path, PathBuf};

use crate::error::Result;

/// A tensor in host memory, row-major, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Row-major shape (as in PyTorch).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// The transpose of a 2-D tensor, materialised row-major. `None` for other ranks.
    pub fn transposed(&self) -> Option<HostTensor> {
        let &[rows, cols] = self.shape.as_slice() else {
            return None;
        };
        let mut data = vec![0.0; rows * cols];
        for (r, row) in self.data.chunks_exact(cols).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                data[c * rows + r] = x;
            }
        }
        Some(HostTensor {
            shape: vec![cols, rows],
            data,
        })
    }
}

/// A set of named tensors read from one or more files.
pub trait TensorSource {
    /// The file or folder the tensors come from (for messages).
    fn path(&self) -> &Path;
    /// The file that holds `name`, if any tensor of that name exists.
    fn file_of(&self, name: &str) -> Option<PathBuf>;
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// Reads `name` as f32. `Ok(None)` if there is no such tensor.
    fn read(&self, name: &str) -> Result<Option<HostTensor>>;
}
