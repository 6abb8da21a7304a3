//! Maps Hugging Face tensor names to the model's fields, checking every shape.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use super::{DecoderLayer, Linear, Mlp, Model, RmsNorm, Rope, SelfAttention};
use crate::config::TransformerConfig;
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, TensorSource};

struct Reader<'a, B: Backend> {
    source: &'a dyn TensorSource,
    device: &'a B::Device,
}

impl<B: Backend> Reader<'_, B> {
    fn tensor<const D: usize>(&self, name: &str, expected: [usize; D]) -> Result<Tensor<B, D>> {
        let t = self.host(name, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, expected).convert::<B::FloatElem>(),
            self.device,
        ))
    }

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

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>> {
        let weight = self.host(&format!("{prefix}.weight"), &[out, inp])?;
        // Transposed once here: a strided (lazily transposed) weight would be copied by ndarray's
        // matmul on every call.
        let weight_t = weight.transposed().expect("checked 2-D above");
        let weight_t = Tensor::from_data(
            TensorData::new(weight_t.data, [inp, out]).convert::<B::FloatElem>(),
            self.device,
        );
        let bias = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), [out])?)
        } else {
            None
        };
        Ok(Linear::new(weight_t, bias))
    }

    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm::new(self.tensor(name, [dim])?, eps))
    }
}

impl<B: Backend> Model<B> {
    /// Builds the model of `config` from HF-named tensors, with a progress bar on stderr.
    pub fn from_source(
        config: TransformerConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        let c = &config;
        let r = Reader::<B> { source, device };
        let progress = ProgressBar::new(c.num_layers as u64 + 2).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("static template")
                .progress_chars("=> "),
        );
        progress.set_message(format!("loading {}", source.path().display()));
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
                    q_proj: r.linear(&format!("{p}.self_attn.q_proj"), q_out, h, c.qkv_bias)?,
                    k_proj: r.linear(&format!("{p}.self_attn.k_proj"), kv_out, h, c.qkv_bias)?,
                    v_proj: r.linear(&format!("{p}.self_attn.v_proj"), kv_out, h, c.qkv_bias)?,
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
                    gate_proj: r.linear(
                        &format!("{p}.mlp.gate_proj"),
                        c.intermediate_size,
                        h,
                        c.mlp_bias,
                    )?,
                    up_proj: r.linear(
                        &format!("{p}.mlp.up_proj"),
                        c.intermediate_size,
                        h,
                        c.mlp_bias,
                    )?,
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
            device: device.clone(),
            timer: Default::default(),
        })
    }
}
