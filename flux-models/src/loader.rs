//! Opening a model from what users have: a Hugging Face folder (config.json, safetensors,
//! tokenizer.json) or a single GGUF file.

use std::path::Path;

use burn::tensor::{backend::Backend, FloatDType};

use crate::config::TransformerConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::model::{default_float_dtype, Model};
use crate::tokenizer::Tokenizer;
use crate::weights::{config_from_gguf, GgufWeights, SafetensorsWeights};

/// A model with its tokenizer.
pub struct LoadedModel<B: Backend> {
    /// The network.
    pub model: Model<B>,
    /// Its tokenizer (with chat template and special tokens).
    pub tokenizer: Tokenizer,
}

/// Loads a model and its tokenizer from a HF folder or a GGUF file (any path that is a file is
/// read as GGUF, so a wrong file gets the GGUF reader's precise error), in the device's default
/// float dtype (f32 unless set otherwise).
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    load_as(path, device, default_float_dtype::<B>(device))
}

/// [`load`] with the weights converted once, on the host, to `dtype` (see
/// [`Model::from_source_as`]).
pub fn load_as<B: Backend>(
    path: &Path,
    device: &B::Device,
    dtype: FloatDType,
) -> Result<LoadedModel<B>> {
    if path.is_file() {
        let file = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let config = config_from_gguf(&file)?;
        let weights = GgufWeights::from_file(file)?;
        let model = Model::from_source_as(config, &weights, device, dtype)?;
        Ok(LoadedModel { model, tokenizer })
    } else {
        let model = load_weights_as(path, device, dtype)?;
        let tokenizer = Tokenizer::from_dir(path)?;
        Ok(LoadedModel { model, tokenizer })
    }
}

/// Loads only the network of a HF folder (config.json + safetensors), without a tokenizer, in
/// the device's default float dtype.
pub fn load_weights<B: Backend>(dir: &Path, device: &B::Device) -> Result<Model<B>> {
    load_weights_as(dir, device, default_float_dtype::<B>(device))
}

/// [`load_weights`] in `dtype`.
pub fn load_weights_as<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: FloatDType,
) -> Result<Model<B>> {
    if !dir.is_dir() {
        return Err(ModelError::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a model folder (config.json + *.safetensors) nor a GGUF file",
            ),
        ));
    }
    let config = TransformerConfig::from_file(&dir.join("config.json"))?;
    let weights = SafetensorsWeights::open(dir)?;
    Model::from_source_as(config, &weights, device, dtype)
}
