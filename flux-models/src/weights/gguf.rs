//! GGUF model files seen as Hugging Face checkpoints: llama.cpp tensor names mapped to HF
//! names, llama.cpp's Q/K row permutation undone, and the config read from the metadata.

use std::path::{Path, PathBuf};

use super::{HostTensor, TensorSource};
use crate::config::{Architecture, RopeScaling, TransformerConfig, SUPPORTED_ARCHITECTURES};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// The tensors of a GGUF file under HF names, dequantised to f32 on read.
pub struct GgufWeights {
    file: GgufFile,
    architecture: Architecture,
    num_heads: usize,
    num_kv_heads: usize,
}

/// Per-layer tensor names: (llama.cpp suffix, HF suffix).
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Whole-model tensor names: (llama.cpp, HF).
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The HF name of a llama.cpp tensor name, if flux uses it.
fn hf_name(gguf_name: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == gguf_name) {
        return Some(hf.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The llama.cpp name of a HF tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

impl GgufWeights {
    /// Opens a GGUF model file of a supported architecture.
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Self::from_file(file)
    }

    /// Wraps an already opened GGUF file.
    pub fn from_file(file: GgufFile) -> Result<Self> {
        let config = config_from_gguf(&file)?;
        Ok(Self {
            architecture: config.architecture,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            file,
        })
    }

    /// The underlying GGUF file (metadata, tokenizer).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

/// llama.cpp stores the rows of each head of Q and K of llama-arch models interleaved
/// (`reshape(heads, 2, d/2).swap(1, 2)`) for its RoPE layout; HF expects the halves split.
fn unpermute_rows(t: &mut HostTensor, heads: usize) {
    // A scalar has no rows to permute (found by fuzzing: `t.shape[0]` panicked on one).
    let Some((&rows, rest)) = t.shape.split_first() else {
        return;
    };
    let cols: usize = rest.iter().product();
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return; // shape is checked against the config by the model loader
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let src = std::mem::take(&mut t.data);
    let mut out = vec![0f32; src.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf_row = h * head_dim + i * half + j;
                let gguf_row = h * head_dim + 2 * j + i;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&src[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    t.data = out;
}

impl TensorSource for GgufWeights {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn file_of(&self, name: &str) -> Option<PathBuf> {
        let g = gguf_name(name)?;
        self.file
            .tensor_info(&g)
            .map(|_| self.file.path().to_path_buf())
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .file
            .tensors()
            .iter()
            .filter_map(|t| hf_name(&t.name))
            .collect();
        names.sort();
        names
    }

    fn read(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some(g) = gguf_name(name) else {
            return Ok(None);
        };
        if self.file.tensor_info(&g).is_none() {
            return Ok(None);
        }
        let (shape, data) = self.file.tensor_f32(&g)?;
        let mut t = HostTensor { shape, data };
        if self.architecture == Architecture::Llama {
            if g.ends_with("attn_q.weight") || g.ends_with("attn_q.bias") {
                unpermute_rows(&mut t, self.num_heads);
            } else if g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias") {
                unpermute_rows(&mut t, self.num_kv_heads);
            }
        }
        Ok(Some(t))
    }
}

/// Builds the model configuration from GGUF metadata (`general.architecture` and its keys).
pub fn config_from_gguf(file: &GgufFile) -> Result<TransformerConfig> {
    let path = file.path();
    let arch_name = file.get_str("general.architecture")?;
    let architecture =
        Architecture::from_name(arch_name).ok_or_else(|| ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            name: arch_name.to_string(),
            supported: SUPPORTED_ARCHITECTURES,
        })?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let usize_of = |k: &str| -> Result<usize> {
        let v = file.get_u64(&key(k))?;
        usize::try_from(v)
            .map_err(|_| ModelError::gguf(path, format!("`{}` = {v} is too large", key(k))))
    };
    let hidden_size = usize_of("embedding_length")?;
    let num_heads = usize_of("attention.head_count")?;
    let num_kv_heads = if file.get(&key("attention.head_count_kv")).is_some() {
        usize_of("attention.head_count_kv")?
    } else {
        num_heads
    };
    let head_dim = if file.get(&key("attention.key_length")).is_some() {
        usize_of("attention.key_length")?
    } else {
        hidden_size / num_heads.max(1)
    };
    let embd = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            tensor: "token_embd.weight".into(),
        })?;
    let vocab_size = embd.shape().first().copied().unwrap_or(0);
    let rope_scaling = match file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: file.get_f64(&key("rope.scaling.factor"))?,
        },
        Some(other) => {
            return Err(ModelError::gguf(
                path,
                format!(
                    "`{}` = `{other}` is not supported",
                    key("rope.scaling.type")
                ),
            ))
        }
    };
    if file.tensor_info("rope_freqs.weight").is_some() {
        return Err(ModelError::gguf(
            path,
            "tensor `rope_freqs.weight` (per-frequency RoPE factors) is not supported; convert the HF checkpoint instead",
        ));
    }
    let opt_u32 = |k: &str| {
        file.get(k)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    };
    let tie_word_embeddings = file.tensor_info("output.weight").is_none();
    let has = |suffix: &str| file.tensor_info(&format!("blk.0.{suffix}")).is_some();
    let config = TransformerConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: usize_of("feed_forward_length")?,
        num_layers: usize_of("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: file
            .get(&key("rope.freq_base"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: usize_of("context_length")?,
        tie_word_embeddings,
        qkv_bias: has("attn_q.bias"),
        o_bias: has("attn_output.bias"),
        mlp_bias: false,
        qk_norm: architecture == Architecture::Qwen3,
        bos_token_id: opt_u32("tokenizer.ggml.bos_token_id"),
        eos_token_ids: opt_u32("tokenizer.ggml.eos_token_id").into_iter().collect(),
    };
    config.validate(path)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "blk.12.attn_k.bias",
            "blk.0.ffn_down.weight",
            "blk.3.attn_q_norm.weight",
        ] {
            let hf = hf_name(g).unwrap();
            assert_eq!(gguf_name(&hf).as_deref(), Some(g));
        }
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(gguf_name("model.layers.1.unknown"), None);
    }

    /// A GGUF v3 file of a 1-layer llama (hidden 8, 2 heads) with `token_embd.weight` [4, 8]
    /// and `blk.0.attn_q.weight` of GGUF dims `q_dims`, both F32.
    fn llama_gguf(q_dims: &[u64]) -> Vec<u8> {
        fn s(b: &mut Vec<u8>, text: &str) {
            b.extend((text.len() as u64).to_le_bytes());
            b.extend(text.as_bytes());
        }
        let kv_u32 = [
            ("llama.embedding_length", 8u32),
            ("llama.attention.head_count", 2),
            ("llama.feed_forward_length", 8),
            ("llama.block_count", 1),
            ("llama.context_length", 16),
        ];
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend((kv_u32.len() as u64 + 2).to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.attention.layer_norm_rms_epsilon");
        b.extend(6u32.to_le_bytes());
        b.extend(1e-5f32.to_le_bytes());
        for (k, v) in kv_u32 {
            s(&mut b, k);
            b.extend(4u32.to_le_bytes());
            b.extend(v.to_le_bytes());
        }
        let q_elems: u64 = q_dims.iter().product();
        for (name, dims, offset) in [
            ("token_embd.weight", &[8u64, 4][..], 0u64),
            ("blk.0.attn_q.weight", q_dims, 128),
        ] {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(0u32.to_le_bytes()); // F32
            b.extend(offset.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(32), 0);
        b.extend((0..32).flat_map(|i| (i as f32).to_le_bytes()));
        b.extend((0..q_elems).flat_map(|i| (i as f32).to_le_bytes()));
        b
    }

    // Found by fuzzing (fuzz/, target `gguf`): a scalar (0-dimension) attn_q tensor of a llama
    // file made the Q/K row permutation index `shape[0]` and panic.
    #[test]
    fn a_scalar_q_projection_is_read_not_a_panic() {
        let file = GgufFile::from_bytes(Path::new("m.gguf"), llama_gguf(&[])).unwrap();
        let w = GgufWeights::from_file(file).unwrap();
        let t = w
            .read("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .unwrap();
        assert_eq!((t.shape, t.data), (vec![], vec![0.0]));
        // The regular case still permutes: [8, 8] in, rows of head 0 reordered.
        let file = GgufFile::from_bytes(Path::new("m.gguf"), llama_gguf(&[8, 8])).unwrap();
        let w = GgufWeights::from_file(file).unwrap();
        let t = w
            .read("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .unwrap();
        assert_eq!(t.shape, [8, 8]);
        assert_eq!(t.data[8..10], [16.0, 17.0]); // HF row 1 = GGUF row 2
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // 2 heads of head_dim 4, 3 columns; llama.cpp's permute as in convert_hf_to_gguf.py.
        let (heads, hd, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..hd / 2 {
                    let src = h * hd + i * (hd / 2) + j; // HF row
                    let dst = h * hd + j * 2 + i; // reshape(h, 2, d/2).swapaxes(1, 2)
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let mut t = HostTensor {
            shape: vec![heads * hd, cols],
            data: permuted,
        };
        unpermute_rows(&mut t, heads);
        assert_eq!(t.data, hf);
    }
}
