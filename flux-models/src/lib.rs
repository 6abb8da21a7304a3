//! flux-models: Llama / Qwen2 / Qwen3 in burn, loaded from Hugging Face safetensors folders or
//! GGUF files, with tokenizers, chat templates, a KV cache and generation.
//!
//! ```no_run
//! use burn::backend::NdArray;
//! use flux_models::{generate, load, GenerationConfig};
//!
//! let device = Default::default();
//! let loaded = load::<NdArray>("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &device)?;
//! let prompt = loaded.tokenizer.encode("The capital of France is", true)?;
//! let out = generate(&loaded.model, &loaded.tokenizer, &prompt, &GenerationConfig::greedy(16), |text| {
//!     print!("{text}")
//! })?;
//! println!("\n{:.1} tokens/s", out.generated_tokens_per_second());
//! # Ok::<(), flux_models::ModelError>(())
//! ```

pub mod backend;
pub mod config;
pub mod convert;
pub mod error;
pub mod eval;
pub mod generation;
pub mod gguf;
pub mod loader;
pub mod model;
pub mod router_data;
pub mod tokenizer;
pub mod training;
pub mod weights;

pub use config::{Architecture, RopeScaling, TransformerConfig};
pub use error::{ModelError, Result};
pub use generation::{
    generate, generate_batch, generate_routed, GenerationConfig, GenerationOutput, StopReason,
};
pub use loader::{load, load_as, load_weights, load_weights_as, LoadedModel};
pub use model::{dtype_name, KvCache, Model, Routing, TrainForward};
pub use router_data::{
    build_router_data, read_split, write_split, DataConfig, DataManifest, RouterSample, Sources,
};
pub use tokenizer::Tokenizer;
