//! Every loader error names the file and the tensor, key or field at fault; none panics.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use flux_models::weights::{SafetensorsWeights, TensorSource};
use flux_models::{load, load_weights, ModelError, TransformerConfig};

/// A fresh copy of the tiny Llama checkpoint in its own temp folder.
fn tiny_copy(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-errors-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-models/tiny-llama3").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match load_weights::<B>(dir, &Default::default()) {
        Ok(_) => panic!("{} loaded, an error was expected", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v = read_json(&path);
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrites model.safetensors through `edit` on (name, shape, f32 data).
fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) {
    let path = dir.join("model.safetensors");
    let source = SafetensorsWeights::open(&path).unwrap();
    let mut tensors = Vec::new();
    for name in source.names() {
        let t = source.read(&name).unwrap().unwrap();
        if let Some(new) = edit(&name, t.shape, t.data) {
            tensors.push((name, new));
        }
    }
    drop(source);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, (dtype, shape, bytes))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = tiny_copy("truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_err(&dir);
        assert!(err.contains("model.safetensors"), "cut {cut}: {err}");
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = tiny_copy("missing");
    rewrite_weights(&dir, |name, shape, data| {
        (name != "model.layers.1.mlp.up_proj.weight")
            .then(|| (safetensors::Dtype::F32, shape, f32_bytes(&data)))
    });
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = tiny_copy("shape");
    rewrite_weights(&dir, |name, shape, data| {
        if name == "model.layers.0.self_attn.k_proj.weight" {
            Some((
                safetensors::Dtype::F32,
                vec![shape[1], shape[0]],
                f32_bytes(&data),
            ))
        } else {
            Some((safetensors::Dtype::F32, shape, f32_bytes(&data)))
        }
    });
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.0.self_attn.k_proj.weight")
            && err.contains("[64, 32]")
            && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tiny_copy("dtype");
    rewrite_weights(&dir, |name, shape, data| {
        if name == "model.norm.weight" {
            let bytes = data
                .iter()
                .flat_map(|x| (*x as f64).to_le_bytes())
                .collect();
            Some((safetensors::Dtype::F64, shape, bytes))
        } else {
            Some((safetensors::Dtype::F32, shape, f32_bytes(&data)))
        }
    });
    let err = load_err(&dir);
    assert!(
        err.contains("model.norm.weight")
            && err.contains("F64")
            && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn half_precision_weights_are_widened_exactly() {
    for (tag, dtype) in [
        ("f16", safetensors::Dtype::F16),
        ("bf16", safetensors::Dtype::BF16),
    ] {
        let dir = tiny_copy(tag);
        let original = SafetensorsWeights::open(&dir.join("model.safetensors")).unwrap();
        let embed = original.read("model.embed_tokens.weight").unwrap().unwrap();
        drop(original);
        let narrow = |x: f32| -> (Vec<u8>, f32) {
            match dtype {
                safetensors::Dtype::F16 => (
                    half::f16::from_f32(x).to_le_bytes().to_vec(),
                    half::f16::from_f32(x).to_f32(),
                ),
                _ => (
                    half::bf16::from_f32(x).to_le_bytes().to_vec(),
                    half::bf16::from_f32(x).to_f32(),
                ),
            }
        };
        rewrite_weights(&dir, |_, shape, data| {
            Some((
                dtype,
                shape,
                data.iter().flat_map(|&x| narrow(x).0).collect(),
            ))
        });
        let reread = SafetensorsWeights::open(&dir.join("model.safetensors")).unwrap();
        let got = reread.read("model.embed_tokens.weight").unwrap().unwrap();
        let expected: Vec<f32> = embed.data.iter().map(|&x| narrow(x).1).collect();
        assert_eq!(got.data, expected, "{tag}");
        // And the whole model still loads and runs from half-precision files.
        let model = load_weights::<B>(&dir, &Default::default()).unwrap();
        let (logprobs, _) = score(&model, &[5, 6, 7, 8]);
        assert!(logprobs.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn malformed_config_json_names_the_file() {
    let dir = tiny_copy("malformed");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\", ").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("malformed JSON"),
        "{err}"
    );
}

#[test]
fn missing_config_field_is_named() {
    let dir = tiny_copy("field");
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("intermediate_size");
    });
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("`intermediate_size`"),
        "{err}"
    );
    edit_config(&dir, |v| v["intermediate_size"] = serde_json::json!("big"));
    let err = load_err(&dir);
    assert!(
        err.contains("`intermediate_size`") || err.contains("\"big\""),
        "{err}"
    );
    edit_config(&dir, |v| {
        v["intermediate_size"] = serde_json::json!(160);
        v["num_key_value_heads"] = serde_json::json!(3);
    });
    let err = load_err(&dir);
    assert!(err.contains("`num_key_value_heads`"), "{err}");
    edit_config(&dir, |v| {
        v["num_key_value_heads"] = serde_json::json!(2);
        v["rope_parameters"]["rope_type"] = serde_json::json!("yarn");
    });
    let err = load_err(&dir);
    assert!(
        err.contains("rope_parameters.rope_type") && err.contains("yarn"),
        "{err}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tiny_copy("arch");
    edit_config(&dir, |v| {
        v["model_type"] = serde_json::json!("gpt_neox");
        v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    });
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("gpt_neox") && err.contains("LlamaForCausalLM"),
        "{err}"
    );
    let err = TransformerConfig::from_json_str("{}", Path::new("x/config.json")).unwrap_err();
    assert!(
        err.to_string().contains("x/config.json") && err.to_string().contains("model_type"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_names_the_file() {
    let dir = tiny_copy("tokenizer");
    let err = match load::<B>(&dir, &Default::default()) {
        Ok(_) => panic!("loaded without tokenizer.json"),
        Err(e) => e,
    };
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn missing_model_folder_is_named() {
    let err = load_err(Path::new("/nonexistent/flux-model"));
    assert!(err.contains("/nonexistent/flux-model"), "{err}");
}

#[test]
fn gguf_with_bad_magic_is_not_taken_for_a_folder() {
    let dir = tiny_copy("gguf-magic");
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"GGUX\x03\x00\x00\x00").unwrap();
    let err = match load::<B>(&path, &Default::default()) {
        Ok(_) => panic!("loaded a file with bad magic"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("model.gguf"), "{err}");
}
