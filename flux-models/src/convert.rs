//! GGUF -> Hugging Face folder: config.json, model.safetensors (f32), tokenizer.json and
//! tokenizer_config.json, readable by flux and by transformers.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::weights::{config_from_gguf, GgufWeights, TensorSource};

/// Writes the HF folder `out` for the GGUF file `gguf` (tensors dequantised to f32, llama
/// Q/K permutation undone). Creates `out` if needed.
pub fn gguf_to_hf(gguf: &Path, out: &Path) -> Result<()> {
    let file = GgufFile::open(gguf)?;
    let config = config_from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let weights = GgufWeights::from_file(file)?;
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;

    let names = weights.names();
    let progress = ProgressBar::new(names.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    progress.set_message(format!("converting {}", gguf.display()));
    let mut tensors = BTreeMap::new();
    for name in names {
        if let Some(t) = weights.read(&name)? {
            let bytes: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.insert(name, (t.shape, bytes));
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let views = tensors
        .iter()
        .map(|(name, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Safetensors {
                    path: out.join("model.safetensors"),
                    message: format!("tensor `{name}`: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let st_path = out.join("model.safetensors");
    safetensors::serialize_to_file(views, metadata, &st_path).map_err(|e| {
        ModelError::Safetensors {
            path: st_path.clone(),
            message: e.to_string(),
        }
    })?;

    let config_path = out.join("config.json");
    let text = serde_json::to_string_pretty(&config.to_hf_json()).expect("json value serialises");
    std::fs::write(&config_path, text).map_err(|e| ModelError::io(&config_path, e))?;
    tokenizer.save_dir(out)?;
    Ok(())
}
