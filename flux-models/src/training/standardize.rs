//! Router input standardisation before the first step: statistics of what each layer's router
//! sees over some training prompts, folded into the routers' first layer.
//!
//! Pooled query states share a large offset across prompts and differ little around it, so a
//! router trained on the raw values moves every prompt's logits together: training then finds
//! one plan for all inputs (benches/RESULTS.md, issue 10). Standardised inputs put the
//! differences between prompts at the scale of everything else.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use flux_attention::FluxBackend;
use flux_router::RouterSet;

use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::router_data::RouterSample;

/// Per-layer mean and standard deviation of the routers' inputs (pooled query states).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterInputStatistics {
    /// Prompts the statistics were taken over.
    pub samples: usize,
    /// `[layer][feature]` means.
    pub mean: Vec<Vec<f64>>,
    /// `[layer][feature]` population standard deviations (before any floor).
    pub std: Vec<Vec<f64>>,
}

impl RouterInputStatistics {
    /// Per layer, the spread between prompts relative to their common offset:
    /// `rms(std) / rms(mean)` over features. Small values mean that raw inputs barely differ.
    pub fn spread_ratios(&self) -> Vec<f64> {
        let rms = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt();
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(m, s)| rms(s) / rms(m).max(f64::MIN_POSITIVE))
            .collect()
    }
}

/// The routers' inputs over `samples` (their prompt spans, `pool_tokens` at each end), under
/// full attention, one prompt at a time.
pub fn router_input_statistics<B: FluxBackend>(
    model: &Model<B>,
    samples: &[&RouterSample],
    pool_tokens: usize,
) -> Result<RouterInputStatistics> {
    if samples.len() < 2 {
        return Err(ModelError::InvalidArgument {
            argument: "standardize_samples".into(),
            message: format!("{} prompt(s): a spread needs at least two", samples.len()),
        });
    }
    let mut sum: Vec<Vec<f64>> = Vec::new();
    let mut sum_sq: Vec<Vec<f64>> = Vec::new();
    for sample in samples {
        let tokens = model.token_tensor(std::slice::from_ref(&sample.ids))?;
        let pooled = model.router_inputs(
            tokens,
            std::slice::from_ref(&sample.prompt_span),
            pool_tokens,
        )?;
        if sum.is_empty() {
            let d = pooled[0].dims()[1];
            sum = vec![vec![0.0; d]; pooled.len()];
            sum_sq = sum.clone();
        }
        for (l, p) in pooled.into_iter().enumerate() {
            let values = p
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| ModelError::InvalidArgument {
                    argument: "router inputs".into(),
                    message: format!("{e:?}"),
                })?;
            for (j, &x) in values.iter().enumerate() {
                let x = x as f64;
                if !x.is_finite() {
                    return Err(ModelError::InvalidArgument {
                        argument: "router inputs".into(),
                        message: format!("layer {l}'s pooled query state is not finite ({x})"),
                    });
                }
                sum[l][j] += x;
                sum_sq[l][j] += x * x;
            }
        }
    }
    let n = samples.len() as f64;
    let mean: Vec<Vec<f64>> = sum
        .iter()
        .map(|s| s.iter().map(|x| x / n).collect())
        .collect();
    let std = sum_sq
        .iter()
        .zip(&mean)
        .map(|(sq, m)| {
            sq.iter()
                .zip(m)
                .map(|(q, m)| (q / n - m * m).max(0.0).sqrt())
                .collect()
        })
        .collect();
    Ok(RouterInputStatistics {
        samples: samples.len(),
        mean,
        std,
    })
}

/// `routers` with `stats` folded into each first layer
/// ([`flux_router::LayerRouter::standardize_inputs`]). A feature whose spread is below 1 % of
/// the layer's typical spread is scaled as if it had that spread, so that near-constant
/// features are not blown up; a layer whose inputs do not vary at all is an error.
pub fn standardize_routers<B: Backend>(
    routers: RouterSet<B>,
    stats: &RouterInputStatistics,
) -> Result<RouterSet<B>> {
    if stats.mean.len() != routers.routers.len() {
        return Err(ModelError::InvalidArgument {
            argument: "standardize_samples".into(),
            message: format!(
                "statistics of {} layers for {} routers",
                stats.mean.len(),
                routers.routers.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(routers.routers.len());
    for (l, router) in routers.routers.into_iter().enumerate() {
        let (mean, std) = (&stats.mean[l], &stats.std[l]);
        let rms = (std.iter().map(|s| s * s).sum::<f64>() / std.len().max(1) as f64).sqrt();
        if !(rms > 0.0 && rms.is_finite()) {
            return Err(ModelError::InvalidArgument {
                argument: "standardize_samples".into(),
                message: format!(
                    "layer {l}'s router inputs do not vary over {} prompts",
                    stats.samples
                ),
            });
        }
        let floor = 0.01 * rms;
        let device = router.devices()[0].clone();
        let tensor = |v: Vec<f32>| {
            let d = v.len();
            Tensor::<B, 1>::from_data(TensorData::new(v, [d]).convert::<B::FloatElem>(), &device)
        };
        let mean = tensor(mean.iter().map(|&m| m as f32).collect());
        let std = tensor(std.iter().map(|&s| s.max(floor) as f32).collect());
        out.push(router.standardize_inputs(mean, std).map_err(|e| {
            ModelError::InvalidArgument {
                argument: "standardize_samples".into(),
                message: format!("layer {l}: {e}"),
            }
        })?);
    }
    Ok(RouterSet { routers: out })
}
