//! Model configuration: Hugging Face `config.json` parsed into one serde type per architecture,
//! then lowered to the one [`TransformerConfig`] the model code reads.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ModelError, Result};

/// The decoder families flux runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2 / 3 / 3.1 / 3.2, SmolLM2 (`LlamaForCausalLM`).
    Llama,
    /// Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): bias on q, k, v.
    Qwen2,
    /// Qwen3 (`Qwen3ForCausalLM`): RMS norm on q and k per head, head_dim set independently.
    Qwen3,
}

/// Architectures accepted in config files, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str =
    "LlamaForCausalLM (llama), Qwen2ForCausalLM (qwen2), Qwen3ForCausalLM (qwen3)";

impl Architecture {
    /// The `architectures[0]` name of HF config.json.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The `model_type` of HF config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    /// Parses a `model_type` or an `architectures` class name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "LlamaForCausalLM" => Some(Architecture::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            "qwen3" | "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
            _ => None,
        }
    }
}

/// How rotary position frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling (`rope_type: "llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// What the model code needs to know, whatever the architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    /// Decoder family.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Epsilon of every RMS norm.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection of attention.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// RMS norm over head_dim on queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
}

/// `eos_token_id` is an integer or a list of integers in HF configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
#[derive(Debug, Clone, Deserialize)]
struct RopeParameters {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

/// HF `LlamaConfig` (also SmolLM2).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeParameters>,
    rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    hidden_act: Option<String>,
}

/// HF `Qwen2Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2Config {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeParameters>,
    rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    use_sliding_window: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    hidden_act: Option<String>,
}

/// HF `Qwen3Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3Config {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeParameters>,
    rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_sliding_window: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    hidden_act: Option<String>,
}

fn default_rms_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    2048
}

/// Configurations of models known by name (`config.json` of their Hugging Face repositories),
/// for runs with random weights.
const PRESETS: [(&str, &str); 2] = [
    ("llama-3.1-8b", include_str!("../configs/llama-3.1-8b.json")),
    ("qwen3-8b", include_str!("../configs/qwen3-8b.json")),
];

impl TransformerConfig {
    /// The configuration of a model known by name (`llama-3.1-8b`, `qwen3-8b`).
    pub fn preset(name: &str) -> Result<Self> {
        let (_, text) = PRESETS
            .iter()
            .find(|(known, _)| *known == name)
            .ok_or_else(|| ModelError::InvalidArgument {
                argument: "config".into(),
                message: format!(
                    "no preset `{name}` (presets: {}; or give a config.json file)",
                    PRESETS.map(|(n, _)| n).join(", ")
                ),
            })?;
        Self::from_json_str(text, Path::new(&format!("<preset {name}>")))
    }

    /// A preset's name or a `config.json` path: the preset when there is one of that name.
    pub fn preset_or_file(name_or_path: &str) -> Result<Self> {
        match PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => Self::from_json_str(text, Path::new(&format!("<preset {name}>"))),
            None if !Path::new(name_or_path).exists() => Err(ModelError::InvalidArgument {
                argument: "config".into(),
                message: format!(
                    "`{name_or_path}` is neither a preset ({}) nor a config.json file",
                    PRESETS.map(|(n, _)| n).join(", ")
                ),
            }),
            None => Self::from_file(Path::new(name_or_path)),
        }
    }

    /// Reads and validates a HF `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a HF `config.json`; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let name = value
            .get("model_type")
            .and_then(Value::as_str)
            .or_else(|| value.get("architectures")?.get(0)?.as_str())
            .ok_or_else(|| ModelError::ConfigField {
                path: path.to_path_buf(),
                field: "model_type".into(),
                message: "missing (and no `architectures` list either)".into(),
            })?;
        let architecture =
            Architecture::from_name(name).ok_or_else(|| ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                name: name.to_string(),
                supported: SUPPORTED_ARCHITECTURES,
            })?;
        let config = match architecture {
            Architecture::Llama => parse::<LlamaConfig>(value, path)?.lower(path)?,
            Architecture::Qwen2 => parse::<Qwen2Config>(value, path)?.lower(path)?,
            Architecture::Qwen3 => parse::<Qwen3Config>(value, path)?.lower(path)?,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the numbers fit together; errors name the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let field_err = |field: &str, message: String| ModelError::ConfigField {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(field_err(field, "must be positive".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(field_err(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(field_err(
                "head_dim",
                format!("{} is odd; RoPE needs pairs", self.head_dim),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(field_err(
                "rope_theta",
                format!("{} is not a RoPE base", self.rope_theta),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(field_err(
                "rms_norm_eps",
                format!("{} is not a valid epsilon", self.rms_norm_eps),
            ));
        }
        // Width products must not overflow on the way to tensor shapes.
        let big = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_heads * self.head_dim,
        ];
        if big.iter().any(|&n| n > 1 << 24) || self.num_layers > 4096 || self.num_heads > 4096 {
            return Err(field_err(
                "hidden_size",
                "model dimensions are implausibly large".into(),
            ));
        }
        Ok(())
    }

    /// The HF `config.json` of this configuration (what `convert` writes).
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        let obj = v.as_object_mut().expect("json! object literal");
        match self.architecture {
            Architecture::Llama => {
                obj.insert("attention_bias".into(), json!(self.qkv_bias));
                obj.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Architecture::Qwen2 => {}
            Architecture::Qwen3 => {
                obj.insert("attention_bias".into(), json!(self.qkv_bias));
            }
        }
        if let Some(bos) = self.bos_token_id {
            obj.insert("bos_token_id".into(), json!(bos));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                obj.insert("eos_token_id".into(), json!(one));
            }
            many => {
                obj.insert("eos_token_id".into(), json!(many));
            }
        }
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                obj.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": factor}),
                );
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                obj.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                           "high_freq_factor": high_freq_factor,
                           "original_max_position_embeddings": original_max_position_embeddings}),
                );
            }
        }
        v
    }
}

