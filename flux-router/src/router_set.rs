//! The routers of every layer of a model, saved and loaded as safetensors with metadata.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use flux_attention::AttentionMode;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomically;
use crate::error::{Result, RouterError};
use crate::router::{LayerRouter, LayerRouterConfig};

/// Metadata key holding [`RouterMeta`] as JSON.
const META_KEY: &str = "flux_router";

/// What a router set was trained for; stored in the file and checked at load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterMeta {
    /// Model architecture (the `architectures` entry of config.json, e.g. `LlamaForCausalLM`).
    pub architecture: String,
    /// Transformer layers (one router each).
    pub num_layers: usize,
    /// Query heads per layer.
    pub num_heads: usize,
    /// Width of a query head (the router's input width).
    pub head_dim: usize,
    /// Tokens pooled at each end of the context span.
    pub pool_tokens: usize,
    /// The sparse mode the routers were trained against.
    pub sparse_mode: AttentionMode,
}

/// One [`LayerRouter`] per transformer layer.
#[derive(Module, Debug)]
pub struct RouterSet<B: Backend> {
    /// `routers[layer]`.
    pub routers: Vec<LayerRouter<B>>,
}

/// The linear layers of a router in file order, with their names.
fn named_linears<B: Backend>(r: &LayerRouter<B>) -> [(&'static str, &Linear<B>); 5] {
    [
        ("encoder_in", &r.encoder_in),
        ("encoder_out", &r.encoder_out),
        ("head_in", &r.head_in),
        ("head_mid", &r.head_mid),
        ("head_out", &r.head_out),
    ]
}

impl<B: Backend> RouterSet<B> {
    /// Fresh routers (see [`LayerRouterConfig::init`]) for `num_layers` layers.
    pub fn new(config: &LayerRouterConfig, num_layers: usize, device: &B::Device) -> Self {
        Self {
            routers: (0..num_layers).map(|_| config.init(device)).collect(),
        }
    }

    /// Layers covered.
    pub fn num_layers(&self) -> usize {
        self.routers.len()
    }

    /// Writes every router to `path` as safetensors (f32; weights `[out, in]` as in PyTorch,
    /// named `layers.{l}.{encoder_in|encoder_out|head_in|head_mid|head_out}.{weight|bias}`)
    /// with `meta` as JSON in the header's metadata. The file is written under a temporary
    /// name and renamed, so `path` is never half-written.
    pub fn save(&self, meta: &RouterMeta, path: &Path) -> Result<()> {
        self.save_as(meta, path, Dtype::F32)
    }

    /// As [`RouterSet::save`], with the values stored as `dtype` (F32, BF16 or F16; loading
    /// converts back to the backend's float type).
    pub fn save_as(&self, meta: &RouterMeta, path: &Path, dtype: Dtype) -> Result<()> {
        if !matches!(dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(RouterError::InvalidArgument {
                argument: "dtype",
                message: format!("{dtype:?}: router files are F32, BF16 or F16"),
            });
        }
        let format = |message: String| RouterError::Format {
            path: path.to_path_buf(),
            message,
        };
        if meta.num_layers != self.routers.len() {
            return Err(RouterError::InvalidArgument {
                argument: "meta",
                message: format!(
                    "says {} layers, the set has {} routers",
                    meta.num_layers,
                    self.routers.len()
                ),
            });
        }
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (l, router) in self.routers.iter().enumerate() {
            for (name, linear) in named_linears(router) {
                let w = linear.weight.val().transpose(); // [out, in]
                let shape = w.dims().to_vec();
                tensors.push((
                    format!("layers.{l}.{name}.weight"),
                    shape,
                    to_le_bytes(w, dtype),
                ));
                if let Some(b) = &linear.bias {
                    let b = b.val();
                    let shape = b.dims().to_vec();
                    tensors.push((
                        format!("layers.{l}.{name}.bias"),
                        shape,
                        to_le_bytes(b, dtype),
                    ));
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| format(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let json = serde_json::to_string(meta).map_err(|e| format(e.to_string()))?;
        let metadata = HashMap::from([(META_KEY.to_string(), json)]);
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| format(e.to_string()))?;
        write_atomically(path, &bytes).map_err(|error| RouterError::Io {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Reads the metadata of a router file.
    pub fn read_meta(path: &Path) -> Result<RouterMeta> {
        let bytes = read(path)?;
        meta_of(&bytes, path)
    }

    /// [`RouterSet::read_meta`] of a router file held in memory; `path` only names the file.
    pub fn meta_from_bytes(bytes: &[u8], path: &Path) -> Result<RouterMeta> {
        meta_of(bytes, path)
    }

    /// Loads the routers of `path` for a model described by `expected` (its architecture, layer
    /// count, heads and head_dim must match; the error names the first field that differs).
    /// Returns the routers and the file's metadata (pool size and sparse mode come from it).
    pub fn load(
        path: &Path,
        expected: &RouterMeta,
        device: &B::Device,
    ) -> Result<(Self, RouterMeta)> {
        Self::from_bytes(&read(path)?, path, expected, device)
    }

    /// [`RouterSet::load`] of a router file held in memory; `path` only names the file in
    /// messages. (The fuzz targets under `fuzz/` read router files this way.)
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        expected: &RouterMeta,
        device: &B::Device,
    ) -> Result<(Self, RouterMeta)> {
        let meta = meta_of(bytes, path)?;
        let mismatch = |field: &'static str, file: String, model: String| {
            Err(RouterError::Mismatch {
                path: path.to_path_buf(),
                field,
                file,
                model,
            })
        };
        if meta.architecture != expected.architecture {
            return mismatch(
                "architecture",
                meta.architecture,
                expected.architecture.clone(),
            );
        }
        for (field, file, model) in [
            ("num_layers", meta.num_layers, expected.num_layers),
            ("num_heads", meta.num_heads, expected.num_heads),
            ("head_dim", meta.head_dim, expected.head_dim),
        ] {
            if file != model {
                return mismatch(field, file.to_string(), model.to_string());
            }
        }
        // Values the routers use later, checked here so that the error names the file.
        let bad_meta = |message: String| RouterError::Format {
            path: path.to_path_buf(),
            message: format!("metadata `{META_KEY}`: {message}"),
        };
        if meta.pool_tokens == 0 {
            return Err(bad_meta(
                "`pool_tokens` is 0; routers pool at least one token at each end".into(),
            ));
        }
        meta.sparse_mode
            .validate()
            .map_err(|e| bad_meta(format!("`sparse_mode`: {e}")))?;
        let file = SafeTensors::deserialize(bytes).map_err(|e| RouterError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let config = LayerRouterConfig {
            head_dim: meta.head_dim,
            pool_tokens: meta.pool_tokens,
            full_bias: 0.0,
        };
        let mut routers = Vec::with_capacity(meta.num_layers);
        for l in 0..meta.num_layers {
            let mut router = config.init::<B>(device);
            let d = meta.head_dim;
            let shapes = [
                (d, 8 * d),
                (8 * d, 2 * d),
                (2 * d, 4 * d),
                (4 * d, d),
                (d, 2),
            ];
            let linears = [
                &mut router.encoder_in,
                &mut router.encoder_out,
                &mut router.head_in,
                &mut router.head_mid,
                &mut router.head_out,
            ];
            let names = [
                "encoder_in",
                "encoder_out",
                "head_in",
                "head_mid",
                "head_out",
            ];
            for ((linear, name), (inp, out)) in linears.into_iter().zip(names).zip(shapes) {
                let prefix = format!("layers.{l}.{name}");
                let w = tensor_of(&file, path, &format!("{prefix}.weight"), &[out, inp])?;
                let b = tensor_of(&file, path, &format!("{prefix}.bias"), &[out])?;
                let w = Tensor::<B, 2>::from_data(
                    TensorData::new(w, [out, inp]).convert::<B::FloatElem>(),
                    device,
                );
                linear.weight = Param::from_tensor(w.transpose());
                linear.bias = Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(b, [out]).convert::<B::FloatElem>(),
                    device,
                )));
            }
            routers.push(router);
        }
        Ok((Self { routers }, meta))
    }
}

fn to_le_bytes<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: Dtype) -> Vec<u8> {
    let values = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 after convert");
    match dtype {
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| RouterError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn meta_of(bytes: &[u8], path: &Path) -> Result<RouterMeta> {
    let format = |message: String| RouterError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            format(format!(
                "no `{META_KEY}` entry in the metadata: not a flux router file"
            ))
        })?;
    serde_json::from_str(json).map_err(|e| format(format!("metadata `{META_KEY}`: {e}")))
}

fn tensor_of(file: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let err = |message: String| RouterError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        message,
    };
    let view = file.tensor(name).map_err(|_| err("missing".into()))?;
    if view.shape() != shape {
        return Err(err(format!("shape {:?}, expected {shape:?}", view.shape())));
    }
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(err(format!("dtype {other:?}, expected F32, BF16 or F16"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn model() -> RouterMeta {
        RouterMeta {
            architecture: "LlamaForCausalLM".into(),
            num_layers: 1,
            num_heads: 2,
            head_dim: 4,
            pool_tokens: 2,
            sparse_mode: AttentionMode::default(),
        }
    }

    /// A router file with `meta` as its metadata and no tensors.
    fn file_with_meta(meta: &str) -> Vec<u8> {
        let metadata = HashMap::from([(META_KEY.to_string(), meta.to_string())]);
        safetensors::serialize(Vec::<(String, TensorView<'_>)>::new(), Some(metadata)).unwrap()
    }

    fn load_error(bytes: &[u8]) -> String {
        RouterSet::<NdArray>::from_bytes(
            bytes,
            Path::new("r.safetensors"),
            &model(),
            &Default::default(),
        )
        .expect_err("refused")
        .to_string()
    }

    // Found while fuzzing (fuzz/, target `router`): a file's pool size of 0 or an invalid sparse
    // mode was accepted and failed later, in the forward pass, with an error not naming the file.
    #[test]
    fn pool_size_and_sparse_mode_are_checked_at_load() {
        let mut meta = serde_json::to_value(model()).unwrap();
        meta["pool_tokens"] = 0.into();
        assert_eq!(
            load_error(&file_with_meta(&meta.to_string())),
            "router file r.safetensors: metadata `flux_router`: `pool_tokens` is 0; routers pool at least one token at each end"
        );
        let mut meta = serde_json::to_value(model()).unwrap();
        meta["sparse_mode"] = serde_json::json!({"kind": "streaming", "sink": 4, "window": 0});
        let err = load_error(&file_with_meta(&meta.to_string()));
        assert!(
            err.starts_with("router file r.safetensors: metadata `flux_router`: `sparse_mode`: ")
                && err.contains("window"),
            "{err}"
        );
    }

    #[test]
    fn architecture_from_the_file_is_shown_on_one_line() {
        let mut meta = serde_json::to_value(model()).unwrap();
        meta["architecture"] = "Llama\nForCausalLM".into();
        assert_eq!(
            load_error(&file_with_meta(&meta.to_string())),
            "router file r.safetensors does not fit this model: `architecture` is Llama\\nForCausalLM in the file, LlamaForCausalLM for the model"
        );
    }
}
