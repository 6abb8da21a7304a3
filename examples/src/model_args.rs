//! `--model`, or `--config` with `--random-weights`: where the speed and stability harnesses
//! take their model from.

use std::path::PathBuf;

use burn::tensor::FloatDType;
use clap::Args;
use flux_attention::FluxBackend;
use flux_models::{load_as, Model, ModelError, TransformerConfig};

/// A model file, or a configuration with seeded random weights.
#[derive(Args, Clone, Debug)]
pub struct ModelSourceArgs {
    /// Model folder or GGUF file.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    pub model: Option<PathBuf>,
    /// Instead of --model: a model built from a configuration (a preset, llama-3.1-8b or
    /// qwen3-8b, or a config.json file) with seeded random weights made on the device (needs
    /// --random-weights: the speed does not depend on the values, the text does).
    #[arg(long, requires = "random_weights")]
    pub config: Option<String>,
    /// With --config: random weights (the only kind a configuration has).
    #[arg(long, requires = "config")]
    pub random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
}

impl ModelSourceArgs {
    /// The model in `dtype` on `device`, and a name for tables: the file name, or the
    /// configuration with "(random weights)".
    pub fn load<B: FluxBackend>(
        &self,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Result<(Model<B>, String), ModelError> {
        match (&self.config, &self.model) {
            (Some(config), _) => Ok((
                Model::random(
                    TransformerConfig::preset_or_file(config)?,
                    device,
                    dtype,
                    self.weights_seed,
                )?,
                format!("{config} (random weights)"),
            )),
            (None, Some(path)) => Ok((
                load_as::<B>(path, device, dtype)?.model,
                path.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )),
            (None, None) => Err(ModelError::InvalidArgument {
                argument: "model".into(),
                message: "give --model, or --config with --random-weights".into(),
            }),
        }
    }
}