fn parse<T: for<'de> Deserialize<'de>>(value: Value, path: &Path) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        // serde names the field between backticks ("missing field `hidden_size`").
        let field = message.split('`').nth(1).unwrap_or("?").to_string();
        ModelError::ConfigField {
            path: path.to_path_buf(),
            field,
            message,
        }
    })
}

fn check_act(act: &Option<String>, path: &Path) -> Result<()> {
    match act.as_deref() {
        None | Some("silu") | Some("swish") => Ok(()),
        Some(other) => Err(ModelError::ConfigField {
            path: path.to_path_buf(),
            field: "hidden_act".into(),
            message: format!("`{other}` is not supported (only silu)"),
        }),
    }
}

fn rope(
    theta: Option<f64>,
    scaling: Option<RopeParameters>,
    parameters: Option<RopeParameters>,
    default_theta: f64,
    path: &Path,
) -> Result<(f64, RopeScaling)> {
    let field = if parameters.is_some() {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let params = parameters.or(scaling);
    let theta = params
        .as_ref()
        .and_then(|p| p.rope_theta)
        .or(theta)
        .unwrap_or(default_theta);
    let Some(p) = params else {
        return Ok((theta, RopeScaling::None));
    };
    let need = |value: Option<f64>, name: &str| {
        value.ok_or_else(|| ModelError::ConfigField {
            path: path.to_path_buf(),
            field: format!("{field}.{name}"),
            message: "missing".into(),
        })
    };
    let scaling = match p.rope_type.as_deref() {
        None | Some("default") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: need(p.factor, "factor")?,
        },
        Some("llama3") => RopeScaling::Llama3 {
            factor: need(p.factor, "factor")?,
            low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: need(
                p.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?,
        },
        Some(other) => {
            return Err(ModelError::ConfigField {
                path: path.to_path_buf(),
                field: format!("{field}.rope_type"),
                message: format!("`{other}` is not supported (default, linear, llama3)"),
            })
        }
    };
    if let RopeScaling::Llama3 {
        low_freq_factor,
        high_freq_factor,
        ..
    } = &scaling
    {
        if high_freq_factor <= low_freq_factor {
            return Err(ModelError::ConfigField {
                path: path.to_path_buf(),
                field: format!("{field}.high_freq_factor"),
                message: "must exceed low_freq_factor".into(),
            });
        }
    }
    Ok((theta, scaling))
}

fn no_sliding_window(enabled: bool, path: &Path) -> Result<()> {
    if enabled {
        return Err(ModelError::ConfigField {
            path: path.to_path_buf(),
            field: "use_sliding_window".into(),
            message: "Qwen's sliding-window layers are not supported".into(),
        });
    }
    Ok(())
}

impl LlamaConfig {
    fn lower(self, path: &Path) -> Result<TransformerConfig> {
        check_act(&self.hidden_act, path)?;
        let (rope_theta, rope_scaling) = rope(
            self.rope_theta,
            self.rope_scaling,
            self.rope_parameters,
            10_000.0,
            path,
        )?;
        Ok(TransformerConfig {
            architecture: Architecture::Llama,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            qk_norm: false,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self
                .eos_token_id
                .map(TokenIds::into_vec)
                .unwrap_or_default(),
        })
    }
}

impl Qwen2Config {
    fn lower(self, path: &Path) -> Result<TransformerConfig> {
        check_act(&self.hidden_act, path)?;
        no_sliding_window(self.use_sliding_window, path)?;
        let (rope_theta, rope_scaling) = rope(
            self.rope_theta,
            self.rope_scaling,
            self.rope_parameters,
            10_000.0,
            path,
        )?;
        Ok(TransformerConfig {
            architecture: Architecture::Qwen2,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.hidden_size / self.num_attention_heads.max(1),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self
                .eos_token_id
                .map(TokenIds::into_vec)
                .unwrap_or_default(),
        })
    }
}

impl Qwen3Config {
    fn lower(self, path: &Path) -> Result<TransformerConfig> {
        check_act(&self.hidden_act, path)?;
        no_sliding_window(self.use_sliding_window, path)?;
        let (rope_theta, rope_scaling) = rope(
            self.rope_theta,
            self.rope_scaling,
            self.rope_parameters,
            10_000.0,
            path,
        )?;
        Ok(TransformerConfig {
            architecture: Architecture::Qwen3,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim.unwrap_or(128),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            qk_norm: true,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self
                .eos_token_id
                .map(TokenIds::into_vec)
                .unwrap_or_default(),
        })
    }
}
