//! GGUF files: metadata, tensor table and dequantisation (see reader.rs, dequant.rs).

pub mod dequant;
pub mod reader;

pub use reader::{GgmlType, GgufFile, GgufTensorInfo, GgufValue};
