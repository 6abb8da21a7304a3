//! Maps Hugging Face tensor names to the model's fields, checking every shape; or fills them
//! with seeded random values (speed measurements of models one does not want to download).

use burn::tensor::{backend::Backend, Distribution, FloatDType, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use super::{DecoderLayer, Linear, Mlp, Model, RmsNorm, Rope, SelfAttention};
use crate::config::TransformerConfig;
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, TensorSource};

/// Where the model's tensors come from, by Hugging Face name and expected shape.
trait Weights<B: Backend> {
    /// The tensor `name` of shape `shape`.
    fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>>;
    /// The projection `prefix` (`.weight` `[out, inp]`, `.bias` `[out]` when `bias`).
    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>>;
    /// The bias `prefix.bias` `[out]` of a projection that has one.
    fn bias(&self, prefix: &str, out: usize, present: bool) -> Result<Option<Tensor<B, 1>>> {
        present
            .then(|| self.tensor(&format!("{prefix}.bias"), [out]))
            .transpose()
    }

    /// The RMS norm whose scale is `name` `[dim]`.
    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm<B>>;
    /// What the progress bar says.
    fn describe(&self) -> String;
}

/// Tensors read from weight files.
struct Reader<'a, B: Backend> {
    source: &'a dyn TensorSource,
    device: &'a B::Device,
    /// What the weights are stored in on the device (converted on the host, once).
    dtype: FloatDType,
}

impl<B: Backend> Reader<'_, B> {
    /// Reads `name` and checks its shape.
    fn host(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let t = self
            .source
            .read(name)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.source.path().to_path_buf(),
                tensor: name.to_string(),
            })?;
        if t.shape != expected {
            return Err(ModelError::TensorShape {
                path: self
                    .source
                    .file_of(name)
                    .unwrap_or_else(|| self.source.path().to_path_buf()),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }
}

impl<B: Backend> Weights<B> for Reader<'_, B> {
    fn tensor<const D: usize>(&self, name: &str, expected: [usize; D]) -> Result<Tensor<B, D>> {
        let t = self.host(name, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, expected),
            (self.device, self.dtype.into()),
        ))
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>> {
        let weight = self.host(&format!("{prefix}.weight"), &[out, inp])?;
        // Transposed once here: a strided (lazily transposed) weight would be copied by ndarray's
        // matmul on every call.
        let weight_t = weight.transposed().expect("checked 2-D above");
        let weight_t = Tensor::from_data(
            TensorData::new(weight_t.data, [inp, out]),
            (self.device, self.dtype.into()),
        );
        Ok(Linear::new(weight_t, self.bias(prefix, out, bias)?))
    }

    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm::new(self.tensor(name, [dim])?, eps))
    }

    fn describe(&self) -> String {
        format!("loading {}", self.source.path().display())
    }
}

/// Seeded random tensors made on the device: projections and embeddings ~ N(0, 0.02) (the
/// initialisation of transformers' Llama), norm scales 1, so activations stay finite.
struct RandomWeights<'a, B: Backend> {
    device: &'a B::Device,
    dtype: FloatDType,
}

impl<B: Backend> Weights<B> for RandomWeights<'_, B> {
    fn tensor<const D: usize>(&self, _name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        Ok(Tensor::random(
            shape,
            Distribution::Normal(0.0, 0.02),
            (self.device, self.dtype.into()),
        ))
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>> {
        let weight_t = self.tensor(&format!("{prefix}.weight"), [inp, out])?;
        Ok(Linear::new(weight_t, self.bias(prefix, out, bias)?))
    }

    fn norm(&self, _name: &str, dim: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm::new(
            Tensor::ones([dim], (self.device, self.dtype.into())),
            eps,
        ))
    }

    fn describe(&self) -> String {
        "making random weights".into()
    }
}

impl<B: Backend> Model<B> {
    /// Builds the model of `config` from HF-named tensors in the device's default float dtype
    /// (f32 unless the backend's element type or `set_default_dtypes` says otherwise), with a
    /// progress bar on stderr.
    pub fn from_source(
        config: TransformerConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_source_as(config, source, device, default_float_dtype::<B>(device))
    }

