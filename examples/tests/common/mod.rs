//! What the program tests share: the model cache of scripts/fetch-models.sh.
#![allow(dead_code)]

use std::path::PathBuf;

/// The model cache (`FLUX_MODELS_DIR`, default ~/.cache/flux-models).
pub fn models_dir() -> PathBuf {
    std::env::var_os("FLUX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/flux-models")
        })
}

/// The SmolLM2 GGUF of scripts/fetch-models.sh; fails with the command to run when missing.
pub fn smollm2() -> String {
    let model = models_dir().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        model.display()
    );
    model.display().to_string()
}