    /// [`Model::from_source`] with the weights (and so the activations and the KV cache) in
    /// `dtype`; norms, softmaxes and the logits still run in f32 at least. Errors when the
    /// backend cannot compute in `dtype` on `device`.
    pub fn from_source_as(
        config: TransformerConfig,
        source: &dyn TensorSource,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Result<Self> {
        check_dtype::<B>(device, dtype)?;
        let reader = Reader::<B> {
            source,
            device,
            dtype,
        };
        Self::build(config, &reader, device, dtype)
    }

    /// A model of `config` with seeded random weights in `dtype`, made on the device (nothing
    /// is read or copied from the host): for measuring the speed of models that are not
    /// downloaded, which does not depend on the values. The same seed gives the same weights
    /// on the same backend.
    pub fn random(
        config: TransformerConfig,
        device: &B::Device,
        dtype: FloatDType,
        seed: u64,
    ) -> Result<Self> {
        check_dtype::<B>(device, dtype)?;
        B::seed(device, seed);
        Self::build(config, &RandomWeights::<B> { device, dtype }, device, dtype)
    }

    /// Builds every layer from `r`, with a progress bar on stderr.
    fn build(
        config: TransformerConfig,
        r: &impl Weights<B>,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Result<Self> {
        let c = &config;
        let progress = ProgressBar::new(c.num_layers as u64 + 2).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("static template")
                .progress_chars("=> "),
        );
        progress.set_message(r.describe());
        let (h, q_out, kv_out) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let embed_tokens = r.tensor("model.embed_tokens.weight", [c.vocab_size, h])?;
        progress.inc(1);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let qk_norm = if c.qk_norm {
                Some((
                    r.norm(
                        &format!("{p}.self_attn.q_norm.weight"),
                        c.head_dim,
                        c.rms_norm_eps,
                    )?,
                    r.norm(
                        &format!("{p}.self_attn.k_norm.weight"),
                        c.head_dim,
                        c.rms_norm_eps,
                    )?,
                ))
            } else {
                None
            };
            layers.push(DecoderLayer {
                input_layernorm: r.norm(
                    &format!("{p}.input_layernorm.weight"),
                    h,
                    c.rms_norm_eps,
                )?,
                self_attn: SelfAttention {
                    qkv_proj: Linear::concat(vec![
                        r.linear(&format!("{p}.self_attn.q_proj"), q_out, h, c.qkv_bias)?,
                        r.linear(&format!("{p}.self_attn.k_proj"), kv_out, h, c.qkv_bias)?,
                        r.linear(&format!("{p}.self_attn.v_proj"), kv_out, h, c.qkv_bias)?,
                    ]),
                    o_proj: r.linear(&format!("{p}.self_attn.o_proj"), h, q_out, c.o_bias)?,
                    qk_norm,
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                },
                post_attention_layernorm: r.norm(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    c.rms_norm_eps,
                )?,
                mlp: Mlp {
                    gate_up_proj: Linear::concat(vec![
                        r.linear(
                            &format!("{p}.mlp.gate_proj"),
                            c.intermediate_size,
                            h,
                            c.mlp_bias,
                        )?,
                        r.linear(
                            &format!("{p}.mlp.up_proj"),
                            c.intermediate_size,
                            h,
                            c.mlp_bias,
                        )?,
                    ]),
                    down_proj: r.linear(
                        &format!("{p}.mlp.down_proj"),
                        h,
                        c.intermediate_size,
                        c.mlp_bias,
                    )?,
                },
            });
            progress.inc(1);
        }
        let norm = r.norm("model.norm.weight", h, c.rms_norm_eps)?;
        // Some tied checkpoints still store lm_head; the config decides which matrix is used.
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(r.linear("lm_head", c.vocab_size, h, false)?)
        };
        progress.inc(1);
        progress.finish_and_clear();
        let rope = Rope::new(c.head_dim, c.rope_theta, &c.rope_scaling);
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            dtype,
            device: device.clone(),
            timer: Default::default(),
        })
    }
}

/// Whether backend `B` computes in `dtype` on `device` (ndarray: f32 and f64 only).
pub(crate) fn check_dtype<B: Backend>(device: &B::Device, dtype: FloatDType) -> Result<()> {
    if B::supports_dtype(device, dtype.into()) {
        Ok(())
    } else {
        Err(ModelError::InvalidArgument {
            argument: "dtype".into(),
            message: format!(
                "{} cannot compute in {} on this device (f32 always works; bf16 needs cuda, f16 cuda or a wgpu adapter with f16)",
                B::name(device),
                dtype_name(dtype)
            ),
        })
    }
}

/// `bf16`, `f16`, `f32`, `f64`: the names the programs' `--dtype` takes.
pub fn dtype_name(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::BF16 => "bf16",
        FloatDType::F16 => "f16",
        FloatDType::F32 => "f32",
        FloatDType::F64 => "f64",
        FloatDType::Flex32 => "flex32",
    }
}

/// The float dtype tensors of `device` are made in when none is given.
pub fn default_float_dtype<B: Backend>(device: &B::Device) -> FloatDType {
    burn::tensor::get_device_settings::<B>(device).float_dtype
}
